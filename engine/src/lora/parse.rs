//! A LoRA safetensors file read into low-rank parts of the transformer's canonical layers.
//!
//! Key layouts, as diffusers' `lora_conversion_utils.py` reads them:
//! - PEFT / diffusers: `<module>.lora_A.weight` `(r, in)`, `<module>.lora_B.weight` `(out, r)`;
//!   older diffusers files `<module>.lora.down.weight` / `.lora.up.weight`;
//! - kohya (sd-scripts, `_convert_kohya_flux_lora_to_diffusers`): `lora_unet_<module with _>`
//!   `.lora_down.weight`, `.lora_up.weight`, `.alpha`;
//! - XLabs (`_convert_xlabs_flux_lora_to_diffusers`): `double_blocks.N.processor.qkv_lora1`
//!   `.down.weight` / `.up.weight`.
//!
//! A module's delta is `ΔW = (alpha / r) · up · down`, alpha from its `.alpha` tensor, else from
//! diffusers' `lora_adapter_metadata` header entry, else `r` (scale 1, as diffusers loads a file
//! without either). Every tensor must be understood: a module the transformer lacks, a DoRA
//! magnitude or a bias delta is an error naming the key, never silently dropped — except
//! text-encoder modules, which are listed as skipped (this engine applies LoRAs to the
//! transformer only).

use std::collections::BTreeMap;

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;

use super::LoraError;
use super::names::{Target, TargetMap, is_text_encoder};

/// The key layout a file was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFormat {
    Peft,
    Kohya,
    XLabs,
    /// Older diffusers files (`.lora.down` / `.lora.up`).
    DiffusersLegacy,
}

impl LoraFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Peft => "peft",
            Self::Kohya => "kohya",
            Self::XLabs => "xlabs",
            Self::DiffusersLegacy => "diffusers-legacy",
        }
    }
}

/// One module's low-rank delta, f32 on the engine's device.
#[derive(Debug, Clone)]
pub struct Part {
    pub target: Target,
    /// `(r, in)`.
    pub down: Tensor,
    /// `(rows, r)`, `alpha / r` already folded in.
    pub up: Tensor,
}

/// A parsed LoRA file.
#[derive(Debug, Clone)]
pub struct LoraFile {
    pub format: LoraFormat,
    pub parts: Vec<Part>,
    /// Text-encoder modules in the file, not applied.
    pub skipped: Vec<String>,
    /// Bytes its tensors hold on the device.
    pub bytes: usize,
}

#[derive(Default)]
struct Module {
    down: Option<(String, Tensor)>,
    up: Option<(String, Tensor)>,
    alpha: Option<f64>,
}

/// `(module, role, format)` of a tensor name.
fn split_key(key: &str) -> Option<(&str, Role, LoraFormat)> {
    const SUFFIXES: [(&str, Role, LoraFormat); 9] = [
        (".lora_A.weight", Role::Down, LoraFormat::Peft),
        (".lora_B.weight", Role::Up, LoraFormat::Peft),
        (".lora_down.weight", Role::Down, LoraFormat::Kohya),
        (".lora_up.weight", Role::Up, LoraFormat::Kohya),
        (".lora.down.weight", Role::Down, LoraFormat::DiffusersLegacy),
        (".lora.up.weight", Role::Up, LoraFormat::DiffusersLegacy),
        (".down.weight", Role::Down, LoraFormat::XLabs),
        (".up.weight", Role::Up, LoraFormat::XLabs),
        (".alpha", Role::Alpha, LoraFormat::Kohya),
    ];
    SUFFIXES
        .iter()
        .find_map(|(s, role, f)| key.strip_suffix(s).map(|m| (m, *role, *f)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Down,
    Up,
    Alpha,
}

/// alpha of diffusers' `lora_adapter_metadata` header entry (a JSON object with `lora_alpha`
/// and `r`, or the same under `transformer.`); `None` when absent.
fn metadata_alpha(
    st_metadata: Option<&std::collections::HashMap<String, String>>,
) -> Result<Option<f64>, LoraError> {
    let Some(raw) = st_metadata.and_then(|m| m.get("lora_adapter_metadata")) else {
        return Ok(None);
    };
    let meta: serde_json::Value =
        serde_json::from_str(raw).map_err(|source| LoraError::Metadata { source })?;
    let field = |name: &str| {
        meta.get(name)
            .or_else(|| meta.get(format!("transformer.{name}")))
            .cloned()
    };
    for pattern in ["alpha_pattern", "rank_pattern"] {
        if field(pattern).is_some_and(|p| p.as_object().is_some_and(|o| !o.is_empty())) {
            return Err(LoraError::Unsupported {
                key: "lora_adapter_metadata".into(),
                what: "per-module alpha_pattern / rank_pattern",
            });
        }
    }
    Ok(field("lora_alpha").and_then(|a| a.as_f64()))
}

impl LoraFile {
    /// Reads `bytes` (a safetensors file) for the transformer `map` describes, onto `device`.
    pub fn parse(bytes: &[u8], map: &TargetMap, device: &Device) -> Result<Self, LoraError> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|source| LoraError::NotSafetensors { source })?;
        let default_alpha = metadata_alpha(header.metadata().as_ref())?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|source| LoraError::NotSafetensors { source })?;
        let mut modules: BTreeMap<String, Module> = BTreeMap::new();
        let mut skipped = Vec::new();
        let mut format = None;
        for (key, view) in st.tensors() {
            let Some((module, role, key_format)) = split_key(&key) else {
                if is_text_encoder(&key) {
                    skipped.push(key);
                    continue;
                }
                return Err(LoraError::Unsupported {
                    key,
                    what: "tensor (only lora_A/lora_B, lora_down/lora_up, down/up and alpha are read; DoRA and bias deltas are not supported)",
                });
            };
            if is_text_encoder(module) {
                skipped.push(module.to_string());
                continue;
            }
            if role != Role::Alpha {
                format.get_or_insert(key_format);
            }
            if !matches!(
                view.dtype(),
                safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16
            ) {
                return Err(LoraError::Dtype {
                    key,
                    dtype: format!("{:?}", view.dtype()),
                });
            }
            let tensor = view.load(&Device::Cpu)?.to_dtype(DType::F32)?;
            let entry = modules.entry(module.to_string()).or_default();
            match role {
                Role::Down => entry.down = Some((key, tensor)),
                Role::Up => entry.up = Some((key, tensor)),
                Role::Alpha => {
                    let values = tensor.flatten_all()?.to_vec1::<f32>()?;
                    let [alpha] = values[..] else {
                        return Err(LoraError::Shape {
                            key,
                            expected: "one value".into(),
                            found: tensor.dims().to_vec(),
                        });
                    };
                    entry.alpha = Some(f64::from(alpha));
                }
            }
        }
        skipped.sort();
        skipped.dedup();
        let mut parts = Vec::with_capacity(modules.len());
        let mut total = 0;
        for (module, m) in modules {
            let target = map
                .resolve(&module)
                .ok_or_else(|| LoraError::UnknownModule {
                    module: module.clone(),
                })?;
            let missing = |what| LoraError::Incomplete {
                module: module.clone(),
                missing: what,
            };
            let (down_key, down) = m.down.ok_or_else(|| missing("the down (lora_A) matrix"))?;
            let (up_key, up) = m.up.ok_or_else(|| missing("the up (lora_B) matrix"))?;
            let rank = down.dims().first().copied().unwrap_or(0);
            if down.dims() != [rank, target.in_dim] || rank == 0 {
                return Err(LoraError::Shape {
                    key: down_key,
                    expected: format!("[rank, {}]", target.in_dim),
                    found: down.dims().to_vec(),
                });
            }
            let rows = target.rows.len();
            if up.dims() != [rows, rank] {
                return Err(LoraError::Shape {
                    key: up_key,
                    expected: format!("[{rows}, {rank}]"),
                    found: up.dims().to_vec(),
                });
            }
            let alpha = m.alpha.or(default_alpha).unwrap_or(rank as f64);
            let up = (up * (alpha / rank as f64))?;
            total += (down.elem_count() + up.elem_count()) * 4;
            parts.push(Part {
                target,
                down: down.to_device(device)?,
                up: up.to_device(device)?,
            });
        }
        let Some(format) = format.filter(|_| !parts.is_empty()) else {
            return Err(LoraError::Empty {
                skipped: skipped.len(),
            });
        };
        Ok(Self {
            format,
            parts,
            skipped,
            bytes: total,
        })
    }
}
