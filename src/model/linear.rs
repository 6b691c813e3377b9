//! `Linear`: one projection, y = x·Wᵀ (+ b), dense or quantized.
//!
//! Every projection of the model (q, k, v, o, gate, up, down and the
//! lm_head) is a `Linear`; its product is computed in `ops::matmul`. This is
//! the one place a LoRA delta is added to the output (`forward_with`, a
//! wrapper over `forward`; the delta itself is `model::lora`).

use super::lora::LoraPair;
use super::weights::{Weight, WeightSource};
use crate::ops::matmul::Precision;
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

    /// A quantized weight shared with another user (a tied lm_head and the
    /// embedding table it is).
    pub fn shared_quantized(q: std::sync::Arc<candle_core::quantized::QTensor>) -> Result<Self> {
        Ok(Self {
            weight: LinearWeight::Quantized(QMatMul::from_arc(q)?),
            bias: None,
        })
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

    /// Like [`Self::forward`] for one f32 row, with the largest outputs of a
    /// quantized weight recomputed exactly (`ops::matmul::refine_top`): the
    /// lm_head's logits. (1, in) → (1, out) f32.
    pub fn forward_refined(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.forward(x)?;
        let LinearWeight::Quantized(QMatMul::QTensor(w)) = &self.weight else {
            return Ok(y);
        };
        if self.bias.is_some() || x.dim(0)? != 1 || !x.device().is_cpu() {
            return Ok(y);
        }
        let xs: Vec<f32> = x
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let mut ys: Vec<f32> = y
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        crate::ops::matmul::refine_top(w, &xs, &mut ys)?;
        Tensor::from_vec(ys, y.dims(), y.device())
    }

    /// The weight as held: "f32", "bf16", "f16", "q8_0", "q4_k"…
    pub fn format(&self) -> String {
        match &self.weight {
            LinearWeight::Dense(l) => format!("{:?}", l.weight().dtype()).to_lowercase(),
            LinearWeight::Quantized(QMatMul::QTensor(q)) => {
                crate::formats::gguf::type_name(q.dtype()).to_lowercase()
            }
            LinearWeight::Quantized(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                format!("{:?}", t.dtype()).to_lowercase()
            }
        }
    }

    /// Where the weight lies in memory (address, bytes); None off the CPU.
    pub fn weight_span(&self) -> Option<(usize, usize)> {
        match &self.weight {
            LinearWeight::Quantized(QMatMul::QTensor(q)) if q.device().is_cpu() => {
                let d = q.data().ok()?;
                Some((d.as_ptr() as usize, d.len()))
            }
            LinearWeight::Dense(l) => {
                crate::ops::matmul::dense_rows(l.weight(), |rows| Some(rows.span()))
            }
            _ => None,
        }
    }

    /// Several projections of the same input (q/k/v; gate/up), each with its
    /// LoRA delta when given: x (…, in) → (…, out_i) in x's dtype. Where our
    /// CPU kernels take these rows the input is prepared once and all rows
    /// run in one pool job (`ops::matmul::matmul_many`); otherwise one by one.
    pub fn forward_many(
        ls: &[(&Linear, Option<&LoraPair>)],
        x: &Tensor,
        p: Precision,
    ) -> Result<Vec<Tensor>> {
        use crate::ops::matmul::WeightRef;
        let refs: Option<Vec<WeightRef>> = ls
            .iter()
            .map(|(l, _)| match (&l.weight, &l.bias) {
                (LinearWeight::Dense(d), None) => Some(WeightRef::Dense(d.weight())),
                (LinearWeight::Quantized(QMatMul::QTensor(q)), None) => {
                    Some(WeightRef::Quantized(q))
                }
                _ => None,
            })
            .collect();
        let base = match refs {
            Some(refs) => crate::ops::matmul::matmul_many(&refs, x, p)?,
            None => None,
        };
        let Some(base) = base else {
            return ls
                .iter()
                .map(|(l, lora)| l.forward_with(x, *lora, p))
                .collect();
        };
        base.into_iter()
            .zip(ls)
            .map(|(y, (_, lora))| {
                let y = y.to_dtype(x.dtype())?;
                match lora {
                    Some(l) => y + l.delta(x)?,
                    None => Ok(y),
                }
            })
            .collect()
    }

    /// x (…, in) → (…, out), in x's dtype, prompt rows computed exactly.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_as(x, Precision::Exact)
    }

    /// `forward`, with prompt rows on a quantized weight computed as `p` says.
    pub fn forward_as(&self, x: &Tensor, p: Precision) -> Result<Tensor> {
        let y = match &self.weight {
            LinearWeight::Dense(l) => crate::ops::matmul::dense_forward(l, x, p)?,
            LinearWeight::Quantized(q) => {
                // Quantized matmuls take f32 activations on CPU.
                crate::ops::matmul::qmatmul_forward(q, x, p)?.to_dtype(x.dtype())?
            }
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// `forward_as` plus an unmerged LoRA delta, when the sequence uses one.
    pub fn forward_with(
        &self,
        x: &Tensor,
        lora: Option<&LoraPair>,
        p: Precision,
    ) -> Result<Tensor> {
        let y = self.forward_as(x, p)?;
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
                // A bf16/f16 weight held as stored on the CPU is computed in
                // f32: the merged weight stays f32 rather than rounding the
                // adapter's delta to 8 bits of mantissa.
                let half = matches!(w.dtype(), candle_core::DType::BF16 | candle_core::DType::F16);
                let dtype = if w.device().is_cpu() && half {
                    candle_core::DType::F32
                } else {
                    w.dtype()
                };
                let merged = (w.to_dtype(dtype)? + delta.to_dtype(dtype)?)?;
                self.weight = LinearWeight::Dense(candle_nn::Linear::new(merged, None));
                Ok(())
            }
            LinearWeight::Quantized(_) => anyhow::bail!(
                "--merge needs float weights; this base is quantized (leave out --merge: the adapter is applied unmerged)"
            ),
        }
    }
}
