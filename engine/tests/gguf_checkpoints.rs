//! GGUF transformers (docs/engine.md §GGUF transformers): the tiny model converted by our own
//! writer (`weights::gguf::convert_dir`, the community layout: BFL names, linear weights in a
//! block format, the rest F32) to each block format its sizes allow. Each passes `check-weights`,
//! loads through the same `ModelDir` path with its linear weights kept quantized, and gives an
//! edit within a bounded relative error of the f32 model with the same seed; the figures and the
//! 12B's sizes per format are printed (`--nocapture`) and quoted in the README. Then the refusals:
//! a type candle cannot read, a missing tensor, `--linear-precision fp8`, a file that is not
//! GGUF.

use std::path::Path;

use anyhow::Result;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use kontext_engine::config::FluxConfig;
use kontext_engine::flux::linear::{BlockLinear, GgufLinear};
use kontext_engine::flux::{LinearPrecision, StepCaching};
use kontext_engine::lora::LoraInput;
use kontext_engine::pipeline::{EngineOptions, KontextEngine};
use kontext_engine::weights::check::check_dir;
use kontext_engine::weights::gguf::{convert_dir, transformer_bytes, write_gguf};
use kontext_engine::weights::{Layout, ModelDir};
use kontext_engine::{Context, Engine, EngineRequest, References, StepControl, tiny};

fn engine(dir: &Path, precision: LinearPrecision) -> Result<KontextEngine> {
    let opts = EngineOptions {
        linear_precision: precision,
        ..EngineOptions::cpu()
    };
    Ok(KontextEngine::load(&ModelDir::open(dir)?, "tiny", opts)?)
}

fn edit(e: &mut KontextEngine) -> Result<Vec<f32>> {
    edit_with(e, Vec::new())
}

fn edit_with(e: &mut KontextEngine, loras: Vec<LoraInput>) -> Result<Vec<f32>> {
    let req = EngineRequest {
        prompt: "make the cat red".into(),
        references: References::one(Context::Image {
            image: image::RgbImage::from_fn(64, 48, |x, y| {
                image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) % 2 * 255) as u8])
            }),
            width: 64,
            height: 48,
            cache_key: None,
        }),
        width: 64,
        height: 48,
        steps: 8,
        guidance: 2.5,
        seed: 3,
        initial_latents: None,
        want_latent: true,
        caching: StepCaching::Off,
        loras,
    };
    let out = e.generate(&req, &mut |_, _| StepControl::Continue)?;
    Ok(out.packed_latent.unwrap_or_default())
}

fn rel_l2(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f32 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

/// The tiny model in the BFL layout (the conversion's source).
fn tiny_dir() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    tiny::write(dir.path(), 0, Layout::Bfl)?;
    Ok(dir)
}

fn converted(src: &Path, quant: GgmlDType) -> Result<(tempfile::TempDir, std::path::PathBuf)> {
    let out = tempfile::tempdir()?;
    let file = convert_dir(&ModelDir::open(src)?, out.path(), quant)?;
    Ok((out, file))
}

#[test]
fn gguf_transformers_check_load_quantized_and_stay_close_to_f32() -> Result<()> {
    let src = tiny_dir()?;
    let mut plain = engine(src.path(), LinearPrecision::Native)?;
    let reference = edit(&mut plain)?;
    let f32_bytes = plain.flux().block_linear_bytes();
    // The tiny model's rows are mostly 32 wide: one block. Q8_0 and Q4_0 run at that width; the
    // K-quants need 256 and candle's Q4_1/Q5_x kernels an even number of blocks, so
    // `block_formats_match_f32_on_a_wide_layer` covers those.
    for (quant, bound) in [(GgmlDType::Q8_0, 0.03), (GgmlDType::Q4_0, 0.25)] {
        let (out, file) = converted(src.path(), quant)?;
        let report = check_dir(out.path());
        assert!(report.is_ok(), "{quant:?}\n{report}");
        let t = report.component("transformer").expect("transformer");
        assert!(t.unexpected.is_empty(), "{quant:?}: {:?}", t.unexpected);
        assert!(t.dtypes.contains_key(&format!("{quant:?}")), "{report}");
        let md = ModelDir::open(out.path())?;
        assert_eq!(md.transformer_layout(), Layout::Bfl);
        let mut e = engine(out.path(), LinearPrecision::Native)?;
        let err = rel_l2(&edit(&mut e)?, &reference);
        // The blocks' linear weights stay in their block format (f32 would be 1.0).
        let bytes = e.flux().block_linear_bytes() as f64 / f32_bytes as f64;
        println!(
            "{quant:?} ({}): final latents rel L2 vs f32 {err:.4}; blocks' linear bytes \
             {bytes:.3}x of f32",
            file.file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_default()
        );
        assert!(
            bytes < 0.3,
            "{quant:?}: the linears were not kept quantized ({bytes})"
        );
        // A LoRA on quantized linears (the runtime addition), and gone again after it.
        let kohya = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/parity/fixtures/lora/kohya.safetensors"),
        )?;
        let lora = LoraInput {
            id: "kohya".into(),
            bytes: kohya.into(),
            scale: 0.8,
        };
        let plain = edit(&mut e)?;
        let with_lora = edit_with(&mut e, vec![lora])?;
        assert!(
            rel_l2(&with_lora, &plain) > 1e-3,
            "{quant:?}: the LoRA must show"
        );
        assert_eq!(
            edit(&mut e)?,
            plain,
            "{quant:?}: removing the LoRA restores the model"
        );
        assert!(err > 1e-5, "{quant:?}: the quantization must show");
        assert!(err < bound, "{quant:?}: {err} (bound {bound})");
    }
    Ok(())
}

#[test]
fn block_formats_match_f32_on_a_wide_layer() -> Result<()> {
    let dev = Device::Cpu;
    let w = (Tensor::randn(0f32, 1.0, (64, 512), &dev)? * 0.05)?; // (out, in)
    let b = Tensor::randn(0f32, 0.1, 64, &dev)?;
    let x = Tensor::randn(0f32, 1.0, (1, 7, 512), &dev)?; // (batch, tokens, in)
    let want = x.broadcast_matmul(&w.t()?)?.broadcast_add(&b)?;
    for (quant, bound) in [
        (GgmlDType::Q8_0, 0.01),
        (GgmlDType::Q6K, 0.04),
        (GgmlDType::Q5K, 0.08),
        (GgmlDType::Q5_1, 0.08),
        (GgmlDType::Q5_0, 0.08),
        (GgmlDType::Q4K, 0.15),
        (GgmlDType::Q4_1, 0.15),
        (GgmlDType::Q4_0, 0.15),
        (GgmlDType::Q3K, 0.3),
    ] {
        let layer = GgufLinear::new(QTensor::quantize(&w, quant)?, Some(b.clone()), DType::F32)?;
        let got = layer.forward(&x)?;
        let err = (((&got - &want)?.sqr()?.sum_all()? / want.sqr()?.sum_all()?)?.sqrt()?)
            .to_scalar::<f32>()?;
        println!("{quant:?}: layer output rel L2 vs f32 {err:.4}");
        assert!(err > 0.0 && err < bound, "{quant:?}: {err}");
        // The same through a BlockLinear, as the model holds it.
        let mut block = BlockLinear::native(candle_nn::Linear::new(w.clone(), Some(b.clone())));
        block.set_gguf_weight(QTensor::quantize(&w, quant)?)?;
        assert_eq!(
            block.forward(&x)?.flatten_all()?.to_vec1::<f32>()?,
            got.flatten_all()?.to_vec1::<f32>()?
        );
    }
    Ok(())
}

#[test]
fn the_12b_sizes_per_format() {
    let cfg = FluxConfig::kontext_dev();
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    for quant in [
        GgmlDType::Q8_0,
        GgmlDType::Q6K,
        GgmlDType::Q5K,
        GgmlDType::Q5_0,
        GgmlDType::Q4K,
        GgmlDType::Q4_0,
    ] {
        let (file, resident) = transformer_bytes(&cfg, quant, DType::BF16);
        println!(
            "12B {quant:?}: file {:.1} GB, resident {:.1} GiB (bf16 compute)",
            file as f64 / 1e9,
            gib(resident)
        );
        let (_, bf16) = transformer_bytes(&cfg, GgmlDType::BF16, DType::BF16);
        assert!(resident < bf16, "{quant:?}");
    }
    let (_, q8) = transformer_bytes(&cfg, GgmlDType::Q8_0, DType::BF16);
    // Q8_0 is 34 bytes per 32 weights: a little over half of bf16's 22.2 GiB.
    assert!((11.5..12.5).contains(&gib(q8)), "{}", gib(q8));
}

/// A GGUF file with the type id of tensor `name` overwritten by `type_id`.
fn patch_type(file: &Path, name: &str, type_id: u32) -> Result<()> {
    let mut bytes = std::fs::read(file)?;
    let at = bytes
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .expect("the tensor's name in the header");
    // name, n_dims (u32), dims (u64 each), then the type (u32).
    let dims_at = at + name.len();
    let n_dims = u32::from_le_bytes(bytes[dims_at..dims_at + 4].try_into()?) as usize;
    let type_at = dims_at + 4 + 8 * n_dims;
    bytes[type_at..type_at + 4].copy_from_slice(&type_id.to_le_bytes());
    std::fs::write(file, bytes)?;
    Ok(())
}

#[test]
fn bad_gguf_files_are_refused_by_name() -> Result<()> {
    let src = tiny_dir()?;

    // A type candle cannot read (IQ4_NL is ggml type 20).
    let (out, file) = converted(src.path(), GgmlDType::Q8_0)?;
    patch_type(&file, "double_blocks.0.img_attn.qkv.weight", 20)?;
    let text = check_dir(out.path()).to_string();
    assert!(
        text.contains("IQ4_NL") && text.contains(&*file.to_string_lossy()),
        "{text}"
    );

    // A missing tensor.
    let (out, file) = converted(src.path(), GgmlDType::Q8_0)?;
    let md = ModelDir::open(src.path())?;
    let missing = "double_blocks.0.txt_attn.proj.weight";
    let names: Vec<String> = kontext_engine::weights::keys::transformer_tensors(md.flux_config())
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n != missing)
        .collect();
    write_gguf(
        &file,
        &names,
        |n| {
            md.transformer_tensor(n, DType::F32, &Device::Cpu)
                .map_err(|e| kontext_engine::weights::WeightsError::Config {
                    file: "tiny".into(),
                    reason: e.to_string(),
                })
        },
        GgmlDType::Q8_0,
    )?;
    let text = check_dir(out.path()).to_string();
    assert!(text.contains(missing), "{text}");

    // --linear-precision fp8 on a GGUF transformer.
    let (out, _) = converted(src.path(), GgmlDType::Q8_0)?;
    let err = engine(out.path(), LinearPrecision::Fp8)
        .err()
        .expect("fp8 with GGUF must fail")
        .to_string();
    assert!(err.contains("--linear-precision fp8"), "{err}");

    // Not a GGUF file at all.
    let dir = tiny_dir()?;
    let bfl = dir
        .path()
        .join(kontext_engine::weights::BFL_TRANSFORMER_FILE);
    std::fs::rename(&bfl, dir.path().join("flux1-kontext-dev-Q8_0.gguf"))?;
    let text = check_dir(dir.path()).to_string();
    assert!(
        text.contains("flux1-kontext-dev-Q8_0.gguf") && text.contains("not a readable GGUF file"),
        "{text}"
    );

    // Two GGUF files: ambiguous.
    let (out, file) = converted(src.path(), GgmlDType::Q8_0)?;
    std::fs::copy(&file, out.path().join("second-Q4_0.gguf"))?;
    let text = check_dir(out.path()).to_string();
    assert!(text.contains("several GGUF transformers"), "{text}");
    Ok(())
}

/// The Python tools' interpreter `cargo xtask test` installs (`gguf` from PyPI among them).
fn python_tools() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/schemathesis-venv/bin/python")
}

/// llama.cpp's own reader (`gguf` on PyPI, tests/gguf/read_gguf.py) gets the same tensors from
/// our files as candle does: every tensor of the tiny model in Q8_0 and Q4_0, and 512-wide
/// layers in Q4_K.
#[test]
fn an_independent_reader_gets_the_same_tensors() -> Result<()> {
    let python = python_tools();
    assert!(
        python.is_file(),
        "{} is missing: run the suite with `cargo xtask test`, which installs the pinned Python \
         tools (gguf, schemathesis)",
        python.display()
    );
    let src = tiny_dir()?;
    let dev = Device::Cpu;
    let wide = tempfile::tempdir()?;
    let wide_file = wide.path().join("wide.gguf");
    let names: Vec<String> = ["a.weight", "b.weight", "c.weight", "d.bias"]
        .map(String::from)
        .to_vec();
    // Written in Q4_K, except what does not fit it (the 1-D bias stays F32).
    write_gguf(
        &wide_file,
        &names,
        |n| {
            let shape: &[usize] = if n.ends_with(".bias") {
                &[512]
            } else {
                &[8, 512]
            };
            Tensor::randn(0f32, 1.0, shape, &dev).map_err(|e| {
                kontext_engine::weights::WeightsError::Candle {
                    canonical: n.into(),
                    source: Box::new(e),
                }
            })
        },
        GgmlDType::Q4K,
    )?;
    let mut files = vec![wide_file];
    let mut dirs = vec![wide];
    for quant in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
        let (out, file) = converted(src.path(), quant)?;
        files.push(file);
        dirs.push(out);
    }
    for file in &files {
        let npz = file.with_extension("npz");
        let out = std::process::Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/gguf/read_gguf.py"))
            .arg(file)
            .arg(&npz)
            .output()?;
        assert!(
            out.status.success(),
            "read_gguf.py {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: std::collections::HashMap<String, Tensor> =
            Tensor::read_npz(&npz)?.into_iter().collect();
        let ours = kontext_engine::weights::gguf::GgufFile::open(file)?;
        let mut keys: Vec<&str> = ours.keys().collect();
        keys.sort();
        assert_eq!(keys.len(), theirs.len(), "{}", file.display());
        for key in keys {
            let mine = ours.load(key, DType::F32, &dev)?;
            let other = theirs
                .get(key)
                .unwrap_or_else(|| panic!("{key} missing in gguf's reading"));
            assert_eq!(mine.dims(), other.dims(), "{key}: shape");
            let diff = (&mine - other)?.abs()?.max_all()?.to_scalar::<f32>()?;
            let scale = mine.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-12);
            assert!(
                diff <= 1e-6 * scale,
                "{key} ({:?}) in {}: max |candle − gguf| {diff}",
                ours.ggml_dtype(key),
                file.display()
            );
        }
    }
    Ok(())
}
