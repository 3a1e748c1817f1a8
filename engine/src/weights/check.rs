//! `check-weights`: a model directory validated from its safetensors headers alone, without
//! reading any tensor data: every tensor the engine will ask for (name, shape, dtype, the shard
//! that holds it), for the transformer and the autoencoder through the loader's own mapping
//! table (`keys`, `backend`), for the text encoders by building candle's T5 and CLIP models on
//! a backend that records what they request. Every problem is collected (not only the first),
//! tensors the engine never reads are listed as unexpected, and the resident memory of the
//! weights is computed per device and dtype. The worker runs this before loading (`loader`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use super::backend::{CanonicalBackend, Mapping, scale_key_of};
use super::files::TensorFiles;
use super::{
    HF_INDEX, HF_WEIGHTS, Layout, WeightsError, infer, keys, open_transformer, open_vae,
    read_config, read_sidecar,
};
use crate::config::{FluxConfig, VaeConfig};
use crate::text;

/// dtypes the loader converts from (safetensors' names). E4M3 weights are upcast, after their
/// `scale_weight` is applied when the file has one (backend.rs `load_stored`).
pub const SUPPORTED_DTYPES: [&str; 4] = ["F32", "F16", "BF16", "F8_E4M3"];

/// The marker tensor of ComfyUI's scaled-FP8 files (empty; nothing to read).
const SCALED_FP8_MARKER: &str = "scaled_fp8";

/// What was found for one component.
#[derive(Debug)]
pub struct ComponentCheck {
    /// `transformer`, `autoencoder`, `t5 encoder`, `clip text`, `tokenizers`.
    pub name: &'static str,
    /// How its files were read (layout, prefix, shards).
    pub layout: String,
    pub files: Vec<PathBuf>,
    /// Tensors the engine reads (canonical names) with their shapes.
    pub required: Vec<(String, Vec<usize>)>,
    /// Stored dtypes and how many tensors have each.
    pub dtypes: BTreeMap<String, usize>,
    /// Bytes of the stored tensors the engine reads (the files' data, from their headers).
    pub stored_bytes: u64,
    pub problems: Vec<WeightsError>,
    /// Stored tensors the engine never reads.
    pub unexpected: Vec<String>,
    /// GGUF tensors in a block format: `(elements, bytes)`; they stay in it when resident.
    pub block_format: (u64, u64),
}

impl ComponentCheck {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            layout: "-".into(),
            files: Vec::new(),
            required: Vec::new(),
            dtypes: BTreeMap::new(),
            stored_bytes: 0,
            problems: Vec::new(),
            unexpected: Vec::new(),
            block_format: (0, 0),
        }
    }

    pub fn parameters(&self) -> u64 {
        self.required.iter().map(|(_, s)| elements(s)).sum()
    }

    /// Elements of the transformer blocks' linear weights (what `--linear-precision fp8` stores
    /// in one byte each) and their output rows (one f32 scale each).
    pub fn block_linear_elements(&self) -> (u64, u64) {
        self.required
            .iter()
            .filter(|(name, _)| is_block_linear_weight(name))
            .fold((0, 0), |(e, r), (_, shape)| {
                (
                    e + elements(shape),
                    r + shape.first().copied().unwrap_or(0) as u64,
                )
            })
    }
}

/// The result of checking a directory.
#[derive(Debug)]
pub struct CheckReport {
    pub root: PathBuf,
    pub components: Vec<ComponentCheck>,
}

impl CheckReport {
    pub fn problems(&self) -> impl Iterator<Item = (&'static str, &WeightsError)> {
        self.components
            .iter()
            .flat_map(|c| c.problems.iter().map(move |p| (c.name, p)))
    }

    pub fn is_ok(&self) -> bool {
        self.problems().next().is_none()
    }

    pub fn component(&self, name: &str) -> Option<&ComponentCheck> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// Checks `root` from headers only; never fails, it reports.
pub fn check_dir(root: &Path) -> CheckReport {
    let mut components = vec![
        check_transformer(root),
        check_vae(root),
        check_hf_encoder(root, "t5 encoder", "text_encoder_2"),
        check_hf_encoder(root, "clip text", "text_encoder"),
        check_tokenizers(root),
    ];
    if !root.is_dir() {
        components.truncate(1);
        components[0].problems = vec![WeightsError::NoComponent {
            what: "model directory",
            dir: root.to_path_buf(),
            looked_for: "an existing directory".into(),
        }];
    }
    CheckReport {
        root: root.to_path_buf(),
        components,
    }
}

fn check_transformer(root: &Path) -> ComponentCheck {
    let mut c = ComponentCheck::new("transformer");
    let (backend, layout) = match open_transformer(root) {
        Ok(found) => found,
        Err(e) => {
            c.problems.push(e);
            return c;
        }
    };
    let config = match layout {
        Layout::Bfl => read_sidecar(root).and_then(|s| infer::flux_config(&backend, &s)),
        Layout::Diffusers => read_config(&root.join("transformer"))
            .and_then(|(text, file)| super::configs::flux_from_diffusers(&text, &file)),
    };
    c.layout = describe(&backend, layout);
    match config {
        Ok(cfg) => check_canonical(&mut c, &backend, &keys::transformer_tensors(&cfg)),
        Err(e) => c.problems.push(e),
    }
    c
}

fn check_vae(root: &Path) -> ComponentCheck {
    let mut c = ComponentCheck::new("autoencoder");
    let (files, layout) = match open_vae(root) {
        Ok(found) => found,
        Err(e) => {
            c.problems.push(e);
            return c;
        }
    };
    let (backend, config) = match layout {
        Layout::Bfl => {
            let b = CanonicalBackend::new(
                files,
                Mapping::Canonical {
                    prefix: String::new(),
                },
            );
            let cfg = read_sidecar(root).and_then(|s| infer::vae_config(&b, &s));
            (b, cfg)
        }
        Layout::Diffusers => match read_config(&root.join("vae"))
            .and_then(|(text, file)| super::configs::vae_from_diffusers(&text, &file))
        {
            Ok(cfg) => {
                let levels = cfg.ch_mult.len();
                (
                    CanonicalBackend::new(files, Mapping::DiffusersVae { levels }),
                    Ok(cfg),
                )
            }
            Err(e) => (
                CanonicalBackend::new(files, Mapping::DiffusersVae { levels: 0 }),
                Err(e),
            ),
        },
    };
    c.layout = describe(&backend, layout);
    match config {
        Ok(cfg) => check_canonical(&mut c, &backend, &keys::vae_tensors(&cfg)),
        Err(e) => c.problems.push(e),
    }
    c
}

/// Presence, shape and dtype of every canonical tensor; then the stored keys nobody reads.
fn check_canonical(
    c: &mut ComponentCheck,
    backend: &CanonicalBackend,
    expected: &[(String, Vec<usize>)],
) {
    let files = backend.files();
    c.files = files.paths().map(Path::to_path_buf).collect();
    let mut read: BTreeSet<String> = BTreeSet::new();
    for (canonical, shape) in expected {
        c.required.push((canonical.clone(), shape.clone()));
        let stored = match backend.stored_keys(canonical) {
            Ok(k) => k,
            Err(e) => {
                c.problems.push(e);
                continue;
            }
        };
        let mut present = true;
        for key in &stored {
            read.insert(key.clone());
            if !files.contains(key) {
                present = false;
                c.problems.push(WeightsError::MissingKey {
                    key: key.clone(),
                    canonical: (key != canonical).then(|| canonical.clone()),
                    file: files.origin().display().to_string(),
                });
            } else {
                check_dtype(c, files, key);
                check_fp8_scale(c, files, key, &mut read);
            }
        }
        if !present {
            continue;
        }
        match backend.shape(canonical) {
            Ok(found) if &found == shape => {}
            Ok(found) => c.problems.push(WeightsError::shape(
                canonical,
                &backend.stored_as(canonical),
                stored
                    .first()
                    .and_then(|k| files.path_of(k))
                    .unwrap_or(files.origin()),
                format!("{shape:?}"),
                format!("{found:?}"),
            )),
            Err(e) => c.problems.push(e),
        }
    }
    c.unexpected = files
        .keys()
        .filter(|k| !read.contains(*k) && !k.ends_with(SCALED_FP8_MARKER))
        .map(str::to_owned)
        .collect();
    c.unexpected.sort();
}

/// A scaled-FP8 weight's `scale_weight` is read with it and must be one value or one per row;
/// its `scale_input` (ComfyUI's static activation scale for FP8 matmuls) is accepted and unused:
/// our FP8 path scales activations per token at run time (flux/linear.rs).
fn check_fp8_scale(
    c: &mut ComponentCheck,
    files: &TensorFiles,
    key: &str,
    read: &mut BTreeSet<String>,
) {
    let Some(scale) = scale_key_of(key).filter(|s| files.contains(s)) else {
        return;
    };
    if let Some(input) = key
        .strip_suffix(".weight")
        .map(|s| format!("{s}.scale_input"))
        && files.contains(&input)
    {
        read.insert(input);
    }
    let rows = files
        .shape(key)
        .and_then(|s| s.first().copied())
        .unwrap_or(1) as u64;
    let n = files.shape(&scale).map_or(0, |s| elements(&s));
    if n != 1 && n != rows {
        c.problems.push(WeightsError::shape(
            key,
            &scale,
            files.path_of(&scale).unwrap_or(files.origin()),
            format!("one scale, or one per row ({rows})"),
            format!("{:?}", files.shape(&scale).unwrap_or_default()),
        ));
    }
    check_dtype(c, files, &scale);
    read.insert(scale);
}

fn check_dtype(c: &mut ComponentCheck, files: &TensorFiles, key: &str) {
    if let Some(g) = files.gguf() {
        // Every type candle reads is supported (the header read refused the others).
        if let Some(t) = g.ggml_dtype(key) {
            let n = files.shape(key).map_or(0, |s| elements(&s));
            let bytes = super::gguf::bytes_for(t, n);
            c.stored_bytes += bytes;
            if super::gguf::is_block_format(t) {
                c.block_format.0 += n;
                c.block_format.1 += bytes;
            }
            *c.dtypes.entry(format!("{t:?}")).or_default() += 1;
        }
        return;
    }
    let dtype = files.dtype(key).unwrap_or_else(|| "?".into());
    let size = match dtype.as_str() {
        "F32" => 4,
        "F16" | "BF16" => 2,
        _ => 1,
    };
    c.stored_bytes += size * files.shape(key).map_or(0, |s| elements(&s));
    if !SUPPORTED_DTYPES.contains(&dtype.as_str()) {
        c.problems.push(WeightsError::UnsupportedDtype {
            key: key.to_string(),
            dtype: dtype.clone(),
            file: files.path_of(key).unwrap_or(files.origin()).to_path_buf(),
        });
    }
    *c.dtypes.entry(dtype).or_default() += 1;
}

fn describe(backend: &CanonicalBackend, layout: Layout) -> String {
    let files = backend.files().paths().count();
    let shards = if files > 1 {
        format!(", {files} shards")
    } else {
        String::new()
    };
    match (layout, backend.mapping()) {
        (Layout::Bfl, Mapping::Canonical { prefix }) if !prefix.is_empty() => {
            format!("BFL single file, keys prefixed `{prefix}`{shards}")
        }
        (Layout::Bfl, _) => format!("BFL single file{shards}"),
        (Layout::Diffusers, _) => format!("diffusers{shards}"),
    }
}

/// An HF encoder folder: its config, then what candle's model requests, checked against the files.
fn check_hf_encoder(root: &Path, name: &'static str, folder: &str) -> ComponentCheck {
    let mut c = ComponentCheck::new(name);
    let dir = root.join(folder);
    let opened = TensorFiles::open_dir(&dir, HF_WEIGHTS, HF_INDEX)
        .and_then(|files| read_config(&dir).map(|cfg| (files, cfg)));
    let (files, (text, file)) = match opened {
        Ok(found) => found,
        Err(e) => {
            c.problems.push(e);
            return c;
        }
    };
    let files = Arc::new(files);
    c.layout = match files.paths().count() {
        1 => "HF".into(),
        n => format!("HF, {n} shards"),
    };
    let backend = CanonicalBackend::new(
        Arc::clone(&files),
        Mapping::Canonical {
            prefix: String::new(),
        },
    );
    let recorder = Recorder {
        backend: backend.clone(),
        requested: Arc::default(),
    };
    let requested = Arc::clone(&recorder.requested);
    let vb = VarBuilder::from_backend(Box::new(recorder), DType::F32, Device::Cpu);
    let built = if folder == "text_encoder_2" {
        text::t5_config(&text, &file).and_then(|cfg| {
            candle_transformers::models::t5::T5EncoderModel::load(vb, &cfg)
                .map(drop)
                .map_err(|e| build_error(name, e))
        })
    } else {
        text::clip_config(&text, &file).and_then(|cfg| {
            text::clip_model(vb, &cfg)
                .map(drop)
                .map_err(|e| build_error(name, e))
        })
    };
    if let Err(e) = built {
        c.problems.push(e);
    }
    let expected = requested
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    check_canonical(&mut c, &backend, &expected);
    c
}

fn build_error(name: &str, e: candle_core::Error) -> WeightsError {
    WeightsError::Candle {
        canonical: name.to_string(),
        source: Box::new(e),
    }
}

/// Records every tensor a model requests and hands out zero-strided views of one zero, so a
/// 4.7B-parameter encoder is "built" without memory; `contains_tensor` answers from the files,
/// so the model takes the same branches (tied embeddings, name prefixes) it takes when loading.
struct Recorder {
    backend: CanonicalBackend,
    requested: Arc<Mutex<Requested>>,
}

/// Tensor names and shapes, in the order a model asked for them.
type Requested = Vec<(String, Vec<usize>)>;

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name.to_string(), s.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let shape = self.backend.shape(name).map_err(candle_core::Error::wrap)?;
        self.get(Shape::from(shape), name, Init::Const(0.0), dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.backend.contains(name)
    }
}

/// The files `text::tokenize::PromptTokenizers::load` reads (presence only).
fn check_tokenizers(root: &Path) -> ComponentCheck {
    let mut c = ComponentCheck::new("tokenizers");
    c.layout = "HF".into();
    let clip = root.join("tokenizer");
    let t5 = root.join("tokenizer_2");
    let mut need = |path: PathBuf, what: &str| {
        if path.is_file() {
            c.files.push(path);
        } else {
            c.problems.push(WeightsError::MissingFile {
                file: what.to_string(),
                dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            });
        }
    };
    need(clip.join("tokenizer_config.json"), "tokenizer_config.json");
    if !clip.join("tokenizer.json").is_file() {
        need(clip.join("vocab.json"), "vocab.json (or tokenizer.json)");
        need(clip.join("merges.txt"), "merges.txt (or tokenizer.json)");
    } else {
        need(clip.join("tokenizer.json"), "tokenizer.json");
    }
    need(t5.join("tokenizer.json"), "tokenizer.json");
    need(t5.join("tokenizer_config.json"), "tokenizer_config.json");
    c
}

fn elements(shape: &[usize]) -> u64 {
    shape.iter().map(|d| *d as u64).product()
}

/// BFL names of the linear weights inside the double and single blocks (flux/linear.rs).
pub fn is_block_linear_weight(name: &str) -> bool {
    (name.starts_with("double_blocks.") || name.starts_with("single_blocks."))
        && name.ends_with(".weight")
        && !name.contains(".norm.")
}

/// The canonical (BFL) transformer and autoencoder tensors of FLUX.1-Kontext-dev with their
/// shapes, as the loader expects them (`check-weights --print-canonical`).
pub fn canonical_kontext_dev() -> serde_json::Value {
    serde_json::json!({
        "transformer": keys::transformer_tensors(&FluxConfig::kontext_dev()),
        "vae": keys::vae_tensors(&VaeConfig::kontext_dev()),
    })
}
