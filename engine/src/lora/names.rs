//! Which linear layer of the transformer a LoRA module name means, in every naming scheme the
//! formats use: the canonical (BFL) names, diffusers' names (PEFT files), kohya's
//! underscore-joined names of either (`lora_unet_double_blocks_0_img_attn_qkv`,
//! `lora_transformer_transformer_blocks_0_attn_to_q`) and XLabs' attention processors.
//!
//! The table is built from the loader's own mapping (`weights::keys::transformer_source`), so a
//! diffusers module that is one row block of a fused canonical weight (`attn.to_q` of `qkv`,
//! `proj_mlp` of `linear1`) maps to exactly the rows the loader fills from it, and `norm_out.linear`
//! to the half-swapped `final_layer.adaLN_modulation.1`.

use std::collections::HashMap;
use std::ops::Range;

use crate::config::FluxConfig;
use crate::weights::keys::{Source, row_split, transformer_source, transformer_tensors};

/// Where a LoRA module writes: a canonical linear layer and the rows of its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Canonical module, e.g. `double_blocks.0.img_attn.qkv`.
    pub module: String,
    pub in_dim: usize,
    /// Rows of the whole canonical weight.
    pub out_dim: usize,
    /// The rows this module's output covers (all of them unless it is a fused part).
    pub rows: Range<usize>,
    /// diffusers `[scale; shift]` against BFL `[shift; scale]` (`norm_out.linear`).
    pub swap_halves: bool,
}

/// Module name → target, for one transformer configuration.
#[derive(Debug, Clone)]
pub struct TargetMap {
    by_name: HashMap<String, Target>,
    hidden: usize,
}

/// Prefixes the files put before the transformer's module names.
const PREFIXES: [&str; 5] = [
    "base_model.model.",
    "model.diffusion_model.",
    "diffusion_model.",
    "transformer.",
    "unet.",
];

/// Prefixes of text-encoder modules (kohya `lora_te*_`, diffusers `text_encoder*.`): LoRA parts
/// for CLIP or T5, which this engine does not apply.
const TEXT_ENCODER_PREFIXES: [&str; 4] = ["lora_te", "text_encoder", "te_", "te1_"];

/// Whether `module` belongs to a text encoder.
pub fn is_text_encoder(module: &str) -> bool {
    TEXT_ENCODER_PREFIXES.iter().any(|p| module.starts_with(p))
}

impl TargetMap {
    pub fn new(cfg: &FluxConfig) -> Self {
        let mut by_name = HashMap::new();
        for (name, shape) in transformer_tensors(cfg) {
            let (Some(module), &[out_dim, in_dim]) =
                (name.strip_suffix(".weight"), shape.as_slice())
            else {
                continue;
            };
            let full = Target {
                module: module.to_string(),
                in_dim,
                out_dim,
                rows: 0..out_dim,
                swap_halves: false,
            };
            let mut insert = |name: &str, target: Target, kohya_prefix: &str| {
                by_name.insert(
                    format!("{kohya_prefix}{}", name.replace('.', "_")),
                    target.clone(),
                );
                by_name.insert(name.to_string(), target);
            };
            insert(module, full.clone(), "lora_unet_");
            let diffusers_module = |k: &str| k.strip_suffix(".weight").map(str::to_string);
            match transformer_source(&name) {
                Some(Source::Renamed(d)) => {
                    if let Some(d) = diffusers_module(&d) {
                        insert(&d, full.clone(), "lora_transformer_");
                    }
                }
                Some(Source::SwapHalves(d)) => {
                    if let Some(d) = diffusers_module(&d) {
                        let swapped = Target {
                            swap_halves: true,
                            ..full.clone()
                        };
                        insert(&d, swapped, "lora_transformer_");
                    }
                }
                Some(Source::Rows(parts)) => {
                    let split = row_split(parts.len(), out_dim, cfg.hidden_size);
                    let mut start = 0;
                    for (part, rows) in parts.iter().zip(split) {
                        if let Some(d) = diffusers_module(part) {
                            let target = Target {
                                rows: start..start + rows,
                                ..full.clone()
                            };
                            insert(&d, target, "lora_transformer_");
                        }
                        start += rows;
                    }
                }
                Some(Source::Conv1x1(_)) | None => {}
            }
        }
        Self {
            by_name,
            hidden: cfg.hidden_size,
        }
    }

    /// The target of a module name as a file spells it (prefixes stripped, XLabs processors
    /// translated); `None` when the transformer has no such layer.
    pub fn resolve(&self, module: &str) -> Option<Target> {
        let bare = strip_prefix(module);
        if let Some(t) = self.by_name.get(bare) {
            return Some(t.clone());
        }
        let (canonical, qkv_rows_only) = xlabs_module(bare)?;
        let mut target = self.by_name.get(&canonical)?.clone();
        if qkv_rows_only {
            target.rows = 0..3 * self.hidden;
        }
        Some(target)
    }
}

fn strip_prefix(module: &str) -> &str {
    PREFIXES
        .iter()
        .find_map(|p| module.strip_prefix(p))
        .unwrap_or(module)
}

/// XLabs' attention processors as the canonical module, and whether only its first `3·hidden`
/// rows are meant: `double_blocks.N.processor.{qkv,proj}_lora{1,2}` (1 = image stream, 2 = text
/// stream; XLabs-AI/x-flux `src/flux/modules/layers.py`, `DoubleStreamBlockLoraProcessor`) and
/// `single_blocks.N.processor.{qkv,proj}_lora` (the q/k/v rows of `linear1`, and `linear2`, as
/// diffusers' `_convert_xlabs_flux_lora_to_diffusers` maps them).
fn xlabs_module(module: &str) -> Option<(String, bool)> {
    let (block, processor) = module.split_once(".processor.")?;
    let (layer, qkv_rows_only) = match (block.starts_with("single_blocks."), processor) {
        (false, "qkv_lora1") => ("img_attn.qkv", false),
        (false, "qkv_lora2") => ("txt_attn.qkv", false),
        (false, "proj_lora1") => ("img_attn.proj", false),
        (false, "proj_lora2") => ("txt_attn.proj", false),
        (true, "qkv_lora") => ("linear1", true),
        (true, "proj_lora") => ("linear2", false),
        _ => return None,
    };
    Some((format!("{block}.{layer}"), qkv_rows_only))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiny configuration with a second double block, so block indices are not all 0.
    fn map() -> TargetMap {
        TargetMap::new(&crate::config::FluxConfig {
            depth: 2,
            ..crate::config::FluxConfig::tiny()
        })
    }

    #[test]
    fn every_scheme_names_the_same_layer() {
        let m = map();
        let h = crate::config::FluxConfig::tiny().hidden_size;
        let qkv = m.resolve("double_blocks.1.img_attn.qkv").expect("bfl");
        assert_eq!((qkv.rows.clone(), qkv.out_dim), (0..3 * h, 3 * h));
        for name in [
            "lora_unet_double_blocks_1_img_attn_qkv",
            "diffusion_model.double_blocks.1.img_attn.qkv",
            "double_blocks.1.processor.qkv_lora1",
        ] {
            assert_eq!(m.resolve(name).as_ref(), Some(&qkv), "{name}");
        }
        let k = m
            .resolve("transformer.transformer_blocks.1.attn.to_k")
            .expect("diffusers");
        assert_eq!(
            (k.module.as_str(), k.rows.clone()),
            ("double_blocks.1.img_attn.qkv", h..2 * h)
        );
        assert_eq!(
            m.resolve("lora_transformer_transformer_blocks_1_attn_to_k"),
            Some(k)
        );
        let single_qkv = m
            .resolve("single_blocks.1.processor.qkv_lora")
            .expect("xlabs single qkv");
        assert_eq!(
            (single_qkv.module.as_str(), single_qkv.rows.clone()),
            ("single_blocks.1.linear1", 0..3 * h)
        );
        let mlp = m
            .resolve("single_transformer_blocks.0.proj_mlp")
            .expect("proj_mlp");
        assert_eq!(mlp.module, "single_blocks.0.linear1");
        assert_eq!(mlp.rows, 3 * h..mlp.out_dim);
        let txt_v = m
            .resolve("transformer_blocks.0.attn.add_v_proj")
            .expect("add_v_proj");
        assert_eq!(
            (txt_v.module.as_str(), txt_v.rows.clone()),
            ("double_blocks.0.txt_attn.qkv", 2 * h..3 * h)
        );
        let norm_out = m.resolve("norm_out.linear").expect("norm_out");
        assert!(norm_out.swap_halves);
        assert_eq!(norm_out.module, "final_layer.adaLN_modulation.1");
        assert_eq!(
            m.resolve("double_blocks.1.processor.proj_lora2")
                .map(|t| t.module),
            Some("double_blocks.1.txt_attn.proj".to_string())
        );
    }

    #[test]
    fn unknown_and_text_encoder_modules_are_told_apart() {
        let m = map();
        assert!(m.resolve("double_blocks.99.img_attn.qkv").is_none());
        assert!(m.resolve("transformer_blocks.0.attn.norm_q").is_none());
        assert!(is_text_encoder(
            "lora_te1_text_model_encoder_layers_0_mlp_fc1"
        ));
        assert!(is_text_encoder(
            "text_encoder.text_model.encoder.layers.0.mlp.fc1"
        ));
        assert!(!is_text_encoder("lora_unet_double_blocks_0_img_attn_qkv"));
    }
}
