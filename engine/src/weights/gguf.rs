//! GGUF transformer files, as the community conversions of FLUX.1 Kontext publish them
//! (city96's ComfyUI-GGUF `convert.py`, e.g. `flux1-kontext-dev-Q8_0.gguf`): BFL tensor names
//! (a ComfyUI `model.diffusion_model.` prefix is accepted), the linear weights in a ggml block
//! format (Q8_0 … Q4_K), the rest (biases, norms, small or odd-shaped matrices) in F32/F16/BF16.
//!
//! Reading uses candle's `gguf_file` (header) and `QTensor` (data). Tensors in a float type are
//! loaded like safetensors ones; quantized ones are either dequantized on load or, for the
//! transformer's linear layers, kept quantized and multiplied by candle's quantized matmul
//! (`ModelDir::flux`). `write_gguf` writes the same layout from canonical tensors (our test files
//! and `kontext-worker write-gguf`).

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::configs::{SIDECAR, Sidecar};
use super::{BFL_TRANSFORMER_FILE, ModelDir, WeightsError, keys};
use crate::EngineError;
use crate::config::FluxConfig;

/// ggml type ids candle cannot read, by name, so the error says which format it is
/// (ggml.h `enum ggml_type`).
const UNSUPPORTED_TYPES: &[(u32, &str)] = &[
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
];

/// One opened GGUF file: its header; tensor data is read per tensor.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

impl GgufFile {
    /// Reads the header (metadata and tensor table) of `path`.
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        let file = File::open(path).map_err(|source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let content = Content::read(&mut BufReader::new(file)).map_err(|e| {
            WeightsError::UnsupportedFormat {
                file: path.to_path_buf(),
                reason: header_error(&e),
            }
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.content.tensor_infos.keys().map(String::as_str)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.content.tensor_infos.contains_key(key)
    }

    /// Shape in candle's order (`(out, in)` for a weight; ggml stores it reversed).
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        Some(self.content.tensor_infos.get(key)?.shape.dims().to_vec())
    }

    pub fn ggml_dtype(&self, key: &str) -> Option<GgmlDType> {
        Some(self.content.tensor_infos.get(key)?.ggml_dtype)
    }

    /// Whether `key` is stored in a block (quantized) format.
    pub fn is_quantized(&self, key: &str) -> bool {
        self.ggml_dtype(key).is_some_and(is_block_format)
    }

    /// The tensor as stored, on `dev`.
    pub fn qtensor(&self, key: &str, dev: &Device) -> Result<QTensor, WeightsError> {
        let load = |source| WeightsError::Load {
            key: key.to_string(),
            file: self.path.clone(),
            source: Box::new(source),
        };
        let file = File::open(&self.path).map_err(|source| WeightsError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.content
            .tensor(&mut BufReader::new(file), key, dev)
            .map_err(load)
    }

    /// The tensor dequantized (or converted) to `dtype` on `dev`.
    pub fn load(&self, key: &str, dtype: DType, dev: &Device) -> Result<Tensor, WeightsError> {
        let q = self.qtensor(key, dev)?;
        q.dequantize(dev)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(|source| WeightsError::Load {
                key: key.to_string(),
                file: self.path.clone(),
                source: Box::new(source),
            })
    }
}

/// Block formats (everything but the float types).
pub fn is_block_format(t: GgmlDType) -> bool {
    !matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// candle's header error, with the ggml type named when it is one candle cannot read.
fn header_error(e: &candle_core::Error) -> String {
    // The first line: candle appends a backtrace when RUST_BACKTRACE is set.
    let text = e.to_string().lines().next().unwrap_or_default().to_owned();
    let unknown = text
        .split_once("unknown dtype for tensor ")
        .and_then(|(_, n)| n.trim().parse::<u32>().ok());
    match unknown {
        Some(id) => {
            let name = UNSUPPORTED_TYPES
                .iter()
                .find(|(i, _)| *i == id)
                .map_or("an unknown type", |(_, n)| n);
            format!(
                "a tensor is stored as ggml type {id} ({name}), which is not supported; \
                 supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, \
                 Q4_K, Q5_K, Q6_K, Q8_K (convert the file with one of these)"
            )
        }
        None => format!("not a readable GGUF file: {text}"),
    }
}

/// Writes transformer tensors as a GGUF file in the community layout: every 2-D `.weight` whose
/// rows fit `quant`'s block size and that has at least `MIN_QUANTIZED_ELEMS` elements in
/// `quant`, everything else in F32 (as `convert.py` keeps small and 1-D tensors at full
/// precision). `load` gives one tensor at a time, so only the quantized file is ever whole in
/// memory.
pub fn write_gguf(
    path: &Path,
    names: &[String],
    load: impl Fn(&str) -> Result<Tensor, WeightsError>,
    quant: GgmlDType,
) -> Result<(), WeightsError> {
    let candle = |canonical: &str, source| WeightsError::Candle {
        canonical: canonical.to_string(),
        source: Box::new(source),
    };
    let mut stored = Vec::with_capacity(names.len());
    for name in names {
        let t = load(name)?;
        let kind = if quantizable(name, t.dims(), quant) {
            quant
        } else {
            GgmlDType::F32
        };
        let f32 = t.to_dtype(DType::F32).map_err(|e| candle(name, e))?;
        stored.push((
            name.as_str(),
            QTensor::quantize(&f32, kind).map_err(|e| candle(name, e))?,
        ));
    }
    let arch = Value::String("flux".into());
    let metadata = [("general.architecture", &arch)];
    let refs: Vec<(&str, &QTensor)> = stored.iter().map(|(n, q)| (*n, q)).collect();
    let io = |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::io::BufWriter::new(File::create(path).map_err(io)?);
    gguf_file::write(&mut file, &metadata, &refs).map_err(|e| candle("<gguf file>", e))?;
    file.flush().map_err(io)
}

/// Writes the model in `src` to `out` with its transformer as `flux1-kontext-dev-<quant>.gguf`
/// (BFL names) and the `flux_config.json` sidecar it needs; every other component of `src` is
/// linked, not copied. Returns the GGUF file's path.
pub fn convert_dir(src: &ModelDir, out: &Path, quant: GgmlDType) -> Result<PathBuf, EngineError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WeightsError::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let names: Vec<String> = keys::transformer_tensors(src.flux_config())
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let file = out.join(format!("flux1-kontext-dev-{quant:?}.gguf"));
    write_gguf(
        &file,
        &names,
        |n| src.transformer.load(n, DType::F32, &Device::Cpu),
        quant,
    )?;
    let sidecar = Sidecar::for_configs(src.flux_config(), src.vae_config());
    let sidecar_path = out.join(SIDECAR);
    std::fs::write(&sidecar_path, sidecar.to_string()).map_err(io(&sidecar_path))?;
    let entries = std::fs::read_dir(src.root()).map_err(io(src.root()))?;
    for entry in entries {
        let entry = entry.map_err(io(src.root()))?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        let transformer = name_str == "transformer"
            || name_str == BFL_TRANSFORMER_FILE
            || name_str == SIDECAR
            || name_str.to_ascii_lowercase().ends_with(".gguf");
        let target = out.join(&name);
        if transformer || target.exists() {
            continue;
        }
        let source = std::fs::canonicalize(entry.path()).map_err(io(&entry.path()))?;
        std::os::unix::fs::symlink(&source, &target).map_err(io(&target))?;
    }
    Ok(file)
}

/// Smallest matrix `write_gguf` quantizes (convert.py's threshold for "small" tensors).
pub const MIN_QUANTIZED_ELEMS: usize = 1024;

fn quantizable(name: &str, dims: &[usize], quant: GgmlDType) -> bool {
    matches!(dims, [rows, cols] if name.ends_with(".weight")
        && cols % quant.block_size() == 0
        && rows * cols >= MIN_QUANTIZED_ELEMS)
}

/// Resident bytes of `n` weights in `t` (block formats pack `block_size` weights in
/// `type_size` bytes).
pub fn bytes_for(t: GgmlDType, n: u64) -> u64 {
    n / t.block_size() as u64 * t.type_size() as u64
}

/// Bytes of a transformer of `cfg` converted by `write_gguf` to `quant`: `(file, resident)`,
/// resident with the tensors left in F32 held in `compute` (what `ModelDir::flux` loads).
pub fn transformer_bytes(cfg: &FluxConfig, quant: GgmlDType, compute: DType) -> (u64, u64) {
    let (mut file, mut resident) = (0u64, 0u64);
    for (name, shape) in keys::transformer_tensors(cfg) {
        let n: u64 = shape.iter().map(|&d| d as u64).product();
        if quantizable(&name, &shape, quant) {
            file += bytes_for(quant, n);
            resident += bytes_for(quant, n);
        } else {
            file += 4 * n;
            resident += compute.size_in_bytes() as u64 * n;
        }
    }
    (file, resident)
}
