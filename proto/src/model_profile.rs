//! The sizes a model is driven at, as the coordinator needs them for validation: read from the
//! `kontext_model.json` a model directory carries when it was not trained at FLUX.1-Kontext-dev's
//! resolutions (e.g. `models/shapes`, 96×96). The engine reads the same file with every field
//! checked strictly; this view takes the fields validation needs and ignores the rest.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file's name in a model directory.
pub const MODEL_SETTINGS_FILE: &str = "kontext_model.json";

/// A model's output sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelProfile {
    /// Short name (`shapes`), when the file gives one.
    pub name: Option<String>,
    /// Size the model was trained at: the default output size.
    pub native_resolution: (u32, u32),
    /// Sizes a context image is snapped to (never empty).
    pub preferred_resolutions: Vec<(u32, u32)>,
}

/// Why a model profile could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModelProfileError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Deserialize)]
struct RawProfile {
    #[serde(default)]
    name: Option<String>,
    native_resolution: Option<[u32; 2]>,
    #[serde(default)]
    preferred_resolutions: Option<Vec<[u32; 2]>>,
}

impl ModelProfile {
    /// Reads `path/kontext_model.json` (or `path` itself when it is the file). `Ok(None)` for a
    /// directory without the file: a FLUX.1-Kontext-dev layout, driven at the default limits.
    pub fn read(path: &Path) -> Result<Option<Self>, ModelProfileError> {
        let file = if path.is_dir() {
            path.join(MODEL_SETTINGS_FILE)
        } else {
            path.to_path_buf()
        };
        if path.is_dir() && !file.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&file).map_err(|source| ModelProfileError::Io {
            path: file.clone(),
            source,
        })?;
        Self::parse(&text, &file).map(Some)
    }

    /// Parses the file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ModelProfileError> {
        let raw: RawProfile =
            serde_json::from_str(text).map_err(|source| ModelProfileError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        let invalid = |reason: String| ModelProfileError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let [w, h] = raw
            .native_resolution
            .ok_or_else(|| invalid("native_resolution is missing".into()))?;
        let preferred: Vec<(u32, u32)> = raw
            .preferred_resolutions
            .unwrap_or_else(|| vec![[w, h]])
            .into_iter()
            .map(|[w, h]| (w, h))
            .collect();
        if preferred.is_empty() {
            return Err(invalid("preferred_resolutions is empty".into()));
        }
        for &(w, h) in preferred.iter().chain([&(w, h)]) {
            let m = crate::resolution::SIDE_MULTIPLE;
            if w == 0 || h == 0 || w % m != 0 || h % m != 0 {
                return Err(invalid(format!(
                    "size {w}x{h}: sides must be positive multiples of {m}"
                )));
            }
        }
        Ok(Self {
            name: raw.name,
            native_resolution: (w, h),
            preferred_resolutions: preferred,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Limits;

    #[test]
    fn a_small_model_lowers_sizes_and_brings_its_snap_list() {
        let text = r#"{"name":"shapes","max_sequence_length":32,"native_resolution":[96,96],
            "preferred_resolutions":[[96,96],[128,64],[64,128]],"default_steps":20}"#;
        let p = ModelProfile::parse(text, Path::new("m.json")).expect("valid");
        assert_eq!(p.native_resolution, (96, 96));
        let limits = Limits::for_model(&p);
        assert_eq!(limits.min_side, 64);
        assert_eq!(limits.default_generate_size, (96, 96));
        assert_eq!(limits.aspect_ratio_area, 96 * 96);
        assert_eq!(
            limits.preferred_resolutions,
            vec![(96, 96), (128, 64), (64, 128)]
        );
        assert_eq!(limits.max_side, Limits::default().max_side);
    }

    #[test]
    fn bad_sizes_name_the_file_and_the_size() {
        let e = ModelProfile::parse(r#"{"native_resolution":[90,96]}"#, Path::new("m.json"))
            .expect_err("90 is not a multiple of 16");
        let msg = e.to_string();
        assert!(msg.contains("m.json") && msg.contains("90x96"), "{msg}");
        let e = ModelProfile::parse(r#"{"name":"x"}"#, Path::new("m.json")).expect_err("no size");
        assert!(e.to_string().contains("native_resolution"), "{e}");
    }

    #[test]
    fn a_directory_without_the_file_is_the_default_model() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(ModelProfile::read(dir.path()).expect("readable"), None);
    }
}
