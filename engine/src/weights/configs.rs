//! The on-disk configs of the two candle-native components, read and written in one place:
//! diffusers `transformer/config.json` (FluxTransformer2DModel) and `vae/config.json`
//! (AutoencoderKL), and the BFL-layout sidecar `flux_config.json`.
//!
//! Defaults for absent keys are diffusers' constructor defaults, so a hand-trimmed config reads
//! the way diffusers reads it. Features our candle port does not implement (quant convs, patch
//! size ≠ 1, a VAE without mid attention) are rejected with the key named.

use serde::Deserialize;
use serde_json::{Value, json};

use super::WeightsError;
use crate::config::{FluxConfig, VaeConfig};

/// Name of the optional sidecar next to a BFL single-file transformer.
pub const SIDECAR: &str = "flux_config.json";

#[derive(Debug, Deserialize)]
struct DiffusersTransformer {
    #[serde(default = "one")]
    patch_size: usize,
    #[serde(default = "default_in_channels")]
    in_channels: usize,
    #[serde(default)]
    out_channels: Option<usize>,
    #[serde(default = "default_num_layers")]
    num_layers: usize,
    #[serde(default = "default_num_single_layers")]
    num_single_layers: usize,
    #[serde(default = "default_head_dim")]
    attention_head_dim: usize,
    #[serde(default = "default_heads")]
    num_attention_heads: usize,
    #[serde(default = "default_joint_dim")]
    joint_attention_dim: usize,
    #[serde(default = "default_pooled_dim")]
    pooled_projection_dim: usize,
    #[serde(default)]
    guidance_embeds: bool,
    #[serde(default = "default_axes")]
    axes_dims_rope: Vec<usize>,
}

fn one() -> usize {
    1
}
fn default_in_channels() -> usize {
    64
}
fn default_num_layers() -> usize {
    19
}
fn default_num_single_layers() -> usize {
    38
}
fn default_head_dim() -> usize {
    128
}
fn default_heads() -> usize {
    24
}
fn default_joint_dim() -> usize {
    4096
}
fn default_pooled_dim() -> usize {
    768
}
fn default_axes() -> Vec<usize> {
    vec![16, 56, 56]
}

/// Reads a diffusers `transformer/config.json`. mlp_ratio (4), qkv bias and θ (10000) are fixed
/// in diffusers' `FluxTransformer2DModel` code and have no config key.
pub fn flux_from_diffusers(text: &str, file: &str) -> Result<FluxConfig, WeightsError> {
    let raw: DiffusersTransformer =
        serde_json::from_str(text).map_err(|e| WeightsError::Config {
            file: file.into(),
            reason: e.to_string(),
        })?;
    let bad = |reason: String| WeightsError::Config {
        file: file.into(),
        reason,
    };
    if raw.patch_size != 1 {
        return Err(bad(format!(
            "patch_size is {}, only 1 is supported",
            raw.patch_size
        )));
    }
    if let Some(out) = raw.out_channels
        && out != raw.in_channels
    {
        return Err(bad(format!(
            "out_channels {out} differs from in_channels {}",
            raw.in_channels
        )));
    }
    let cfg = FluxConfig {
        in_channels: raw.in_channels,
        vec_in_dim: raw.pooled_projection_dim,
        context_in_dim: raw.joint_attention_dim,
        hidden_size: raw.num_attention_heads * raw.attention_head_dim,
        mlp_ratio: 4.0,
        num_heads: raw.num_attention_heads,
        depth: raw.num_layers,
        depth_single_blocks: raw.num_single_layers,
        axes_dim: raw.axes_dims_rope,
        theta: 10_000.0,
        qkv_bias: true,
        guidance_embed: raw.guidance_embeds,
    };
    check_flux(&cfg).map_err(bad)?;
    Ok(cfg)
}

/// Writes a diffusers `transformer/config.json` for `cfg`.
pub fn flux_to_diffusers(cfg: &FluxConfig) -> Value {
    json!({
        "_class_name": "FluxTransformer2DModel",
        "_diffusers_version": "0.42.1",
        "attention_head_dim": cfg.head_dim(),
        "axes_dims_rope": cfg.axes_dim,
        "guidance_embeds": cfg.guidance_embed,
        "in_channels": cfg.in_channels,
        "joint_attention_dim": cfg.context_in_dim,
        "num_attention_heads": cfg.num_heads,
        "num_layers": cfg.depth,
        "num_single_layers": cfg.depth_single_blocks,
        "out_channels": null,
        "patch_size": 1,
        "pooled_projection_dim": cfg.vec_in_dim,
    })
}

/// RoPE and width invariants every loader checks (BFL `Flux.__init__` raises on these too).
pub fn check_flux(cfg: &FluxConfig) -> Result<(), String> {
    if !cfg.hidden_size.is_multiple_of(cfg.num_heads) || cfg.num_heads == 0 {
        return Err(format!(
            "hidden size {} is not a multiple of num_heads {}",
            cfg.hidden_size, cfg.num_heads
        ));
    }
    let sum: usize = cfg.axes_dim.iter().sum();
    if cfg.axes_dim.len() != 3 || sum != cfg.head_dim() {
        return Err(format!(
            "axes_dim {:?} must have 3 entries summing to the head dim {}",
            cfg.axes_dim,
            cfg.head_dim()
        ));
    }
    if cfg.axes_dim.iter().any(|d| !d.is_multiple_of(2)) {
        return Err(format!(
            "every axes_dim entry must be even, got {:?}",
            cfg.axes_dim
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct DiffusersVae {
    #[serde(default = "three")]
    in_channels: usize,
    #[serde(default = "three")]
    out_channels: usize,
    block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    layers_per_block: usize,
    latent_channels: usize,
    #[serde(default = "default_groups")]
    norm_num_groups: usize,
    scaling_factor: f64,
    shift_factor: Option<f64>,
    #[serde(default = "yes")]
    use_quant_conv: bool,
    #[serde(default = "yes")]
    use_post_quant_conv: bool,
    #[serde(default = "yes")]
    mid_block_add_attention: bool,
    #[serde(default)]
    down_block_types: Vec<String>,
    #[serde(default)]
    up_block_types: Vec<String>,
    #[serde(default = "silu")]
    act_fn: String,
}

fn three() -> usize {
    3
}
fn default_groups() -> usize {
    32
}
fn yes() -> bool {
    true
}
fn silu() -> String {
    "silu".into()
}

/// Reads a diffusers `vae/config.json` (an AutoencoderKL with the FLUX structure).
pub fn vae_from_diffusers(text: &str, file: &str) -> Result<VaeConfig, WeightsError> {
    let raw: DiffusersVae = serde_json::from_str(text).map_err(|e| WeightsError::Config {
        file: file.into(),
        reason: e.to_string(),
    })?;
    let bad = |reason: String| WeightsError::Config {
        file: file.into(),
        reason,
    };
    if raw.use_quant_conv || raw.use_post_quant_conv {
        return Err(bad(
            "use_quant_conv/use_post_quant_conv must be false (FLUX AE has none)".into(),
        ));
    }
    if !raw.mid_block_add_attention {
        return Err(bad("mid_block_add_attention must be true".into()));
    }
    if raw.act_fn != "silu" {
        return Err(bad(format!(
            "act_fn is {:?}, only \"silu\" is supported",
            raw.act_fn
        )));
    }
    let levels = raw.block_out_channels.len();
    if raw
        .down_block_types
        .iter()
        .any(|t| t != "DownEncoderBlock2D")
        || raw.up_block_types.iter().any(|t| t != "UpDecoderBlock2D")
        || raw.down_block_types.len() != levels
        || raw.up_block_types.len() != levels
    {
        return Err(bad(format!(
            "down_block_types/up_block_types must be {levels} DownEncoderBlock2D/UpDecoderBlock2D"
        )));
    }
    let shift_factor = raw
        .shift_factor
        .ok_or_else(|| bad("shift_factor is missing".into()))?;
    let ch = *raw
        .block_out_channels
        .first()
        .ok_or_else(|| bad("block_out_channels is empty".into()))?;
    if ch == 0 || raw.block_out_channels.iter().any(|c| !c.is_multiple_of(ch)) {
        return Err(bad(format!(
            "block_out_channels {:?} must be multiples of the first entry",
            raw.block_out_channels
        )));
    }
    let cfg = VaeConfig {
        in_channels: raw.in_channels,
        out_channels: raw.out_channels,
        ch,
        ch_mult: raw.block_out_channels.iter().map(|c| c / ch).collect(),
        num_res_blocks: raw.layers_per_block,
        z_channels: raw.latent_channels,
        norm_groups: raw.norm_num_groups,
        scale_factor: raw.scaling_factor,
        shift_factor,
    };
    check_vae(&cfg).map_err(bad)?;
    Ok(cfg)
}

/// Writes a diffusers `vae/config.json` for `cfg`.
pub fn vae_to_diffusers(cfg: &VaeConfig) -> Value {
    let levels = cfg.ch_mult.len();
    json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.42.1",
        "act_fn": "silu",
        "block_out_channels": cfg.block_out_channels(),
        "down_block_types": vec!["DownEncoderBlock2D"; levels],
        "force_upcast": true,
        "in_channels": cfg.in_channels,
        "latent_channels": cfg.z_channels,
        "latents_mean": null,
        "latents_std": null,
        "layers_per_block": cfg.num_res_blocks,
        "mid_block_add_attention": true,
        "norm_num_groups": cfg.norm_groups,
        "out_channels": cfg.out_channels,
        "sample_size": 1024,
        "scaling_factor": cfg.scale_factor,
        "shift_factor": cfg.shift_factor,
        "up_block_types": vec!["UpDecoderBlock2D"; levels],
        "use_post_quant_conv": false,
        "use_quant_conv": false,
    })
}

/// GroupNorm needs the group count to divide every channel count.
pub fn check_vae(cfg: &VaeConfig) -> Result<(), String> {
    if cfg.ch_mult.is_empty() {
        return Err("ch_mult is empty".into());
    }
    let mut chans = cfg.block_out_channels();
    chans.push(cfg.ch);
    if cfg.norm_groups == 0 || chans.iter().any(|c| !c.is_multiple_of(cfg.norm_groups)) {
        return Err(format!(
            "norm groups {} must divide every channel count {chans:?}",
            cfg.norm_groups
        ));
    }
    Ok(())
}

/// The BFL-layout sidecar: what a single `.safetensors` transformer file cannot say.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    /// RoPE dims per axis; needed unless the head dim is 128 ([16, 56, 56]).
    pub axes_dim: Option<Vec<usize>>,
    pub theta: Option<f64>,
    /// Autoencoder settings the BFL `ae.safetensors` cannot carry (defaults: BFL's 32, 0.3611,
    /// 0.1159).
    pub vae_norm_groups: Option<usize>,
    pub vae_scale_factor: Option<f64>,
    pub vae_shift_factor: Option<f64>,
}

impl Sidecar {
    pub fn parse(text: &str, file: &str) -> Result<Self, WeightsError> {
        serde_json::from_str(text).map_err(|e| WeightsError::Config {
            file: file.into(),
            reason: e.to_string(),
        })
    }

    /// The sidecar the tiny writer puts next to its BFL files.
    pub fn for_configs(flux: &FluxConfig, vae: &VaeConfig) -> Value {
        json!({
            "axes_dim": flux.axes_dim,
            "theta": flux.theta,
            "vae_norm_groups": vae.norm_groups,
            "vae_scale_factor": vae.scale_factor,
            "vae_shift_factor": vae.shift_factor,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_configs_round_trip() {
        let flux = FluxConfig::tiny();
        let text = flux_to_diffusers(&flux).to_string();
        assert_eq!(flux_from_diffusers(&text, "config.json").unwrap(), flux);
        let vae = VaeConfig::tiny();
        let text = vae_to_diffusers(&vae).to_string();
        assert_eq!(vae_from_diffusers(&text, "config.json").unwrap(), vae);
    }

    #[test]
    fn kontext_dev_transformer_config_reads_with_defaults() {
        // The real transformer/config.json of black-forest-labs/FLUX.1-Kontext-dev, trimmed to
        // its keys.
        let text = r#"{"_class_name": "FluxTransformer2DModel", "attention_head_dim": 128,
            "axes_dims_rope": [16, 56, 56], "guidance_embeds": true, "in_channels": 64,
            "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19,
            "num_single_layers": 38, "out_channels": null, "patch_size": 1,
            "pooled_projection_dim": 768}"#;
        assert_eq!(
            flux_from_diffusers(text, "config.json").unwrap(),
            FluxConfig::kontext_dev()
        );
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let mut v = flux_to_diffusers(&FluxConfig::tiny());
        v["axes_dims_rope"] = json!([4, 4, 4]);
        let err = flux_from_diffusers(&v.to_string(), "transformer/config.json").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("transformer/config.json") && msg.contains("[4, 4, 4]"),
            "{msg}"
        );

        let mut v = vae_to_diffusers(&VaeConfig::tiny());
        v["norm_num_groups"] = json!(24);
        let msg = vae_from_diffusers(&v.to_string(), "vae/config.json")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("norm groups 24"), "{msg}");

        let mut v = vae_to_diffusers(&VaeConfig::tiny());
        v["use_quant_conv"] = json!(true);
        let msg = vae_from_diffusers(&v.to_string(), "vae/config.json")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("use_quant_conv"), "{msg}");

        let mut v = vae_to_diffusers(&VaeConfig::tiny());
        v.as_object_mut().unwrap().remove("shift_factor");
        let msg = vae_from_diffusers(&v.to_string(), "vae/config.json")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("shift_factor"), "{msg}");
    }
}
