//! Per-token compute: the kernels the model calls for every token.
//!
//! - `matmul`: projections (dense and quantized weights)
//! - `attention`: causal grouped-query attention over the KV cache
//!
//! Own SIMD kernels go here, behind the same functions, each tested against
//! a scalar reference.

pub mod attention;
pub mod matmul;
