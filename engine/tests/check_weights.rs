//! `check-weights` on the real checkpoints' layouts without their bytes: the full-size
//! FLUX.1-Kontext-dev files are rebuilt as sparse safetensors (the exact headers, holes for the
//! data: no disk used) from `tests/weights/full_size/kontext-dev.json`, which
//! `tests/weights/make_full_size_lists.py` wrote from the reference model classes on PyTorch's
//! meta device (and whose BFL lists passed diffusers' own single-file conversion). Every layout
//! users have passes, through the loader's mapping of every tensor of the 12B model; a deleted
//! shard, a renamed tensor and a changed shape each fail with a message naming it; the loader
//! refuses a broken directory before building anything.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kontext_engine::weights::check::{CheckReport, canonical_kontext_dev, check_dir};
use kontext_engine::weights::{Layout, WeightsError};
use serde_json::{Value, json};

fn lists() -> Result<Value> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/weights/full_size/kontext-dev.json");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(serde_json::from_str(&text)?)
}

/// Bytes per element of a safetensors dtype name.
fn dtype_size(dtype: &str) -> Result<u64> {
    Ok(match dtype {
        "F32" => 4,
        "F16" | "BF16" => 2,
        "F8_E4M3" | "F8_E5M2" | "U8" => 1,
        other => bail!("dtype {other} in the lists"),
    })
}

/// Writes a safetensors file with `tensors` ([name, dtype, shape]) and no data: the header,
/// then a hole as long as the data would be. Returns (tensor names, data bytes).
fn write_sparse(path: &Path, tensors: &[Value], prefix: &str) -> Result<Vec<(String, u64)>> {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    let mut written = Vec::new();
    for t in tensors {
        let (name, dtype, shape) = (
            t[0].as_str().context("name")?,
            t[1].as_str().context("dtype")?,
            t[2].as_array().context("shape")?,
        );
        let elements: u64 = shape.iter().filter_map(Value::as_u64).product();
        let bytes = elements * dtype_size(dtype)?;
        let name = format!("{prefix}{name}");
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        written.push((name, bytes));
        offset += bytes;
    }
    let mut text = serde_json::to_string(&header)?;
    // The data starts 8-byte aligned, as safetensors writes it.
    while (8 + text.len()) % 8 != 0 {
        text.push(' ');
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut f = File::create(path)?;
    f.write_all(&(text.len() as u64).to_le_bytes())?;
    f.write_all(text.as_bytes())?;
    f.set_len(8 + text.len() as u64 + offset)?;
    Ok(written)
}

/// The full-size model directory in `layout` (BFL with `prefix` on the transformer keys), text
/// encoders and tokenizers as HF folders in both. Tokenizer files are placeholders: the check
/// looks for their presence only.
fn full_size_dir(layout: Layout, prefix: &str) -> Result<tempfile::TempDir> {
    full_size_dir_with(layout, prefix, |_, t| t.clone())
}

/// The same, with each file's tensor list passed through `edit(file, tensors)`.
fn full_size_dir_with(
    layout: Layout,
    prefix: &str,
    edit: impl Fn(&str, &Value) -> Value,
) -> Result<tempfile::TempDir> {
    let lists = lists()?;
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    for (file, config) in lists["configs"].as_object().context("configs")? {
        let is_text = file.starts_with("text_encoder");
        if is_text || layout == Layout::Diffusers {
            write_file(&root.join(file), &serde_json::to_string_pretty(config)?)?;
        }
    }
    let mut shards: BTreeMap<PathBuf, BTreeMap<String, String>> = BTreeMap::new();
    let mut totals: BTreeMap<PathBuf, u64> = BTreeMap::new();
    let diffusers = lists["layouts"]["diffusers"]
        .as_object()
        .context("diffusers")?;
    let bfl = lists["layouts"]["bfl"].as_object().context("bfl")?;
    let mut files: Vec<(&String, &Value, &str)> = Vec::new();
    for (file, tensors) in diffusers {
        if file.starts_with("text_encoder") || layout == Layout::Diffusers {
            files.push((file, tensors, ""));
        }
    }
    if layout == Layout::Bfl {
        for (file, tensors) in bfl {
            let p = if file.starts_with("flux1") {
                prefix
            } else {
                ""
            };
            files.push((file, tensors, p));
        }
    }
    for (file, tensors, p) in files {
        let path = root.join(file);
        let tensors = edit(file, tensors);
        let written = write_sparse(&path, tensors.as_array().context("tensors")?, p)?;
        let name = path
            .file_name()
            .context("name")?
            .to_string_lossy()
            .into_owned();
        if name.contains("-of-") {
            let folder = path.parent().context("folder")?.to_path_buf();
            for (tensor, bytes) in written {
                shards
                    .entry(folder.clone())
                    .or_default()
                    .insert(tensor, name.clone());
                *totals.entry(folder.clone()).or_default() += bytes;
            }
        }
    }
    for (folder, weight_map) in shards {
        let index = if folder.ends_with("text_encoder_2") {
            "model.safetensors.index.json"
        } else {
            "diffusion_pytorch_model.safetensors.index.json"
        };
        let total = totals.get(&folder).copied().unwrap_or(0);
        let body = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_file(&folder.join(index), &serde_json::to_string_pretty(&body)?)?;
    }
    for f in [
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer_2/tokenizer.json",
        "tokenizer_2/tokenizer_config.json",
    ] {
        write_file(&root.join(f), "{}")?;
    }
    Ok(dir)
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text)?;
    Ok(())
}

fn assert_full_size_ok(report: &CheckReport) {
    assert!(report.is_ok(), "{report}");
    let params = |name: &str| report.component(name).map_or(0, |c| c.parameters());
    // FLUX.1-Kontext-dev: 11.9B transformer, T5-XXL encoder 4.76B, CLIP-L text 123M, VAE 83.8M.
    let t = params("transformer");
    assert!(
        (11_800_000_000..12_000_000_000).contains(&t),
        "{t}\n{report}"
    );
    assert!(
        (4_700_000_000..4_800_000_000).contains(&params("t5 encoder")),
        "{report}"
    );
    assert!(
        (120_000_000..125_000_000).contains(&params("clip text")),
        "{report}"
    );
    assert!(
        (83_000_000..84_500_000).contains(&params("autoencoder")),
        "{report}"
    );
    assert_eq!(
        report.component("transformer").map(|c| c.unexpected.len()),
        Some(0),
        "{report}"
    );
    assert_eq!(
        report.component("autoencoder").map(|c| c.unexpected.len()),
        Some(0),
        "{report}"
    );
}

#[test]
fn the_tiny_model_passes_in_both_layouts_with_nothing_unexpected() -> Result<()> {
    for layout in [Layout::Diffusers, Layout::Bfl] {
        let dir = tempfile::tempdir()?;
        kontext_engine::tiny::write(dir.path(), 0, layout)?;
        let report = check_dir(dir.path());
        println!("{report}");
        assert!(report.is_ok(), "{report}");
        for c in &report.components {
            assert!(
                c.unexpected.is_empty(),
                "{layout:?} {}: {:?}",
                c.name,
                c.unexpected
            );
        }
    }
    Ok(())
}

#[test]
fn the_bfl_lists_are_the_loaders_canonical_names() -> Result<()> {
    // The lists' BFL files were cross-checked against diffusers with this very JSON as input;
    // if the loader's table changes, the lists must be regenerated (tests/weights/README.md).
    let ours = canonical_kontext_dev();
    let lists = lists()?;
    let bfl = &lists["layouts"]["bfl"];
    for (file, part) in [
        ("flux1-kontext-dev.safetensors", "transformer"),
        ("ae.safetensors", "vae"),
    ] {
        let mut stored: Vec<(String, Vec<u64>)> = bfl[file]
            .as_array()
            .context("file")?
            .iter()
            .map(|t| {
                (
                    t[0].as_str().unwrap_or_default().to_owned(),
                    t[2].as_array()
                        .map(|s| s.iter().filter_map(Value::as_u64).collect())
                        .unwrap_or_default(),
                )
            })
            .collect();
        let mut expected: Vec<(String, Vec<u64>)> = serde_json::from_value(ours[part].clone())?;
        stored.sort();
        expected.sort();
        assert_eq!(stored, expected, "{file}");
    }
    Ok(())
}

#[test]
fn full_size_diffusers_folders_pass() -> Result<()> {
    let dir = full_size_dir(Layout::Diffusers, "")?;
    let started = std::time::Instant::now();
    let report = check_dir(dir.path());
    println!(
        "{report}checked in {:.3} s",
        started.elapsed().as_secs_f64()
    );
    assert_full_size_ok(&report);
    assert_eq!(
        report.component("transformer").map(|c| c.files.len()),
        Some(3),
        "{report}"
    );
    assert_eq!(
        report.component("t5 encoder").map(|c| c.files.len()),
        Some(2),
        "{report}"
    );
    Ok(())
}

#[test]
fn full_size_bfl_single_files_pass_with_and_without_the_comfyui_prefix() -> Result<()> {
    for prefix in ["", "model.diffusion_model."] {
        let dir = full_size_dir(Layout::Bfl, prefix)?;
        let report = check_dir(dir.path());
        println!("{report}");
        assert_full_size_ok(&report);
        let layout = report
            .component("transformer")
            .map(|c| c.layout.clone())
            .unwrap_or_default();
        assert_eq!(
            layout.contains(prefix),
            !prefix.is_empty() || layout == "BFL single file",
            "{layout}"
        );
    }
    Ok(())
}

#[test]
fn a_full_size_scaled_fp8_single_file_passes_at_half_the_bytes() -> Result<()> {
    // Comfy-Org's `*_fp8_scaled` layout: block linear weights E4M3 with an f32 `scale_weight`
    // each, the rest BF16, the `scaled_fp8` marker; keys under `model.diffusion_model.`.
    let dir = full_size_dir_with(Layout::Bfl, "model.diffusion_model.", |file, tensors| {
        if file != "flux1-kontext-dev.safetensors" {
            return tensors.clone();
        }
        let mut out = Vec::new();
        for t in tensors.as_array().into_iter().flatten() {
            let name = t[0].as_str().unwrap_or_default();
            if kontext_engine::weights::check::is_block_linear_weight(name) {
                out.push(json!([name, "F8_E4M3", t[2]]));
                let stem = name.trim_end_matches(".weight");
                out.push(json!([format!("{stem}.scale_weight"), "F32", [1]]));
            } else {
                out.push(t.clone());
            }
        }
        Value::Array(out)
    })?;
    let report = check_dir(dir.path());
    println!("{report}");
    assert_full_size_ok(&report);
    let t = report.component("transformer").context("transformer")?;
    let gb = t.stored_bytes as f64 / 1e9;
    println!("FP8 scaled transformer: {gb:.2} GB stored");
    assert!((11.5..12.5).contains(&gb), "{gb}");
    Ok(())
}

#[test]
fn resident_memory_follows_the_parameter_counts() -> Result<()> {
    let dir = full_size_dir(Layout::Diffusers, "")?;
    let report = check_dir(dir.path());
    let rows = report.resident();
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    let (bf16, fp8) = (gib(rows[0].bytes[0]), gib(rows[1].bytes[0]));
    // 11.9B parameters: 22.2 GiB in bf16; FP8 block linears bring it to about half.
    assert!((22.0..22.5).contains(&bf16), "{bf16}");
    assert!(fp8 > 0.5 * bf16 && fp8 < 0.56 * bf16, "{fp8} vs {bf16}");
    Ok(())
}

/// The problems of a broken copy of the full-size diffusers directory, as text.
fn broken(damage: impl FnOnce(&Path) -> Result<()>) -> Result<(CheckReport, String)> {
    let dir = full_size_dir(Layout::Diffusers, "")?;
    damage(dir.path())?;
    let report = check_dir(dir.path());
    let text = report.to_string();
    println!("{text}");
    assert!(!report.is_ok(), "{text}");
    Ok((report, text))
}

#[test]
fn a_deleted_shard_is_named() -> Result<()> {
    let shard = "transformer/diffusion_pytorch_model-00002-of-00003.safetensors";
    let (report, text) = broken(|root| Ok(std::fs::remove_file(root.join(shard))?))?;
    let problems: Vec<&WeightsError> = report.problems().map(|(_, p)| p).collect();
    assert!(
        matches!(problems.as_slice(), [WeightsError::MissingFile { file, .. }]
            if file.contains("diffusion_pytorch_model-00002-of-00003.safetensors") && file.contains("shard")),
        "{text}"
    );
    Ok(())
}

/// Rewrites one shard's header with `edit` applied to its tensor list.
fn edit_shard(root: &Path, shard: &str, edit: impl Fn(&mut Vec<Value>)) -> Result<()> {
    let lists = lists()?;
    let mut tensors = lists["layouts"]["diffusers"][shard]
        .as_array()
        .context("shard")?
        .clone();
    edit(&mut tensors);
    write_sparse(&root.join(shard), &tensors, "")?;
    Ok(())
}

#[test]
fn a_renamed_tensor_is_named_missing_and_unexpected() -> Result<()> {
    let shard = "transformer/diffusion_pytorch_model-00001-of-00003.safetensors";
    let victim = "transformer_blocks.3.attn.to_k.weight";
    let renamed = "transformer_blocks.3.attn.to_key.weight";
    let (report, text) = broken(|root| {
        edit_shard(root, shard, |ts| {
            for t in ts.iter_mut() {
                if t[0] == victim {
                    t[0] = json!(renamed);
                }
            }
        })?;
        // The index follows the shard, as a conversion tool that wrote the wrong name would.
        let index = root.join("transformer/diffusion_pytorch_model.safetensors.index.json");
        let mut body: Value = serde_json::from_str(&std::fs::read_to_string(&index)?)?;
        let map = body["weight_map"].as_object_mut().context("weight_map")?;
        let file = map.remove(victim).context("victim in the index")?;
        map.insert(renamed.into(), file);
        write_file(&index, &serde_json::to_string(&body)?)
    })?;
    let problems: Vec<String> = report.problems().map(|(_, p)| p.to_string()).collect();
    assert_eq!(problems.len(), 1, "{text}");
    assert!(
        problems[0].contains(victim) && problems[0].contains("double_blocks.3.img_attn.qkv.weight"),
        "{text}"
    );
    let unexpected = &report
        .component("transformer")
        .context("transformer")?
        .unexpected;
    assert_eq!(
        unexpected,
        &["transformer_blocks.3.attn.to_key.weight".to_string()],
        "{text}"
    );
    Ok(())
}

#[test]
fn a_changed_shape_is_named_with_both_shapes() -> Result<()> {
    let shard = "transformer/diffusion_pytorch_model-00001-of-00003.safetensors";
    let victim = "transformer_blocks.0.ff.net.2.weight";
    let (report, text) = broken(|root| {
        edit_shard(root, shard, |ts| {
            for t in ts.iter_mut() {
                if t[0] == victim {
                    t[2] = json!([3072, 12000]);
                }
            }
        })
    })?;
    let problems: Vec<String> = report.problems().map(|(_, p)| p.to_string()).collect();
    assert_eq!(problems.len(), 1, "{text}");
    assert!(
        problems[0].contains(victim)
            && problems[0].contains("[3072, 12288]")
            && problems[0].contains("[3072, 12000]"),
        "{text}"
    );
    Ok(())
}

#[test]
fn the_loader_refuses_a_broken_directory_before_building_anything() -> Result<()> {
    let dir = full_size_dir(Layout::Diffusers, "")?;
    std::fs::remove_file(dir.path().join("text_encoder/model.safetensors"))?;
    let opts = kontext_engine::loader::LoadOptions {
        model: dir.path().display().to_string(),
        device: "cpu".into(),
        dtype: None,
        tiny_seed: 0,
        max_pixels: 1 << 20,
        linear_precision: Default::default(),
    };
    let Err(err) = kontext_engine::loader::load_engine(&opts) else {
        bail!("a directory without the CLIP weights loaded");
    };
    let text = err.to_string();
    assert!(
        matches!(err, kontext_engine::EngineError::WeightsCheck(_))
            && text.contains("model.safetensors"),
        "{text}"
    );
    Ok(())
}

#[test]
fn a_dtype_the_loader_cannot_read_is_named() -> Result<()> {
    let shard = "transformer/diffusion_pytorch_model-00003-of-00003.safetensors";
    let (report, text) = broken(|root| {
        edit_shard(root, shard, |ts| {
            if let Some(t) = ts.first_mut() {
                t[1] = json!("F8_E5M2");
            }
        })
    })?;
    let problems: Vec<&WeightsError> = report.problems().map(|(_, p)| p).collect();
    assert!(
        matches!(problems.as_slice(), [WeightsError::UnsupportedDtype { dtype, file, .. }]
            if dtype == "F8_E5M2" && file.ends_with(shard)),
        "{text}"
    );
    Ok(())
}
