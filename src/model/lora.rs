//! LoRA deltas, applied unmerged: a projection's output becomes
//! y = x·Wᵀ + scale · (x·Aᵀ)·Bᵀ, the base weight W untouched.
//!
//! A [`Lora`] holds one adapter's (A, B, scale) per layer and projection. It
//! is not part of the model: whoever runs a sequence passes the adapter it
//! uses (`Model::forward_hidden_with`), so conversations over one shared
//! model can use different adapters at the same time. Reading PEFT files and
//! checking them against a base is `crate::adapters`.

use super::weights::PROJECTIONS;
use candle_core::{Result, Tensor};

/// One projection's low-rank pair.
pub struct LoraPair {
    /// (r, in)
    a: Tensor,
    /// (out, r)
    b: Tensor,
    scale: f64,
}

impl LoraPair {
    /// `a` (r, in) and `b` (out, r) in the compute dtype; the caller has
    /// checked the shapes against the base projection.
    pub fn new(a: Tensor, b: Tensor, scale: f64) -> Self {
        Self { a, b, scale }
    }

    pub fn rank(&self) -> usize {
        self.a.dims().first().copied().unwrap_or(0)
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The same pair with its scale multiplied by `factor`.
    pub fn scaled(&self, factor: f64) -> Self {
        Self {
            a: self.a.clone(),
            b: self.b.clone(),
            scale: self.scale * factor,
        }
    }

    /// scale · (x·Aᵀ)·Bᵀ for x (…, in) → (…, out), in x's dtype (as PEFT:
    /// `lora_B(lora_A(x)) * scaling`).
    pub fn delta(&self, x: &Tensor) -> Result<Tensor> {
        let a = self.a.to_dtype(x.dtype())?;
        let b = self.b.to_dtype(x.dtype())?;
        let xa = x.broadcast_matmul(&a.t()?)?;
        xa.broadcast_matmul(&b.t()?)?.affine(self.scale, 0.0)
    }

    /// scale · B·A, (out, in): what `--merge` adds to the base weight.
    pub fn delta_weight(&self) -> Result<Tensor> {
        self.b.matmul(&self.a)?.affine(self.scale, 0.0)
    }

    pub fn parameter_count(&self) -> usize {
        self.a.elem_count() + self.b.elem_count()
    }
}

/// One layer's pairs, indexed like [`PROJECTIONS`] (q, k, v, o, gate, up, down).
pub type LayerLora = [Option<LoraPair>; PROJECTIONS.len()];

/// One adapter over a whole model.
pub struct Lora {
    pub name: String,
    layers: Vec<LayerLora>,
}

impl Lora {
    pub fn new(name: impl Into<String>, num_layers: usize) -> Self {
        Self {
            name: name.into(),
            layers: (0..num_layers).map(|_| Default::default()).collect(),
        }
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Sets layer `layer`'s pair for `PROJECTIONS[proj]`.
    pub fn set(&mut self, layer: usize, proj: usize, pair: LoraPair) {
        self.layers[layer][proj] = Some(pair);
    }

    pub fn layer(&self, i: usize) -> Option<&LayerLora> {
        self.layers.get(i)
    }

    /// Every pair with its layer and projection index.
    pub fn pairs(&self) -> impl Iterator<Item = (usize, usize, &LoraPair)> {
        self.layers.iter().enumerate().flat_map(|(l, layer)| {
            layer
                .iter()
                .enumerate()
                .filter_map(move |(p, pair)| pair.as_ref().map(|pair| (l, p, pair)))
        })
    }

    /// The same adapter with every scale multiplied by `factor`
    /// (`--adapter-scale`); the tensors are shared, not copied.
    pub fn scaled(&self, factor: f64) -> Self {
        let mut out = Self::new(self.name.clone(), self.layers.len());
        for (l, p, pair) in self.pairs() {
            out.set(l, p, pair.scaled(factor));
        }
        out
    }

    pub fn parameter_count(&self) -> usize {
        self.pairs().map(|(_, _, p)| p.parameter_count()).sum()
    }
}

/// Layer `layer`'s pair for projection `proj`, if the adapter has one.
pub fn pick(lora: Option<&LayerLora>, proj: usize) -> Option<&LoraPair> {
    lora.and_then(|l| l[proj].as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn delta_is_scale_times_x_a_t_b_t() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, 0., 2.], [0., 1., 0.]], &dev)?; // r 2, in 3
        let b = Tensor::new(&[[1f32, 1.], [0., 3.]], &dev)?; // out 2, r 2
        let pair = LoraPair::new(a, b, 0.5);
        let x = Tensor::new(&[[[1f32, 2., 3.]]], &dev)?; // (1, 1, 3)
                                                         // x·Aᵀ = [7, 2]; ·Bᵀ = [9, 6]; × 0.5
        let d = pair.delta(&x)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(d, vec![4.5, 3.0]);
        let w = pair
            .delta_weight()?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        assert_eq!(w, vec![vec![0.5, 0.5, 1.0], vec![0.0, 1.5, 0.0]]);
        assert_eq!(pair.parameter_count(), 10);
        assert_eq!(pair.scaled(2.0).scale(), 1.0);
        Ok(())
    }
}
