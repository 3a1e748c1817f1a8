//! CUDA-only parts of the Kontext worker, kept out of the engine crate so that the engine stays
//! free of `unsafe` and of nvcc:
//!
//! - `flash_attn` (feature `flash-attn`): FlashAttention-2 forward for bf16, head dim 128, no mask
//!   — the only attention the FLUX transformer runs — as a candle `CustomOp3`. Never materialises
//!   the `(b, heads, L, L)` scores.
//! - `fused` (feature `fused`): QK RMSNorm + RoPE + head layout in one pass, and the modulated
//!   LayerNorm, in bf16 with BFL's roundings.
//! - `memory` (feature `cuda`): device name/memory and the peak of candle's stream-ordered
//!   allocation pool, for the GPU benchmark.
//!
//! Without features the crate is empty, so `cargo build --workspace` and CI need no CUDA toolchain.

#[cfg(feature = "flash-attn")]
pub mod flash_attn;
#[cfg(feature = "fused")]
pub mod fused;
#[cfg(feature = "cuda")]
pub mod memory;

/// Whether this build carries the flash-attention kernel.
pub const HAS_FLASH_ATTN: bool = cfg!(feature = "flash-attn");
/// Whether this build carries the fused elementwise kernels.
pub const HAS_FUSED: bool = cfg!(feature = "fused");
