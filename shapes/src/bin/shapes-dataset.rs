//! `shapes-dataset --out DIR --seed S --count N --size PX`: writes the shapes world's training
//! set (see `kontext_shapes::dataset`) for `scripts/train-shapes.sh`.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut out: Option<PathBuf> = None;
    let (mut seed, mut count, mut size) = (0u64, 1000u64, 64u32);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next();
        let parsed = match (flag.as_str(), value.as_deref()) {
            ("--out", Some(v)) => {
                out = Some(PathBuf::from(v));
                Ok(())
            }
            ("--seed", Some(v)) => v.parse().map(|v| seed = v).map_err(|e| e.to_string()),
            ("--count", Some(v)) => v.parse().map(|v| count = v).map_err(|e| e.to_string()),
            ("--size", Some(v)) => v.parse().map(|v| size = v).map_err(|e| e.to_string()),
            _ => Err("unknown flag or missing value".into()),
        };
        if let Err(e) = parsed {
            eprintln!(
                "shapes-dataset: {flag}: {e}\nusage: shapes-dataset --out DIR [--seed S] [--count N] [--size PX]"
            );
            return ExitCode::from(2);
        }
    }
    let Some(out) = out else {
        eprintln!("shapes-dataset: --out DIR is required");
        return ExitCode::from(2);
    };
    if size % 16 != 0 || size == 0 {
        eprintln!("shapes-dataset: --size must be a positive multiple of 16, got {size}");
        return ExitCode::from(2);
    }
    match kontext_shapes::dataset::write_training_set(&out, seed, count, size) {
        Ok(()) => {
            println!("wrote {count} cases ({size}x{size}) to {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shapes-dataset: {e}");
            ExitCode::FAILURE
        }
    }
}
