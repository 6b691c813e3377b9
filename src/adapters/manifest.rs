//! `experts.toml`: the experts a router chooses from.
//!
//! ```toml
//! threshold = 0.25              # optional: below this score no expert is used
//!
//! [[expert]]
//! name = "python"
//! adapter = "adapters/python"   # a PEFT adapter directory, relative to this file
//! description = "Python code"
//! scale = 1.0                   # optional, like --adapter-scale
//! examples = ["def parse(line):", "import os"]
//! ```

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The router's default threshold (a cosine similarity, see `router`).
pub const DEFAULT_THRESHOLD: f64 = 0.2;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    threshold: Option<f64>,
    #[serde(default)]
    expert: Vec<RawExpert>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpert {
    name: String,
    adapter: PathBuf,
    #[serde(default)]
    description: String,
    scale: Option<f64>,
    #[serde(default)]
    examples: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ExpertEntry {
    pub name: String,
    /// Resolved against the manifest's directory.
    pub adapter: PathBuf,
    pub description: String,
    pub scale: f64,
    pub examples: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    pub threshold: f64,
    pub experts: Vec<ExpertEntry>,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let file = path.display();
        let raw: RawManifest = toml::from_str(text).map_err(|e| {
            let msg = e.message().replace('\n', " ");
            let line = e
                .span()
                .map(|s| format!(" (line {})", text[..s.start].matches('\n').count() + 1))
                .unwrap_or_default();
            anyhow!("{file}: invalid manifest{line}: {msg}")
        })?;
        let threshold = raw.threshold.unwrap_or(DEFAULT_THRESHOLD);
        if !(-1.0..=1.0).contains(&threshold) {
            bail!("{file}: threshold: expected a cosine similarity in [-1, 1], got {threshold}");
        }
        if raw.expert.is_empty() {
            bail!("{file}: no [[expert]] entries");
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut experts = Vec::new();
        for e in raw.expert {
            check_name(&e.name).map_err(|m| anyhow!("{file}: expert name {:?}: {m}", e.name))?;
            if experts.iter().any(|x: &ExpertEntry| x.name == e.name) {
                bail!("{file}: expert {:?} is listed twice", e.name);
            }
            if e.examples.iter().all(|x| x.trim().is_empty()) {
                bail!(
                    "{file}: expert {:?}: examples: expected at least one example prompt",
                    e.name
                );
            }
            let scale = e.scale.unwrap_or(1.0);
            if !scale.is_finite() {
                bail!(
                    "{file}: expert {:?}: scale: expected a finite number",
                    e.name
                );
            }
            experts.push(ExpertEntry {
                adapter: dir.join(&e.adapter),
                name: e.name,
                description: e.description,
                scale,
                examples: e.examples,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            threshold,
            experts,
        })
    }
}

/// Expert names are used on the command line and in the REPL: no spaces, no
/// `=`, and not one of the words `--expert` reserves.
pub fn check_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("expected a non-empty name");
    }
    if name.chars().any(|c| c.is_whitespace() || c == '=') {
        return Err("expected no spaces and no '='");
    }
    if matches!(name, "auto" | "none" | "off" | "base") {
        return Err("auto, none, off and base are reserved");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves_paths() {
        let m = Manifest::parse(
            "threshold = 0.3\n[[expert]]\nname = \"py\"\nadapter = \"a/py\"\nexamples = [\"def f():\"]\n",
            Path::new("/x/experts.toml"),
        )
        .unwrap();
        assert_eq!(m.threshold, 0.3);
        assert_eq!(m.experts[0].adapter, Path::new("/x/a/py"));
        assert_eq!(m.experts[0].scale, 1.0);
    }

    #[test]
    fn errors_name_the_file_and_what_is_wrong() {
        let p = Path::new("m.toml");
        let e = Manifest::parse(
            "[[expert]]\nname = \"a\"\nadapter = \"x\"\nexampels = []\n",
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("m.toml: invalid manifest (line 4)"), "{e}");
        let e = Manifest::parse("[[expert]]\nname = \"a\"\nadapter = \"x\"\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("examples: expected at least one"), "{e}");
        let e = Manifest::parse(
            "[[expert]]\nname = \"auto\"\nadapter = \"x\"\nexamples = [\"a\"]\n",
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("reserved"), "{e}");
    }
}
