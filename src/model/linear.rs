//! `Linear`: one projection, y = x·Wᵀ (+ b), dense or quantized.
//!
//! Every projection of the model (q, k, v, o, gate, up, down and the
//! lm_head) is a `Linear`; its product is computed in `ops::matmul`. This is
//! the one place a LoRA delta is added to the output (`forward_with`, a
//! wrapper over `forward`; the delta itself is `model::lora`).

use super::lora::LoraPair;
use super::weights::{Weight, WeightSource};
use candle_core::quantized::QMatMul;
use candle_core::{Result, Tensor};

enum LinearWeight {
    Dense(candle_nn::Linear),
    Quantized(QMatMul),
}

pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Weight, bias: Option<Tensor>) -> Result<Self> {
        let weight = match weight {
            Weight::Dense(w) => LinearWeight::Dense(candle_nn::Linear::new(w, None)),
            Weight::Quantized(q) => LinearWeight::Quantized(QMatMul::from_qtensor(q)?),
        };
        Ok(Self { weight, bias })
    }

    /// Loads `{name}.weight` (out, inp) and, with `bias`, `{name}.bias`.
    pub fn load(
        src: &dyn WeightSource,
        name: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> anyhow::Result<Self> {
        let w = src.weight(&format!("{name}.weight"), &[out, inp])?;
        let b = if bias {
            Some(src.tensor(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Self::new(w, b)?)
    }

    /// x (…, in) → (…, out), in x's dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Dense(l) => crate::ops::matmul::dense_forward(l, x)?,
            LinearWeight::Quantized(q) => {
                // Quantized matmuls take f32 activations on CPU.
                crate::ops::matmul::qmatmul_forward(q, x)?.to_dtype(x.dtype())?
            }
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// `forward` plus an unmerged LoRA delta, when the sequence uses one.
    pub fn forward_with(&self, x: &Tensor, lora: Option<&LoraPair>) -> Result<Tensor> {
        let y = self.forward(x)?;
        match lora {
            Some(l) => y + l.delta(x)?,
            None => Ok(y),
        }
    }

    /// Folds `delta` (out, in) into a float weight (`--merge`). A quantized
    /// weight is refused: re-quantizing would lose the adapter's precision.
    pub fn merge(&mut self, delta: &Tensor) -> anyhow::Result<()> {
        match &self.weight {
            LinearWeight::Dense(l) => {
                let w = l.weight();
                let merged = (w + delta.to_dtype(w.dtype())?)?;
                self.weight = LinearWeight::Dense(candle_nn::Linear::new(merged, None));
                Ok(())
            }
            LinearWeight::Quantized(_) => anyhow::bail!(
                "--merge needs float weights; this base is quantized (leave out --merge: the adapter is applied unmerged)"
            ),
        }
    }
}
