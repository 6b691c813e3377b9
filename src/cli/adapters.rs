//! The adapter flags shared by `chat`, `perplexity` and `bench`, and what
//! they resolve to: the resident experts and which one answers.

use crate::adapters::manifest::{check_name, Manifest};
use crate::adapters::peft::{self, AdapterInfo};
use crate::adapters::router::{Ranking, Router};
use crate::generate::Engine;
use crate::load::LoadedModel;
use crate::model::Lora;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug, Clone, Default)]
pub struct AdapterArgs {
    /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors)
    /// as NAME=PATH, or PATH (named after its directory). Repeatable: all stay resident.
    #[arg(long = "adapter", value_name = "NAME=PATH")]
    pub adapter: Vec<String>,
    /// Multiply an adapter's scale (lora_alpha / r): NAME=S. Repeatable.
    #[arg(
        long = "adapter-scale",
        value_name = "NAME=S",
        allow_hyphen_values = true
    )]
    pub adapter_scale: Vec<String>,
    /// Which expert answers: an adapter's NAME, auto (the router; needs --manifest)
    /// or none. Default: auto with --manifest, else the only --adapter, else none.
    #[arg(long, value_name = "NAME|auto|none")]
    pub expert: Option<String>,
    /// experts.toml: expert names, adapter paths, descriptions and example
    /// prompts; its adapters are loaded and --expert auto routes among them.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Fold the chosen adapter into the (float) weights: base speed, no switching.
    #[arg(long)]
    pub merge: bool,
}

/// One resident expert.
pub struct Expert {
    pub lora: Arc<Lora>,
    pub info: AdapterInfo,
    pub description: String,
}

/// Which expert answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Base,
    Named(String),
    Auto,
}

/// The experts resident over one loaded base, and the current choice.
pub struct Experts {
    pub list: Vec<Expert>,
    pub choice: Choice,
    pub router: Option<Router>,
    /// Where the router's examples come from (--manifest).
    pub manifest: Option<Manifest>,
    /// The expert folded into the weights by --merge.
    pub merged: Option<String>,
}

fn split_pair<'a>(flag: &str, v: &'a str) -> Result<(&'a str, &'a str)> {
    v.split_once('=')
        .ok_or_else(|| anyhow!("{flag}: expected NAME=VALUE, got {v:?}"))
}

impl AdapterArgs {
    fn named(&self) -> Result<Vec<(String, PathBuf)>> {
        let mut out: Vec<(String, PathBuf)> = Vec::new();
        for a in &self.adapter {
            let (name, path) = match a.split_once('=') {
                Some((n, p)) => (n.to_string(), PathBuf::from(p)),
                None => {
                    let p = PathBuf::from(a);
                    let n = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    (n, p)
                }
            };
            check_name(&name).map_err(|m| anyhow!("--adapter {a}: name {name:?}: {m}"))?;
            if out.iter().any(|(n, _)| *n == name) {
                bail!("--adapter: the name {name} is given twice");
            }
            out.push((name, path));
        }
        Ok(out)
    }

    fn scales(&self) -> Result<Vec<(String, f64)>> {
        self.adapter_scale
            .iter()
            .map(|s| {
                let (n, v) = split_pair("--adapter-scale", s)?;
                let v: f64 = v
                    .parse()
                    .ok()
                    .filter(|v: &f64| v.is_finite())
                    .ok_or_else(|| anyhow!("--adapter-scale {s}: expected a number after '='"))?;
                Ok((n.to_string(), v))
            })
            .collect()
    }

    /// Checks the flags on their own, before anything is loaded.
    pub fn precheck(&self) -> Result<()> {
        let named = self.named()?;
        self.scales()?;
        if self.merge {
            if self.expert.as_deref() == Some("auto") {
                bail!("--merge folds one adapter into the weights; it cannot be combined with --expert auto");
            }
            if named.is_empty() && self.manifest.is_none() {
                bail!("--merge needs an --adapter to fold in");
            }
        }
        if self.expert.as_deref() == Some("auto") && self.manifest.is_none() {
            bail!("--expert auto needs --manifest (the experts' example prompts)");
        }
        Ok(())
    }

    /// Loads every adapter (from --adapter and --manifest), checks each
    /// against the base, and resolves --expert / --merge. With --merge the
    /// chosen adapter is folded into `loaded.model`.
    pub fn load(&self, loaded: &mut LoadedModel) -> Result<Experts> {
        self.precheck()?;
        let manifest = match &self.manifest {
            Some(p) => Some(Manifest::read(p)?),
            None => None,
        };
        let mut sources: Vec<(String, PathBuf, f64, String)> = self
            .named()?
            .into_iter()
            .map(|(n, p)| (n, p, 1.0, String::new()))
            .collect();
        if let Some(m) = &manifest {
            for e in &m.experts {
                if sources.iter().any(|s| s.0 == e.name) {
                    bail!(
                        "{}: expert {} is also given with --adapter",
                        m.path.display(),
                        e.name
                    );
                }
                sources.push((
                    e.name.clone(),
                    e.adapter.clone(),
                    e.scale,
                    e.description.clone(),
                ));
            }
        }
        for (n, _) in self.scales()? {
            if !sources.iter().any(|s| s.0 == n) {
                bail!("--adapter-scale {n}=…: no adapter is named {n}");
            }
        }
        let model = &loaded.model;
        let mut list = Vec::new();
        for (name, path, scale, description) in sources {
            let factor = self
                .scales()?
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(scale, |(_, s)| *s);
            let a = peft::load(
                &name,
                &path,
                &model.config,
                model.dtype(),
                model.device(),
                factor,
            )
            .with_context(|| format!("adapter {name}"))?;
            list.push(Expert {
                lora: Arc::new(a.lora),
                info: a.info,
                description,
            });
        }
        let choice = match self.expert.as_deref() {
            Some("auto") => Choice::Auto,
            Some("none") | Some("off") => Choice::Base,
            Some(n) => {
                if !list.iter().any(|e| e.info.name == n) {
                    bail!(
                        "--expert {n}: no such expert (loaded: {})",
                        names(&list).unwrap_or_else(|| "none".into())
                    );
                }
                Choice::Named(n.to_string())
            }
            None if manifest.is_some() => Choice::Auto,
            None if list.len() == 1 => Choice::Named(list[0].info.name.clone()),
            None => Choice::Base,
        };
        let mut merged = None;
        if self.merge {
            let Choice::Named(name) = &choice else {
                bail!("--merge needs one adapter to fold in: name it with --expert NAME");
            };
            let e = list.iter().find(|e| e.info.name == *name).expect("checked");
            Arc::get_mut(&mut loaded.model)
                .context("--merge: the model is already shared")?
                .merge(&e.lora)?;
            merged = Some(name.clone());
        }
        let mut experts = Experts {
            list,
            choice,
            router: None,
            manifest,
            merged,
        };
        if experts.choice == Choice::Auto {
            experts.router(loaded)?;
        }
        Ok(experts)
    }
}

fn names(list: &[Expert]) -> Option<String> {
    (!list.is_empty()).then(|| {
        list.iter()
            .map(|e| e.info.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    })
}

impl Experts {
    pub fn find(&self, name: &str) -> Option<&Expert> {
        self.list.iter().find(|e| e.info.name == name)
    }

    pub fn names(&self) -> String {
        names(&self.list).unwrap_or_else(|| "none".into())
    }

    /// The adapter for a named choice (None for the base or a merged model).
    fn adapter(&self, name: Option<&str>) -> Option<Arc<Lora>> {
        if self.merged.is_some() {
            return None;
        }
        name.and_then(|n| self.find(n)).map(|e| e.lora.clone())
    }

    /// The router, built on first use from the manifest.
    pub fn router(&mut self, loaded: &LoadedModel) -> Result<&Router> {
        if self.router.is_none() {
            let m = self
                .manifest
                .as_ref()
                .context("automatic routing needs --manifest (the experts' example prompts)")?;
            let r = Router::new(m, &loaded.model, &loaded.tokenizer)?;
            eprintln!("router: {} experts; {}", m.experts.len(), r.cache_note);
            self.router = Some(r);
        }
        Ok(self.router.as_ref().expect("just built"))
    }

    /// Sets `engine`'s adapter for a turn whose user text is `prompt`: the
    /// named expert, the base, or (auto) the router's choice, which is
    /// returned with its ranking and named on stderr.
    pub fn select(
        &mut self,
        engine: &mut Engine,
        loaded: &LoadedModel,
        prompt: &str,
    ) -> Result<Option<Ranking>> {
        engine.set_merged(self.merged.clone());
        match &self.choice {
            Choice::Base => engine.set_adapter(None),
            Choice::Named(n) => engine.set_adapter(self.adapter(Some(n))),
            Choice::Auto => {
                let ranking =
                    self.router(loaded)?
                        .rank(&loaded.model, &loaded.tokenizer, prompt)?;
                eprintln!("{}", ranking.summary());
                engine.set_adapter(self.adapter(ranking.chosen.as_deref()));
                return Ok(Some(ranking));
            }
        }
        Ok(None)
    }

    /// The adapter a command without prompts (perplexity, bench) uses.
    pub fn fixed(&self) -> Result<Option<Arc<Lora>>> {
        match &self.choice {
            Choice::Base => Ok(None),
            Choice::Named(n) => Ok(self.adapter(Some(n))),
            Choice::Auto => bail!("--expert auto routes chat prompts; name an expert here"),
        }
    }
}
