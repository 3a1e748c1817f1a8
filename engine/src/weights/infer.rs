//! Configs of BFL single files, which carry no config: depth and widths come from tensor
//! shapes; what shapes cannot say comes from the optional sidecar `flux_config.json`.
//!
//! Rules (documented for users in `ModelDir`):
//! - heads = hidden / len(`…query_norm.scale`); mlp_ratio from `img_mlp.0` rows; depth counts
//!   `double_blocks.N`, `single_blocks.N`; qkv bias and guidance from the presence of their keys.
//! - axes_dim: the sidecar's `axes_dim`, else [16, 56, 56] when the head dim is 128 (every FLUX.1
//!   checkpoint), else an error asking for the sidecar. θ: the sidecar's `theta`, else 10000.
//! - AE: ch, ch_mult, num_res_blocks, z_channels, in/out channels from shapes; GroupNorm groups
//!   and scale/shift from the sidecar, else BFL's constants (32, 0.3611, 0.1159).

use super::WeightsError;
use super::backend::CanonicalBackend;
use super::configs::{Sidecar, check_flux, check_vae};
use crate::config::{FluxConfig, VaeConfig};

fn count(b: &CanonicalBackend, key: impl Fn(usize) -> String) -> usize {
    (0..).take_while(|&n| b.contains(&key(n))).count()
}

fn dims(b: &CanonicalBackend, key: &str, rank: usize) -> Result<Vec<usize>, WeightsError> {
    let s = b.shape(key)?;
    if s.len() != rank {
        return Err(WeightsError::shape(
            key,
            key,
            b.files().origin(),
            format!("a rank-{rank} tensor"),
            format!("{s:?}"),
        ));
    }
    Ok(s)
}

pub fn flux_config(b: &CanonicalBackend, sidecar: &Sidecar) -> Result<FluxConfig, WeightsError> {
    let img_in = dims(b, "img_in.weight", 2)?;
    let (hidden, in_channels) = (img_in[0], img_in[1]);
    let context_in_dim = dims(b, "txt_in.weight", 2)?[1];
    let vec_in_dim = dims(b, "vector_in.in_layer.weight", 2)?[1];
    let depth = count(b, |n| format!("double_blocks.{n}.img_mod.lin.weight"));
    let depth_single_blocks = count(b, |n| format!("single_blocks.{n}.linear2.weight"));
    let (mlp_hidden, head_dim) = if depth > 0 {
        (
            dims(b, "double_blocks.0.img_mlp.0.weight", 2)?[0],
            dims(b, "double_blocks.0.img_attn.norm.query_norm.scale", 1)?[0],
        )
    } else {
        (
            dims(b, "single_blocks.0.linear2.weight", 2)?[1] - hidden,
            dims(b, "single_blocks.0.norm.query_norm.scale", 1)?[0],
        )
    };
    let file = b.files().origin().display().to_string();
    let bad = |reason: String| WeightsError::Config {
        file: file.clone(),
        reason,
    };
    if head_dim == 0 || !hidden.is_multiple_of(head_dim) {
        return Err(bad(format!(
            "hidden size {hidden} is not a multiple of the head dim {head_dim}"
        )));
    }
    let axes_dim = match (&sidecar.axes_dim, head_dim) {
        (Some(axes), _) => axes.clone(),
        (None, 128) => vec![16, 56, 56],
        (None, _) => {
            return Err(bad(format!(
                "the head dim is {head_dim}, not FLUX.1's 128, so the RoPE axes cannot be \
                 inferred: write {{\"axes_dim\": [a, b, c]}} (even, summing to {head_dim}) to \
                 {} next to the weights",
                super::configs::SIDECAR
            )));
        }
    };
    let cfg = FluxConfig {
        in_channels,
        vec_in_dim,
        context_in_dim,
        hidden_size: hidden,
        mlp_ratio: mlp_hidden as f64 / hidden as f64,
        num_heads: hidden / head_dim,
        depth,
        depth_single_blocks,
        axes_dim,
        theta: sidecar.theta.unwrap_or(10_000.0),
        qkv_bias: depth == 0 || b.contains("double_blocks.0.img_attn.qkv.bias"),
        guidance_embed: b.contains("guidance_in.in_layer.weight"),
    };
    check_flux(&cfg).map_err(bad)?;
    Ok(cfg)
}

pub fn vae_config(b: &CanonicalBackend, sidecar: &Sidecar) -> Result<VaeConfig, WeightsError> {
    let conv_in = dims(b, "encoder.conv_in.weight", 4)?;
    let (ch, in_channels) = (conv_in[0], conv_in[1]);
    let levels = count(b, |i| format!("encoder.down.{i}.block.0.conv1.weight"));
    let num_res_blocks = count(b, |j| format!("encoder.down.0.block.{j}.conv1.weight"));
    let file = b.files().origin().display().to_string();
    let bad = |reason: String| WeightsError::Config {
        file: file.clone(),
        reason,
    };
    if levels == 0 || ch == 0 {
        return Err(bad(
            "no encoder.down.0.block.0.conv1.weight: not a FLUX autoencoder".into(),
        ));
    }
    let mut ch_mult = Vec::with_capacity(levels);
    for i in 0..levels {
        let out = dims(b, &format!("encoder.down.{i}.block.0.conv1.weight"), 4)?[0];
        if !out.is_multiple_of(ch) {
            return Err(bad(format!(
                "level {i} has {out} channels, not a multiple of {ch}"
            )));
        }
        ch_mult.push(out / ch);
    }
    let cfg = VaeConfig {
        in_channels,
        out_channels: dims(b, "decoder.conv_out.weight", 4)?[0],
        ch,
        ch_mult,
        num_res_blocks,
        z_channels: dims(b, "encoder.conv_out.weight", 4)?[0] / 2,
        norm_groups: sidecar.vae_norm_groups.unwrap_or(32),
        scale_factor: sidecar.vae_scale_factor.unwrap_or(0.3611),
        shift_factor: sidecar.vae_shift_factor.unwrap_or(0.1159),
    };
    check_vae(&cfg).map_err(bad)?;
    Ok(cfg)
}
