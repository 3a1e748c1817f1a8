//! CUDA-only parts of the Kontext worker, kept out of the engine crate so that the engine stays
//! free of `unsafe` and of nvcc:
//!
//! - `flash_attn` (feature `flash-attn`): FlashAttention-2 forward for bf16, head dim 128, no mask
//!   — the only attention the FLUX transformer runs — as a candle `CustomOp3`. Never materialises
//!   the `(b, heads, L, L)` scores. With `flash-attn-v3`, Hopper GPUs run FlashAttention-3 behind
//!   the same op.
//! - `fused` (feature `fused`): QK RMSNorm + RoPE + head layout in one pass, and the modulated
//!   LayerNorm, in bf16 with BFL's roundings.
//! - `fp8_gemm` (feature `fp8-gemm`): FP8 (E4M3) linear layers through cuBLASLt, activations
//!   quantized per token by our kernel, row/column scales and bias in the GEMM's epilogue.
//! - `fp8_cast` (feature `fp8-gemm`): E4M3 casts with row scales, which candle 0.11.1 cannot do
//!   on CUDA.
//! - `memory` (feature `cuda`): device name/memory and the peak of candle's stream-ordered
//!   allocation pool, for the GPU benchmark.
//!
//! Without features the crate is empty, so `cargo build --workspace` and CI need no CUDA toolchain.

#[cfg(feature = "flash-attn")]
pub mod flash_attn;
#[cfg(feature = "fp8-gemm")]
pub mod fp8_cast;
#[cfg(feature = "fp8-gemm")]
pub mod fp8_gemm;
#[cfg(feature = "fused")]
pub mod fused;
#[cfg(feature = "fp8-gemm")]
pub mod lt_bf16;
#[cfg(feature = "cuda")]
pub mod memory;

/// Whether this build carries the flash-attention kernel.
pub const HAS_FLASH_ATTN: bool = cfg!(feature = "flash-attn");
/// Whether this build carries FlashAttention-3 (Hopper) beside FlashAttention-2.
pub const HAS_FLASH_ATTN3: bool = cfg!(feature = "flash-attn-v3");
/// Whether this build carries the fused elementwise kernels.
pub const HAS_FUSED: bool = cfg!(feature = "fused");
/// Whether this build carries the cuBLASLt FP8 GEMM.
pub const HAS_FP8_GEMM: bool = cfg!(feature = "fp8-gemm");
