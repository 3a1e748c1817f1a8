//! The training set on disk, in a layout the training script reads with `numpy.fromfile`:
//!
//! - `cases.jsonl`: one JSON object per case (`task`, `prompt`, `has_input`, the scenes);
//! - `targets.u8` / `inputs.u8`: `count × height × width × 3` RGB bytes, row-major (an input
//!   slot of a text-to-image case is zeros);
//! - `meta.json`: count, size, seed, split, vocabulary, held-out elements.
//!
//! Case `i` is `tasks::case(seed, split, training_task(seed, i), i)`, so the files are a pure
//! function of (seed, count, size) and can be regenerated instead of stored.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::render::render;
use crate::tasks::{HELD_OUT_COMBOS, HELD_OUT_PAIRS, Split, case, training_task};
use crate::text::vocabulary;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("writing {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding {}: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn create(path: &Path) -> Result<BufWriter<File>, DatasetError> {
    File::create(path)
        .map(BufWriter::new)
        .map_err(|source| DatasetError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes `count` training cases rendered at `size × size` into `dir`.
pub fn write_training_set(
    dir: &Path,
    seed: u64,
    count: u64,
    size: u32,
) -> Result<(), DatasetError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DatasetError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cases_path = dir.join("cases.jsonl");
    let targets_path = dir.join("targets.u8");
    let inputs_path = dir.join("inputs.u8");
    let mut cases = create(&cases_path)?;
    let mut targets = create(&targets_path)?;
    let mut inputs = create(&inputs_path)?;
    let blank = vec![0u8; (size * size * 3) as usize];
    for i in 0..count {
        let c = case(seed, Split::Train, training_task(seed, i), i);
        let line = json!({
            "task": c.task.name(),
            "prompt": c.prompt,
            "has_input": c.input.is_some(),
            "input": c.input,
            "target": c.target,
        });
        writeln!(cases, "{line}").map_err(io(&cases_path))?;
        targets
            .write_all(render(&c.target, size, size).as_raw())
            .map_err(io(&targets_path))?;
        match &c.input {
            Some(s) => inputs.write_all(render(s, size, size).as_raw()),
            None => inputs.write_all(&blank),
        }
        .map_err(io(&inputs_path))?;
    }
    for (w, p) in [
        (&mut cases, &cases_path),
        (&mut targets, &targets_path),
        (&mut inputs, &inputs_path),
    ] {
        w.flush().map_err(io(p))?;
    }
    let meta_path = dir.join("meta.json");
    let meta = json!({
        "count": count,
        "width": size,
        "height": size,
        "seed": seed,
        "split": "train",
        "vocabulary": vocabulary(),
        "held_out_pairs": HELD_OUT_PAIRS.iter().map(|(s, c)| format!("{} {}", c.name(), s.name())).collect::<Vec<_>>(),
        "held_out_combos": HELD_OUT_COMBOS.iter().map(|(t, p)| format!("{} @ {p}", t.name())).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&meta).map_err(|source| DatasetError::Json {
        path: meta_path.clone(),
        source,
    })?;
    std::fs::write(&meta_path, text).map_err(io(&meta_path))?;
    Ok(())
}
