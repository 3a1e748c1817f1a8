//! A set of safetensors files read as one: a single file, or the shards an HF
//! `*.safetensors.index.json` names; or one GGUF file (`gguf`). Safetensors files are
//! memory-mapped, so opening reads only the headers; tensor data is read when a tensor is
//! loaded, converted to the requested dtype on load.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::WeightsError;
use super::gguf::GgufFile;

/// One or more safetensors files with a name → file routing built from their headers, or one
/// GGUF file.
pub struct TensorFiles {
    /// What a user should look at when a key is missing: the file or the index.
    origin: PathBuf,
    files: Vec<(PathBuf, MmapedSafetensors)>,
    keys: HashMap<String, usize>,
    /// Set for a GGUF file (then `files` is empty).
    gguf: Option<GgufFile>,
}

impl std::fmt::Debug for TensorFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorFiles")
            .field("origin", &self.origin)
            .field("files", &self.files.len())
            .field("tensors", &self.keys.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct Index {
    weight_map: HashMap<String, String>,
}

impl TensorFiles {
    /// Opens one file.
    pub fn open_file(path: &Path) -> Result<Self, WeightsError> {
        if !path.is_file() {
            return Err(WeightsError::missing_file(path));
        }
        let st = mmap(path)?;
        let mut out = Self {
            origin: path.to_path_buf(),
            files: Vec::new(),
            keys: HashMap::new(),
            gguf: None,
        };
        out.push(path.to_path_buf(), st);
        Ok(out)
    }

    /// Opens one GGUF file (its header).
    pub fn open_gguf(path: &Path) -> Result<Self, WeightsError> {
        Ok(Self {
            origin: path.to_path_buf(),
            files: Vec::new(),
            keys: HashMap::new(),
            gguf: Some(GgufFile::open(path)?),
        })
    }

    /// The GGUF file, when that is what was opened.
    pub fn gguf(&self) -> Option<&GgufFile> {
        self.gguf.as_ref()
    }

    /// Opens a component directory: `index_name` (sharded) if present, else `single_name`.
    pub fn open_dir(dir: &Path, single_name: &str, index_name: &str) -> Result<Self, WeightsError> {
        let index_path = dir.join(index_name);
        if !index_path.is_file() {
            let single = dir.join(single_name);
            if single.is_file() {
                return Self::open_file(&single);
            }
            return Err(WeightsError::MissingFile {
                file: format!("{single_name} (or a sharded {index_name})"),
                dir: dir.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(&index_path).map_err(|source| WeightsError::Io {
            path: index_path.clone(),
            source,
        })?;
        let index: Index = serde_json::from_str(&text).map_err(|e| WeightsError::Config {
            file: index_path.display().to_string(),
            reason: e.to_string(),
        })?;
        let shards: BTreeSet<&String> = index.weight_map.values().collect();
        let mut out = Self {
            origin: index_path.clone(),
            files: Vec::new(),
            keys: HashMap::new(),
            gguf: None,
        };
        for shard in shards {
            let path = dir.join(shard);
            if !path.is_file() {
                return Err(WeightsError::MissingFile {
                    file: format!("{shard} (a shard named by {index_name})"),
                    dir: dir.to_path_buf(),
                });
            }
            let st = mmap(&path)?;
            out.push(path, st);
        }
        for (key, shard) in &index.weight_map {
            if !out.keys.contains_key(key) {
                return Err(WeightsError::MissingKey {
                    key: key.clone(),
                    canonical: None,
                    file: format!("{} (the index places it there)", dir.join(shard).display()),
                });
            }
        }
        Ok(out)
    }

    fn push(&mut self, path: PathBuf, st: MmapedSafetensors) {
        let i = self.files.len();
        for (name, _) in st.tensors() {
            self.keys.insert(name, i);
        }
        self.files.push((path, st));
    }

    /// The file or index a missing key should be reported against.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    pub fn contains(&self, key: &str) -> bool {
        match &self.gguf {
            Some(g) => g.contains(key),
            None => self.keys.contains_key(key),
        }
    }

    pub fn keys(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match &self.gguf {
            Some(g) => Box::new(g.keys()),
            None => Box::new(self.keys.keys().map(String::as_str)),
        }
    }

    /// The stored dtype as safetensors names it (`BF16`, `F32`, `F8_E4M3`, …) or, in a GGUF
    /// file, as candle names the ggml type (`Q8_0`, `Q4K`, `F16`, …), from the header.
    pub fn dtype(&self, key: &str) -> Option<String> {
        if let Some(g) = &self.gguf {
            return g.ggml_dtype(key).map(|t| format!("{t:?}"));
        }
        let (_, st) = &self.files[*self.keys.get(key)?];
        st.get(key).ok().map(|v| format!("{:?}", v.dtype()))
    }

    /// The file that holds `key`.
    pub fn path_of(&self, key: &str) -> Option<&Path> {
        if let Some(g) = &self.gguf {
            return g.contains(key).then(|| g.path());
        }
        Some(self.files[*self.keys.get(key)?].0.as_path())
    }

    /// The files read, in order.
    pub fn paths(&self) -> Box<dyn Iterator<Item = &Path> + '_> {
        match &self.gguf {
            Some(g) => Box::new(std::iter::once(g.path())),
            None => Box::new(self.files.iter().map(|(p, _)| p.as_path())),
        }
    }

    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        if let Some(g) = &self.gguf {
            return g.shape(key);
        }
        let (_, st) = &self.files[*self.keys.get(key)?];
        st.get(key).ok().map(|v| v.shape().to_vec())
    }

    /// Loads `key` onto `dev` converted to `dtype`. `canonical` names the tensor the caller
    /// asked for, for the error message.
    pub fn load(
        &self,
        key: &str,
        canonical: &str,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor, WeightsError> {
        if let Some(g) = self.gguf.as_ref().filter(|g| g.contains(key)) {
            return g.load(key, dtype, dev);
        }
        let Some(&i) = self.keys.get(key) else {
            return Err(WeightsError::MissingKey {
                key: key.to_string(),
                canonical: (key != canonical).then(|| canonical.to_string()),
                file: self.origin.display().to_string(),
            });
        };
        let (path, st) = &self.files[i];
        // FP8 tensors are cast on the host before they go to a GPU: candle 0.11.1 names its CUDA
        // casts from and to F8E4M3 `cast_*_f8e4m3` but compiles them as `cast_*_f8_e4m3`, so any
        // such cast on CUDA fails with CUDA_ERROR_NOT_FOUND (seen on an H200, docs/gpu.md §5).
        let fp8_on_gpu = !dev.is_cpu()
            && st
                .get(key)
                .is_ok_and(|v| v.dtype() == safetensors::Dtype::F8_E4M3);
        let t = if fp8_on_gpu {
            st.load(key, &Device::Cpu)
                .and_then(|t| t.to_dtype(dtype))
                .and_then(|t| t.to_device(dev))
        } else {
            st.load(key, dev).and_then(|t| t.to_dtype(dtype))
        };
        let t = t.map_err(|source| WeightsError::Load {
            key: key.to_string(),
            file: path.clone(),
            source: Box::new(source),
        })?;
        Ok(t)
    }
}

#[allow(unsafe_code)]
fn mmap(path: &Path) -> Result<MmapedSafetensors, WeightsError> {
    // SAFETY: the mapping is read-only and the weight files are not modified while the worker
    // runs (they are model files in a directory the worker only reads). A file truncated under
    // us would fault; that is the documented risk of memmap2, accepted to avoid copying 24 GB.
    unsafe { MmapedSafetensors::new(path) }.map_err(|source| WeightsError::Load {
        key: "<header>".into(),
        file: path.to_path_buf(),
        source: Box::new(source),
    })
}
