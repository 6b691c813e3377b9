//! The key/value cache of one sequence: one [`LayerKv`] per decoder layer.
//!
//! The model is stateless: whoever runs a sequence (a conversation, a
//! request, a perplexity window) owns its `KvCache` and passes it to
//! `Model::forward_hidden`, so several sequences can share one loaded model.
//!
//! Keys and values are stored as (B, S, Hkv, D), the layout the attention
//! kernels read. Capacity doubles when full (never preallocated at
//! max_position_embeddings), and `truncate` rewinds to a position so a chat
//! can keep the common prefix of two renderings of a conversation.

use candle_core::{Result, Tensor};

pub struct KvCache {
    layers: Vec<LayerKv>,
}

impl KvCache {
    /// An empty cache for a model of `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| LayerKv::default()).collect(),
        }
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Positions held (the same in every layer).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerKv::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rewinds to the first `len` positions.
    pub fn truncate(&mut self, len: usize) {
        self.layers.iter_mut().for_each(|l| l.truncate(len));
    }

    pub fn reset(&mut self) {
        self.layers.iter_mut().for_each(LayerKv::reset);
    }

    pub fn layer(&mut self, i: usize) -> &mut LayerKv {
        &mut self.layers[i]
    }
}

/// One layer's keys and values.
#[derive(Default)]
pub struct LayerKv {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

const MIN_CAPACITY: usize = 64;

impl LayerKv {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Allocated positions (for memory reporting and tests).
    pub fn capacity(&self) -> usize {
        self.k.as_ref().map_or(0, |k| k.dim(1).unwrap_or(0))
    }

    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Appends (B, L, Hkv, D) keys/values and returns views of everything
    /// cached so far.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let add = k.dim(1)?;
        let need = self.len + add;
        if need > self.capacity() {
            let cap = need.max(self.capacity() * 2).max(MIN_CAPACITY);
            let (b, _, h, d) = k.dims4()?;
            let new_k = Tensor::zeros((b, cap, h, d), k.dtype(), k.device())?;
            let new_v = Tensor::zeros((b, cap, h, d), v.dtype(), v.device())?;
            if let (Some(old_k), Some(old_v)) = (&self.k, &self.v) {
                if self.len > 0 {
                    new_k.slice_set(&old_k.narrow(1, 0, self.len)?, 1, 0)?;
                    new_v.slice_set(&old_v.narrow(1, 0, self.len)?, 1, 0)?;
                }
            }
            self.k = Some(new_k);
            self.v = Some(new_v);
        }
        let (Some(ck), Some(cv)) = (&self.k, &self.v) else {
            candle_core::bail!("kv cache not allocated");
        };
        ck.slice_set(&k.contiguous()?, 1, self.len)?;
        cv.slice_set(&v.contiguous()?, 1, self.len)?;
        self.len = need;
        Ok((ck.narrow(1, 0, self.len)?, cv.narrow(1, 0, self.len)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn append_truncate_append() -> Result<()> {
        let dev = Device::Cpu;
        let mut c = LayerKv::default();
        let a = Tensor::arange(0f32, 6., &dev)?.reshape((1, 3, 1, 2))?;
        c.append(&a, &a)?;
        c.truncate(2);
        let b = Tensor::full(9f32, (1, 1, 1, 2), &dev)?;
        let (k, _) = c.append(&b, &b)?;
        assert_eq!(
            k.flatten_all()?.to_vec1::<f32>()?,
            vec![0., 1., 2., 3., 9., 9.]
        );
        assert_eq!(c.capacity(), MIN_CAPACITY);
        let big = Tensor::zeros((1, 100, 1, 2), DType::F32, &dev)?;
        let (k, _) = c.append(&big, &big)?;
        assert_eq!(k.dim(1)?, 103);
        assert_eq!(
            k.narrow(1, 0, 3)?.flatten_all()?.to_vec1::<f32>()?,
            vec![0., 1., 2., 3., 9., 9.]
        );
        Ok(())
    }
}
