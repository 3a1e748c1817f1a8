//! The GPU benchmark (`kontext-worker bench-gpu`, scripts/gpu-bench.sh): the run itself and its
//! table (`gpu_run`, `report`), one timed edit (`timed_edit`), FLOP accounting against the compute floor (`flops`), engines at
//! the real 12B size built from random weights generated on the device (`random_weights`), the
//! speed modes (step caching, FP8 linears) run beside the reference (`speed_modes`), and
//! the correctness checks of a GPU build against the CPU f32 reference (`checks`). The CPU
//! benchmark of one transformer forward is the `bench-transformer` binary of this crate.
//!
//! Everything here compiles and runs on the CPU too (small configurations), so CI exercises the
//! code paths; only the numbers that matter need a GPU.

mod check_run;
pub mod checks;
pub mod flops;
pub mod fp8_check;
pub mod gpu_run;
pub mod random_weights;
pub mod report;
pub mod speed_modes;
mod timed_edit;
