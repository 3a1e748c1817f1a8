//! The FLUX.1 Kontext flow transformer and its sampler, written for candle from the BFL reference
//! (black-forest-labs/flux @ 802fb47, `src/flux/`; docs/engine.md).
//!
//! - `model`: the transformer (BFL key names) and its inputs;
//! - `linear`: the blocks' linear layers, in the compute dtype or FP8 E4M3;
//! - `blocks`, `embed`, `ops` (with its CPU and CUDA kernels), `attention`, `rope`: its parts;
//! - `sampling`: schedule, 2×2 packing, position ids, the Kontext denoising loop;
//! - `step_cache`: fewer full evaluations per image (First-Block-Cache, fixed schedule).
//!
//! Everything takes the compute dtype from the weights; position ids, RoPE tables and softmax
//! statistics are f32 whatever that dtype is.

pub mod attention;
pub mod blocks;
pub mod embed;
pub mod linear;
pub mod model;
pub mod ops;
pub mod profile;
pub mod rope;
pub mod sampling;
pub mod step_cache;

pub use linear::LinearPrecision;
pub use model::{Flux, FluxInputs};
pub use step_cache::{Acceleration, StepCaching};
