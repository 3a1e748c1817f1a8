//! `kontext-worker bench-gpu`: the engine's GPU benchmark and correctness checks
//! (`kontext_engine::bench::gpu_run`, docs/gpu.md).

pub use kontext_engine::bench::gpu_run::BenchGpuArgs;

pub fn run(args: BenchGpuArgs) -> anyhow::Result<()> {
    kontext_engine::bench::gpu_run::run(args)?;
    Ok(())
}
