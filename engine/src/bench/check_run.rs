//! `bench-gpu`'s correctness phase: every check of `checks` and `fp8_check` on the benchmark's
//! device and dtype against f32 on the CPU, printed as it runs and recorded in the report.

use std::time::{Duration, Instant};

use candle_core::Device;

use super::checks::{self, CheckOutcome};
use super::fp8_check;
use super::gpu_run::BenchGpuArgs;
use super::report::{self, Report};
use crate::{EngineError, tiny};

pub(super) fn run_checks(
    args: &BenchGpuArgs,
    dev: &Device,
    out_dir: &std::path::Path,
    rep: &mut Report,
) {
    let dtype = args.dtype.dtype();
    let mut record = |what: &str, r: Result<Vec<CheckOutcome>, EngineError>, took: Duration| match r
    {
        Ok(outcomes) => {
            for o in outcomes {
                eprintln!(
                    "  check {}: rel L2 {:.3e} (≤ {:.0e}) {} [{:.1}s]",
                    o.name,
                    o.rel_l2,
                    o.tolerance,
                    if o.passed() { "ok" } else { "FAIL" },
                    took.as_secs_f64()
                );
                rep.checks.push(report::CheckRow::from(&o));
            }
        }
        Err(e) => {
            eprintln!("  check {what}: ERROR {e}");
            rep.check_errors.push(format!("{what}: {e}"));
        }
    };
    eprintln!("correctness ({} {dtype:?} vs cpu f32):", args.device);
    let t = Instant::now();
    record(
        "attention",
        checks::attention_kernel(dev, dtype, 1),
        t.elapsed(),
    );
    let t = Instant::now();
    record(
        "hd128 transformer",
        checks::head_dim_128_model(dev, dtype),
        t.elapsed(),
    );
    let t = Instant::now();
    let tiny = tiny::ensure_cached_in(out_dir, 0);
    record(
        "tiny pipeline",
        tiny.and_then(|d| checks::tiny_pipeline(&d, dev, dtype)),
        t.elapsed(),
    );
    let t = Instant::now();
    record(
        "parity fixture",
        checks::parity_fixture(&args.parity_dir, out_dir, dev, dtype),
        t.elapsed(),
    );
    // The FP8 token layer at a FLUX width: the single blocks' fused projection (3072 → 21504)
    // and the double blocks' QKV (3072 → 9216) over a 1024² edit's 8704 tokens, plus a ragged
    // row count.
    let t = Instant::now();
    let shapes: &[(usize, usize, usize)] = if dev.is_cuda() {
        &[(1000, 3072, 3072), (8704, 3072, 9216), (8704, 3072, 21504)]
    } else {
        &[(37, 256, 192)]
    };
    record(
        "fp8 linear",
        fp8_check::fp8_linear(dev, dtype, shapes),
        t.elapsed(),
    );
}
