//! Rotary position embeddings, including the `rope_scaling` variants, exactly
//! as transformers' `modeling_rope_utils` computes them.
//!
//! Tables are kept in f32 whatever the compute dtype (positions in bf16 lose
//! integer precision past 256) and cast to the activations' dtype per call.

use super::config::{RopeConfig, RopeScaling};
use candle_core::{DType, Device, Result, Tensor};
use std::sync::RwLock;

pub struct Rope {
    cfg: RopeConfig,
    head_dim: usize,
    max_position_embeddings: usize,
    /// Multiplies cos and sin (YaRN's attention factor; 1 otherwise).
    attention_factor: f64,
    inv_freq: Vec<f64>,
    /// cos/sin tables of shape (len, head_dim/2), f32, grown on demand.
    /// Behind a lock because the model is shared (`&self`) by every
    /// sequence; it is written only when a longer sequence first arrives.
    table: RwLock<(Tensor, Tensor)>,
    device: Device,
}

/// cos/sin for the positions of one forward pass, in the compute dtype.
pub struct RopeTables {
    cos: Tensor,
    sin: Tensor,
    interleaved: bool,
}

impl Rope {
    pub fn new(
        cfg: &RopeConfig,
        head_dim: usize,
        max_position_embeddings: usize,
        device: &Device,
    ) -> Result<Self> {
        let (inv_freq, attention_factor) = inv_freq(
            cfg,
            head_dim,
            max_position_embeddings,
            max_position_embeddings,
        );
        let empty = Tensor::zeros((0, head_dim / 2), DType::F32, device)?;
        Ok(Self {
            cfg: cfg.clone(),
            head_dim,
            max_position_embeddings,
            attention_factor,
            inv_freq,
            table: RwLock::new((empty.clone(), empty)),
            device: device.clone(),
        })
    }

    /// cos/sin rows for positions `start..end`, computed in f32.
    fn rows(
        &self,
        inv_freq: &[f64],
        factor: f64,
        start: usize,
        end: usize,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity((end - start) * half);
        let mut sin = Vec::with_capacity((end - start) * half);
        for pos in start..end {
            for &f in inv_freq {
                // transformers multiplies position by frequency in f32.
                let angle = (pos as f32 * f as f32) as f64;
                cos.push((angle.cos() * factor) as f32);
                sin.push((angle.sin() * factor) as f32);
            }
        }
        Ok((
            Tensor::from_vec(cos, (end - start, half), &self.device)?,
            Tensor::from_vec(sin, (end - start, half), &self.device)?,
        ))
    }

    /// Positions the shared table covers so far.
    fn cached_len(&self) -> usize {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table.0.dims().first().copied().unwrap_or(0)
    }

    /// The tables for positions `offset..offset+len`, computed once per
    /// forward pass and shared by every layer.
    pub fn tables(&self, offset: usize, len: usize, dtype: DType) -> Result<RopeTables> {
        let end = offset + len;
        let (cos, sin) = match self.cfg.scaling {
            // Dynamic NTK: frequencies depend on the current sequence length
            // (transformers: seq_len = max(position_ids) + 1). Positions already
            // in the KV cache keep the rotation they were given, as there.
            RopeScaling::Dynamic { .. } if end > self.max_position_embeddings => {
                let (f, a) = inv_freq(&self.cfg, self.head_dim, self.max_position_embeddings, end);
                self.rows(&f, a, offset, end)?
            }
            _ => {
                let have = self.cached_len();
                if end > have {
                    // Grow geometrically; never allocate max_position_embeddings up front.
                    let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
                    let have = table.0.dim(0)?;
                    if end > have {
                        let new_len = end.max(have * 2).max(64);
                        let (c, s) =
                            self.rows(&self.inv_freq, self.attention_factor, have, new_len)?;
                        *table = (
                            Tensor::cat(&[&table.0, &c], 0)?,
                            Tensor::cat(&[&table.1, &s], 0)?,
                        );
                    }
                }
                let table = self.table.read().unwrap_or_else(|e| e.into_inner());
                (
                    table.0.narrow(0, offset, len)?,
                    table.1.narrow(0, offset, len)?,
                )
            }
        };
        Ok(RopeTables {
            cos: cos.to_dtype(dtype)?.contiguous()?,
            sin: sin.to_dtype(dtype)?.contiguous()?,
            interleaved: self.cfg.interleaved,
        })
    }
}

impl RopeTables {
    /// Rotates q (B, H, L, D) and k (B, Hkv, L, D).
    pub fn apply(&self, q: &Tensor, k: &Tensor) -> Result<(Tensor, Tensor)> {
        let rope = if self.interleaved {
            candle_nn::rotary_emb::rope_i
        } else {
            candle_nn::rotary_emb::rope
        };
        Ok((
            rope(&q.contiguous()?, &self.cos, &self.sin)?,
            rope(&k.contiguous()?, &self.cos, &self.sin)?,
        ))
    }
}

/// Inverse frequencies and attention factor for a sequence of `seq_len`.
fn inv_freq(
    cfg: &RopeConfig,
    dim: usize,
    max_position_embeddings: usize,
    seq_len: usize,
) -> (Vec<f64>, f64) {
    // transformers computes base ** (arange(0, dim, 2) / dim) in float32.
    let default_freqs = |base: f64| -> Vec<f64> {
        (0..dim)
            .step_by(2)
            .map(|i| {
                let p = (base as f32).powf(i as f32 / dim as f32);
                (1.0f32 / p) as f64
            })
            .collect()
    };
    match &cfg.scaling {
        RopeScaling::None => (default_freqs(cfg.theta), 1.0),
        RopeScaling::Linear { factor } => (
            default_freqs(cfg.theta)
                .into_iter()
                .map(|f| ((f as f32) / (*factor as f32)) as f64)
                .collect(),
            1.0,
        ),
        RopeScaling::Dynamic { factor } => {
            let seq_len = seq_len.max(max_position_embeddings) as f64;
            let max = max_position_embeddings as f64;
            let d = dim as f64;
            let base = cfg.theta * ((factor * seq_len / max) - (factor - 1.0)).powf(d / (d - 2.0));
            (default_freqs(base), 1.0)
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
            mscale,
            mscale_all_dim,
            truncate,
        } => {
            let base = cfg.theta;
            let get_mscale = |scale: f64, m: f64| {
                if scale <= 1.0 {
                    1.0
                } else {
                    0.1 * m * scale.ln() + 1.0
                }
            };
            let attention_factor = match (attention_factor, mscale, mscale_all_dim) {
                (Some(a), _, _) => *a,
                (None, Some(m), Some(ma)) if *m != 0.0 && *ma != 0.0 => {
                    get_mscale(*factor, *m) / get_mscale(*factor, *ma)
                }
                _ => get_mscale(*factor, 1.0),
            };
            let d = dim as f64;
            let orig = *original_max_position_embeddings as f64;
            let correction_dim = |rot: f64| {
                (d * (orig / (rot * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln())
            };
            let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
            if *truncate {
                low = low.floor();
                high = high.ceil();
            }
            let low = low.max(0.0);
            let high = high.min(d - 1.0);
            let high = if low == high { high + 0.001 } else { high };
            let freqs = (0..dim)
                .step_by(2)
                .enumerate()
                .map(|(j, i)| {
                    let pos_freq = (base as f32).powf(i as f32 / dim as f32);
                    let extrapolation = 1.0f32 / pos_freq;
                    let interpolation = 1.0f32 / (*factor as f32 * pos_freq);
                    let ramp =
                        (((j as f32) - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0);
                    let extrapolation_factor = 1.0 - ramp;
                    (interpolation * (1.0 - extrapolation_factor)
                        + extrapolation * extrapolation_factor) as f64
                })
                .collect();
            (freqs, attention_factor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(scaling: RopeScaling) -> RopeConfig {
        RopeConfig {
            theta: 10_000.0,
            scaling,
            interleaved: false,
        }
    }

    #[test]
    fn default_frequencies() {
        let (f, a) = inv_freq(&cfg(RopeScaling::None), 8, 64, 64);
        assert_eq!(a, 1.0);
        let expected = [1.0, 0.1, 0.01, 0.001];
        for (x, e) in f.iter().zip(expected) {
            assert!((x - e).abs() < 1e-7 * e.max(1e-3), "{x} vs {e}");
        }
    }

    #[test]
    fn yarn_attention_factor() {
        let s = RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: 32,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: None,
            mscale: None,
            mscale_all_dim: None,
            truncate: true,
        };
        let (_, a) = inv_freq(&cfg(s), 16, 128, 128);
        assert!((a - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
    }

    #[test]
    fn tables_grow_on_demand() -> Result<()> {
        let dev = Device::Cpu;
        let rope = Rope::new(&cfg(RopeScaling::None), 8, 1 << 20, &dev)?;
        let t = rope.tables(100, 3, DType::F32)?;
        assert_eq!(t.cos.dims(), &[3, 4]);
        assert!(rope.cached_len() >= 103 && rope.cached_len() < 1000);
        Ok(())
    }
}
