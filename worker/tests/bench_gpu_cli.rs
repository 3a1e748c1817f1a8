//! `kontext-worker bench-gpu` end to end on the CPU with the tiny model: the code path of the GPU
//! benchmark (checks, engine build, timed edits, table, JSON) runs in CI even though the numbers
//! that matter need a GPU (scripts/gpu-bench.sh). On the CPU the checks compare bf16 with f32
//! through the same generic ops the CUDA build uses.

use std::process::Command;

use anyhow::{Context, Result, bail};

#[test]
fn bench_gpu_runs_on_cpu_with_the_tiny_model() -> Result<()> {
    let out = tempfile::tempdir()?;
    let parity = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/parity/fixtures/default"
    );
    let run = Command::new(env!("CARGO_BIN_EXE_kontext-worker"))
        .args([
            "bench-gpu",
            "--device",
            "cpu",
            "--model-size",
            "tiny",
            "--sizes",
            "64,32",
        ])
        .args([
            "--steps",
            "3",
            "--warmup-steps",
            "1",
            "--dtype",
            "bf16",
            "--parity-dir",
            parity,
        ])
        .arg("--out-dir")
        .arg(out.path())
        .output()?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    if !run.status.success() {
        bail!("bench-gpu failed ({}):\n{stdout}\n{stderr}", run.status);
    }
    assert!(stdout.contains("bench-gpu"), "no table:\n{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("bench-gpu.json"))?)?;
    let runs = report["runs"].as_array().context("runs")?;
    assert_eq!(runs.len(), 2, "{report:#}");
    for r in runs {
        assert_eq!(r["steps"], 3);
        assert_eq!(r["step_s"].as_array().context("step_s")?.len(), 3);
        assert!(r["total_s"].as_f64().context("total_s")? > 0.0);
        assert_eq!(r["output_finite"], true);
    }
    let checks = report["checks"].as_array().context("checks")?;
    // attention ×2, hd128 transformer ×2, tiny pipeline ×2, parity ×2.
    assert_eq!(checks.len(), 8, "{report:#}");
    assert!(checks.iter().all(|c| c["passed"] == true), "{report:#}");
    Ok(())
}

#[test]
fn bench_gpu_rejects_bad_sizes() -> Result<()> {
    let run = Command::new(env!("CARGO_BIN_EXE_kontext-worker"))
        .args([
            "bench-gpu",
            "--device",
            "cpu",
            "--sizes",
            "100",
            "--skip-checks",
        ])
        .output()?;
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("--sizes entry 100"), "{stderr}");
    Ok(())
}
