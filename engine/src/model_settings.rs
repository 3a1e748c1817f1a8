//! `kontext_model.json`: what a model directory says about itself beyond the component configs,
//! for models that differ from FLUX.1-Kontext-dev in how they are driven (the `shapes` model:
//! 96×96 native resolution, 32 text tokens). A directory without the file is FLUX.1-Kontext-dev:
//! 512 T5 tokens and BFL's 17 preferred resolutions.

use std::path::Path;

use serde::Deserialize;

use crate::weights::WeightsError;

/// The file's name in a model directory.
pub const SETTINGS_FILE: &str = "kontext_model.json";

/// T5 length of FLUX.1 Kontext (BFL `cli_kontext.py` `max_length=512`, diffusers
/// `FluxKontextPipeline.__call__` `max_sequence_length=512`).
pub const DEFAULT_MAX_SEQUENCE_LENGTH: usize = 512;

/// How the model is driven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSettings {
    /// Short name (`shapes`), when the file gives one.
    pub name: Option<String>,
    /// T5 tokens the prompt is padded or truncated to.
    pub max_sequence_length: usize,
    /// Size the model was trained at (default output size).
    pub native_resolution: Option<(u32, u32)>,
    /// Sizes a context image is snapped to; `None` = BFL's 17 Kontext resolutions.
    pub preferred_resolutions: Option<Vec<(u32, u32)>>,
    /// Denoising steps to use when a request gives none.
    pub default_steps: Option<u32>,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            name: None,
            max_sequence_length: DEFAULT_MAX_SEQUENCE_LENGTH,
            native_resolution: None,
            preferred_resolutions: None,
            default_steps: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    max_sequence_length: Option<usize>,
    #[serde(default)]
    native_resolution: Option<[u32; 2]>,
    #[serde(default)]
    preferred_resolutions: Option<Vec<[u32; 2]>>,
    #[serde(default)]
    default_steps: Option<u32>,
    /// Free text (provenance); not used.
    #[serde(default)]
    #[allow(dead_code)]
    trained_on: Option<String>,
}

fn check_size(file: &str, key: &str, [w, h]: [u32; 2]) -> Result<(u32, u32), WeightsError> {
    if w == 0 || h == 0 || w % 16 != 0 || h % 16 != 0 {
        return Err(WeightsError::Config {
            file: file.into(),
            reason: format!("{key} {w}x{h}: sides must be positive multiples of 16"),
        });
    }
    Ok((w, h))
}

impl ModelSettings {
    /// Reads `dir/kontext_model.json`; the FLUX.1-Kontext-dev defaults when it is absent.
    pub fn read(dir: &Path) -> Result<Self, WeightsError> {
        let path = dir.join(SETTINGS_FILE);
        if !path.is_file() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(&path).map_err(|source| WeightsError::Io {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses the file's text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, WeightsError> {
        let raw: RawSettings = serde_json::from_str(text).map_err(|e| WeightsError::Config {
            file: file.into(),
            reason: e.to_string(),
        })?;
        let max_sequence_length = raw
            .max_sequence_length
            .unwrap_or(DEFAULT_MAX_SEQUENCE_LENGTH);
        if !(2..=DEFAULT_MAX_SEQUENCE_LENGTH).contains(&max_sequence_length) {
            return Err(WeightsError::Config {
                file: file.into(),
                reason: format!(
                    "max_sequence_length {max_sequence_length} must be between 2 and {DEFAULT_MAX_SEQUENCE_LENGTH}"
                ),
            });
        }
        let native_resolution = raw
            .native_resolution
            .map(|s| check_size(file, "native_resolution", s))
            .transpose()?;
        let preferred_resolutions = match raw.preferred_resolutions {
            Some(list) if list.is_empty() => {
                return Err(WeightsError::Config {
                    file: file.into(),
                    reason: "preferred_resolutions is empty".into(),
                });
            }
            Some(list) => Some(
                list.into_iter()
                    .map(|s| check_size(file, "preferred_resolutions", s))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        Ok(Self {
            name: raw.name,
            max_sequence_length,
            native_resolution,
            preferred_resolutions,
            default_steps: raw.default_steps,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn absent_fields_are_the_kontext_dev_defaults() {
        let s = ModelSettings::parse("{}", "x").unwrap();
        assert_eq!(s, ModelSettings::default());
        assert_eq!(s.max_sequence_length, 512);
    }

    #[test]
    fn the_shapes_settings_parse() {
        let s = ModelSettings::parse(
            r#"{"name":"shapes","max_sequence_length":32,"native_resolution":[96,96],
                "preferred_resolutions":[[96,96]],"default_steps":28,"trained_on":"seed 0"}"#,
            "x",
        )
        .unwrap();
        assert_eq!(s.max_sequence_length, 32);
        assert_eq!(s.native_resolution, Some((96, 96)));
        assert_eq!(s.preferred_resolutions, Some(vec![(96, 96)]));
    }

    #[test]
    fn bad_values_name_the_key() {
        for (text, needle) in [
            (r#"{"max_sequence_length":0}"#, "max_sequence_length"),
            (r#"{"max_sequence_length":4096}"#, "max_sequence_length"),
            (r#"{"native_resolution":[90,96]}"#, "native_resolution"),
            (r#"{"preferred_resolutions":[]}"#, "preferred_resolutions"),
            (r#"{"resolution":[96,96]}"#, "resolution"),
        ] {
            let err = ModelSettings::parse(text, "kontext_model.json").unwrap_err();
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }
}
