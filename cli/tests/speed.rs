//! `kontext speed` end to end on the shapes model (a few steps, one case per task): every mode
//! gets its row, and the columns agree with what each mode is.

use std::process::Command;

/// One table row, read from its end (the step-caching column has spaces in it).
#[derive(Debug)]
struct Row {
    mode: String,
    wall_s: f64,
    denoise_s: f64,
    ratio: String,
    full_evals: f64,
    psnr_db: f64,
}

fn parse_row(line: &str) -> Option<Row> {
    let t: Vec<&str> = line.split_whitespace().collect();
    if t.len() < 9 || t.last() != Some(&"dB") {
        return None;
    }
    let from_end = |i: usize| t[t.len() - i];
    Some(Row {
        mode: t[0].to_string(),
        wall_s: from_end(7).parse().ok()?,
        denoise_s: from_end(6).parse().ok()?,
        ratio: from_end(5).to_string(),
        full_evals: from_end(4).parse().ok()?,
        psnr_db: from_end(2).parse().ok()?,
    })
}

#[test]
fn speed_prints_one_row_per_mode_with_its_evaluations_and_time_split() {
    let run = Command::new(env!("CARGO_BIN_EXE_kontext"))
        .args(["speed", "--cases", "1", "--steps", "6"])
        .output()
        .expect("run kontext speed");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "kontext speed failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let rows: Vec<Row> = stdout.lines().filter_map(parse_row).collect();
    let modes: Vec<&str> = rows.iter().map(|r| r.mode.as_str()).collect();
    assert_eq!(
        modes,
        ["none", "regular", "high", "fp8", "fp8+high"],
        "{stdout}"
    );
    for r in &rows {
        assert!(r.wall_s > 0.0, "{r:?}");
        assert!(r.denoise_s > 0.0 && r.denoise_s <= r.wall_s, "{r:?}");
    }
    let [none, regular, high, fp8, fp8_high] = &rows[..] else {
        unreachable!("five rows checked above")
    };
    assert_eq!(none.ratio, "1.00x", "{stdout}");
    assert_eq!(none.full_evals, 6.0, "{stdout}");
    assert_eq!(none.psnr_db, 99.0, "none is its own reference: {stdout}");
    // First-Block-Cache skips only when the first block barely moves: never more than none.
    assert!(
        (2.0..=6.0).contains(&regular.full_evals),
        "regular: {stdout}"
    );
    // Every third step in full, and the last: steps 0, 3 and 5 of 6.
    assert_eq!(high.full_evals, 3.0, "{stdout}");
    assert_eq!(fp8_high.full_evals, 3.0, "{stdout}");
    assert_eq!(fp8.full_evals, 6.0, "{stdout}");
    // FP8's rounding moves the image, but not far.
    assert!(fp8.psnr_db > 25.0 && fp8.psnr_db < 99.0, "fp8: {stdout}");
}
