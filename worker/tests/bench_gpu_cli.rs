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
            "6",
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
        assert_eq!(r["steps"], 6);
        assert_eq!(r["full_evaluations"], 6);
        assert_eq!(r["step_s"].as_array().context("step_s")?.len(), 6);
        assert!(r["total_s"].as_f64().context("total_s")? > 0.0);
        assert_eq!(r["output_finite"], true);
    }
    let checks = report["checks"].as_array().context("checks")?;
    // attention ×3, hd128 transformer ×2, tiny pipeline ×2, parity ×2, the FP8 layer.
    assert_eq!(checks.len(), 10, "{report:#}");
    assert!(checks.iter().all(|c| c["passed"] == true), "{report:#}");

    // The reference (`none`) at both sizes, then each mode at both sizes: the native engine's,
    // then the FP8 engine's; each against the reference of its size.
    let modes = report["modes"].as_array().context("modes")?;
    let names: Vec<&str> = modes.iter().filter_map(|m| m["mode"].as_str()).collect();
    assert_eq!(
        names,
        [
            "none",
            "none",
            "regular",
            "high",
            "regular",
            "high",
            "fp8",
            "fp8+regular",
            "fp8+high",
            "fp8",
            "fp8+regular",
            "fp8+high",
        ],
        "{report:#}"
    );
    for m in modes {
        let err = m["rel_err_vs_none"].as_f64().context("rel_err_vs_none")?;
        let evals = m["full_evaluations"].as_u64().context("full_evaluations")?;
        assert_eq!(m["output_finite"], true, "{m}");
        assert!(err < 0.5, "{m}");
        match m["mode"].as_str() {
            Some("none") => assert!(evals == 6 && err == 0.0, "{m}"),
            // 6 steps, every 3rd in full and the last: 0, 3, 5.
            Some("high" | "fp8+high") => assert!(evals == 3 && err > 0.0, "{m}"),
            Some("fp8" | "fp8+regular") => assert!(evals <= 6 && err > 0.0, "{m}"),
            // The first-block cache skips nothing on random weights: then it is `none` exactly.
            Some("regular") => assert!(evals < 6 || err == 0.0, "{m}"),
            other => panic!("unexpected mode {other:?}"),
        }
    }
    assert!(stdout.contains("err vs none"), "no modes table:\n{stdout}");
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
