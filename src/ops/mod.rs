//! Per-token compute: the kernels the model calls for every token.
//!
//! - `matmul`: projections (dense and quantized weights)
//! - `gemv`: our threaded f32 × f32 kernel for decode rows (AVX2+FMA or scalar)
//! - `qdot`: our Q4_1/Q5_0/Q5_1 × f32 kernels for decode (AVX2 or scalar, chosen at run time)
//! - `attention`: causal grouped-query attention over the KV cache
//!
//! Own SIMD kernels go here, behind the same functions, each tested against
//! a scalar reference.

pub mod attention;
pub mod gemv;
pub mod matmul;
pub mod qdot;
