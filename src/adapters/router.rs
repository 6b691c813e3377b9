//! The router behind `--expert auto`: which expert should answer a prompt?
//!
//! Everything is the base model's own representation, no extra model:
//!
//! 1. A text's embedding is the mean over its tokens of the base model's
//!    final (normed) hidden states, with no adapter (at most `MAX_TOKENS`).
//! 2. The examples of every expert are embedded; their mean over all experts
//!    (the "background") is subtracted from every embedding, which is then
//!    normalised. Each expert's centroid is the normalised mean of its own.
//! 3. A prompt's score for an expert is the cosine similarity of its centred
//!    embedding with the expert's centroid. The best expert is used when its
//!    score reaches the manifest's threshold; below it, the base answers.
//!
//! Example embeddings are cached beside the manifest
//! (`<manifest>.route-cache.json`). The cache is used only when its examples
//! are exactly the manifest's and the base model gives the same embedding of
//! a fixed probe text (so a different base, dtype or quantization recomputes).

use super::manifest::Manifest;
use crate::formats::json::{read_value, write_atomic};
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use candle_core::{DType, D};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Tokens of a text that the embedding looks at.
pub const MAX_TOKENS: usize = 256;
const PROBE: &str = "The quick brown fox jumps over the lazy dog. 1, 2, 3: def f(x): return x";
const CACHE_VERSION: u32 = 1;

/// Mean-pooled final hidden state of `text` under the base model (no adapter).
pub fn embed(model: &Model, tokenizer: &Tokenizer, text: &str) -> Result<Vec<f32>> {
    let mut ids = tokenizer.encode(text)?;
    if ids.is_empty() {
        bail!("cannot route an empty prompt");
    }
    ids.truncate(MAX_TOKENS);
    let hidden = model.forward_hidden(&ids, &mut model.new_cache())?;
    Ok(hidden
        .to_dtype(DType::F32)?
        .mean(D::Minus2)?
        .to_device(&candle_core::Device::Cpu)?
        .to_vec1::<f32>()?)
}

fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

#[derive(Serialize, Deserialize)]
struct Cache {
    version: u32,
    probe: Vec<f32>,
    /// Expert name → its example texts and their embeddings.
    experts: BTreeMap<String, CachedExpert>,
}

#[derive(Serialize, Deserialize)]
struct CachedExpert {
    examples: Vec<String>,
    embeddings: Vec<Vec<f32>>,
}

/// One expert's score for a prompt.
#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub expert: String,
    pub score: f64,
}

/// The router's verdict for one prompt: every expert ranked, best first,
/// and the one chosen (None when the best is below the threshold).
#[derive(Debug, Clone, Serialize)]
pub struct Ranking {
    pub chosen: Option<String>,
    pub threshold: f64,
    pub ranking: Vec<Score>,
}

impl Ranking {
    /// "routed to python (score 0.612; next french 0.104)" for stderr.
    pub fn summary(&self) -> String {
        let best = &self.ranking[0];
        let next = self
            .ranking
            .get(1)
            .map(|s| format!("; next {} {:.3}", s.expert, s.score))
            .unwrap_or_default();
        match &self.chosen {
            Some(name) => format!("router: {name} (score {:.3}{next})", best.score),
            None => format!(
                "router: no expert (best {} {:.3} < threshold {:.3}); the base model answers",
                best.expert, best.score, self.threshold
            ),
        }
    }
}

pub struct Router {
    names: Vec<String>,
    centroids: Vec<Vec<f32>>,
    background: Vec<f32>,
    pub threshold: f64,
    /// How the example embeddings were obtained, for a note on stderr.
    pub cache_note: String,
}

/// `<manifest>.route-cache.json`, beside the manifest.
pub fn cache_path(manifest: &Path) -> PathBuf {
    let name = manifest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "experts".into());
    manifest.with_file_name(format!(".{name}.route-cache.json"))
}

impl Router {
    /// Embeds the manifest's examples (or reads them from the cache) and
    /// builds the centroids.
    pub fn new(manifest: &Manifest, model: &Model, tokenizer: &Tokenizer) -> Result<Self> {
        let path = cache_path(&manifest.path);
        let probe = embed(model, tokenizer, PROBE)?;
        let cached = read_cache(&path, &probe, manifest);
        let (cache, note) = match cached {
            Some(c) => (c, format!("example embeddings from {}", path.display())),
            None => {
                let mut experts = BTreeMap::new();
                for e in &manifest.experts {
                    let embeddings = e
                        .examples
                        .iter()
                        .filter(|x| !x.trim().is_empty())
                        .map(|x| embed(model, tokenizer, x))
                        .collect::<Result<Vec<_>>>()?;
                    let examples = e.examples.clone();
                    experts.insert(
                        e.name.clone(),
                        CachedExpert {
                            examples,
                            embeddings,
                        },
                    );
                }
                let cache = Cache {
                    version: CACHE_VERSION,
                    probe,
                    experts,
                };
                let note = match write_atomic(&path, &cache) {
                    Ok(()) => format!("example embeddings computed, cached in {}", path.display()),
                    Err(e) => format!("example embeddings computed (not cached: {e:#})"),
                };
                (cache, note)
            }
        };
        let all: Vec<&Vec<f32>> = cache
            .experts
            .values()
            .flat_map(|e| e.embeddings.iter())
            .collect();
        let dim = all[0].len();
        let mut background = vec![0f32; dim];
        for v in &all {
            background
                .iter_mut()
                .zip(v.iter())
                .for_each(|(b, x)| *b += x);
        }
        background.iter_mut().for_each(|b| *b /= all.len() as f32);
        let mut names = Vec::new();
        let mut centroids = Vec::new();
        for e in &manifest.experts {
            let mut c = vec![0f32; dim];
            for v in &cache.experts[&e.name].embeddings {
                let mut u: Vec<f32> = v.iter().zip(&background).map(|(x, b)| x - b).collect();
                normalize(&mut u);
                c.iter_mut().zip(&u).for_each(|(c, x)| *c += x);
            }
            normalize(&mut c);
            names.push(e.name.clone());
            centroids.push(c);
        }
        Ok(Self {
            names,
            centroids,
            background,
            threshold: manifest.threshold,
            cache_note: note,
        })
    }

    /// Ranks the experts for an already embedded prompt.
    pub fn rank_embedding(&self, embedding: &[f32]) -> Ranking {
        let mut u: Vec<f32> = embedding
            .iter()
            .zip(&self.background)
            .map(|(x, b)| x - b)
            .collect();
        normalize(&mut u);
        let mut ranking: Vec<Score> = self
            .names
            .iter()
            .zip(&self.centroids)
            .map(|(n, c)| Score {
                expert: n.clone(),
                score: dot(&u, c),
            })
            .collect();
        ranking.sort_by(|a, b| b.score.total_cmp(&a.score));
        let chosen = (ranking[0].score >= self.threshold).then(|| ranking[0].expert.clone());
        Ranking {
            chosen,
            threshold: self.threshold,
            ranking,
        }
    }

    pub fn rank(&self, model: &Model, tokenizer: &Tokenizer, prompt: &str) -> Result<Ranking> {
        Ok(self.rank_embedding(&embed(model, tokenizer, prompt)?))
    }
}

/// The cache, if it is for these examples and this base model.
fn read_cache(path: &Path, probe: &[f32], manifest: &Manifest) -> Option<Cache> {
    let cache: Cache = serde_json::from_value(read_value(path).ok()?).ok()?;
    if cache.version != CACHE_VERSION || cache.probe.len() != probe.len() {
        return None;
    }
    // The same base gives the same probe embedding up to thread-order rounding.
    let scale = probe.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
    if cache
        .probe
        .iter()
        .zip(probe)
        .any(|(a, b)| (a - b).abs() > 1e-4 * scale)
    {
        return None;
    }
    if cache.experts.len() != manifest.experts.len() {
        return None;
    }
    for e in &manifest.experts {
        let c = cache.experts.get(&e.name)?;
        let n = e.examples.iter().filter(|x| !x.trim().is_empty()).count();
        if c.examples != e.examples || c.embeddings.len() != n {
            return None;
        }
        if c.embeddings.iter().any(|v| v.len() != probe.len()) {
            return None;
        }
    }
    Some(cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_ranking_and_threshold() {
        let r = Router {
            names: vec!["a".into(), "b".into()],
            centroids: vec![vec![1.0, 0.0], vec![0.0, 1.0]],
            background: vec![1.0, 1.0],
            threshold: 0.5,
            cache_note: String::new(),
        };
        let k = r.rank_embedding(&[1.0, 3.0]); // centred (0, 2) → b
        assert_eq!(k.chosen.as_deref(), Some("b"));
        assert!((k.ranking[0].score - 1.0).abs() < 1e-9);
        let k = r.rank_embedding(&[2.0, 2.0]); // centred (1, 1): 0.707 each
        assert!(k.chosen.is_some());
        let k = r.rank_embedding(&[0.0, 0.5]); // centred (-1, -0.5): both negative
        assert_eq!(k.chosen, None);
        assert!(k.summary().contains("no expert"));
        assert_eq!(
            cache_path(Path::new("/d/experts.toml")),
            Path::new("/d/.experts.toml.route-cache.json")
        );
    }
}
