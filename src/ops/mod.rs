//! Per-token compute: the kernels the model calls for every token.
//!
//! - `matmul`: projections (dense and quantized weights)
//! - `q4_1`: our Q4_1 × f32 kernel for decode (AVX2 or scalar, chosen at run time)
//! - `attention`: causal grouped-query attention over the KV cache
//!
//! Own SIMD kernels go here, behind the same functions, each tested against
//! a scalar reference.

pub mod attention;
pub mod matmul;
pub mod q4_1;
