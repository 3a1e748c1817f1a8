//! Tensor names: the canonical (BFL) keys of the flow transformer and the autoencoder, their
//! shapes for a given config, and where each one lives in the diffusers layout.
//!
//! The mapping is diffusers' (`src/diffusers/loaders/single_file_utils.py`:
//! `convert_flux_transformer_checkpoint_to_diffusers` and `convert_ldm_vae_checkpoint`), written
//! once in the direction the loader needs (canonical → diffusers). The tiny writer splits
//! canonical tensors with the same table, and unit tests pin the table row by row.

use crate::config::{FluxConfig, VaeConfig};

/// Where a canonical tensor comes from in a diffusers checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The same values under another name.
    Renamed(String),
    /// Row blocks concatenated along dim 0 in this order (fused qkv / linear1).
    Rows(Vec<String>),
    /// The two row halves swapped: BFL `[shift; scale]` ↔ diffusers `[scale; shift]`.
    SwapHalves(String),
    /// A 1×1 conv weight `(c_out, c_in, 1, 1)` stored as a Linear weight `(c_out, c_in)`.
    Conv1x1(String),
}

impl Source {
    /// The diffusers keys this source reads.
    pub fn keys(&self) -> Vec<&str> {
        match self {
            Self::Renamed(k) | Self::SwapHalves(k) | Self::Conv1x1(k) => vec![k.as_str()],
            Self::Rows(ks) => ks.iter().map(String::as_str).collect(),
        }
    }
}

/// Every canonical transformer tensor with its shape, in a fixed order.
pub fn transformer_tensors(cfg: &FluxConfig) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    let mlp = cfg.mlp_hidden();
    let hd = cfg.head_dim();
    let mut out = Vec::new();
    let mut linear = |name: &str, rows: usize, cols: usize, bias: bool| {
        out.push((format!("{name}.weight"), vec![rows, cols]));
        if bias {
            out.push((format!("{name}.bias"), vec![rows]));
        }
    };
    linear("img_in", h, cfg.in_channels, true);
    linear("txt_in", h, cfg.context_in_dim, true);
    linear("time_in.in_layer", h, 256, true);
    linear("time_in.out_layer", h, h, true);
    linear("vector_in.in_layer", h, cfg.vec_in_dim, true);
    linear("vector_in.out_layer", h, h, true);
    if cfg.guidance_embed {
        linear("guidance_in.in_layer", h, 256, true);
        linear("guidance_in.out_layer", h, h, true);
    }
    for n in 0..cfg.depth {
        for stream in ["img", "txt"] {
            let p = format!("double_blocks.{n}.{stream}");
            linear(&format!("{p}_mod.lin"), 6 * h, h, true);
            linear(&format!("{p}_attn.qkv"), 3 * h, h, cfg.qkv_bias);
            linear(&format!("{p}_attn.proj"), h, h, true);
            linear(&format!("{p}_mlp.0"), mlp, h, true);
            linear(&format!("{p}_mlp.2"), h, mlp, true);
        }
    }
    for n in 0..cfg.depth_single_blocks {
        let p = format!("single_blocks.{n}");
        linear(&format!("{p}.linear1"), 3 * h + mlp, h, true);
        linear(&format!("{p}.linear2"), h, h + mlp, true);
        linear(&format!("{p}.modulation.lin"), 3 * h, h, true);
    }
    linear("final_layer.linear", cfg.in_channels, h, true);
    linear("final_layer.adaLN_modulation.1", 2 * h, h, true);
    for n in 0..cfg.depth {
        for stream in ["img", "txt"] {
            for norm in ["query_norm", "key_norm"] {
                out.push((
                    format!("double_blocks.{n}.{stream}_attn.norm.{norm}.scale"),
                    vec![hd],
                ));
            }
        }
    }
    for n in 0..cfg.depth_single_blocks {
        for norm in ["query_norm", "key_norm"] {
            out.push((format!("single_blocks.{n}.norm.{norm}.scale"), vec![hd]));
        }
    }
    out
}

/// Every canonical (BFL `autoencoder.py`) autoencoder tensor with its shape, in a fixed order.
pub fn vae_tensors(cfg: &VaeConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let conv = |out: &mut Vec<(String, Vec<usize>)>, name: String, c_out, c_in, k| {
        out.push((format!("{name}.weight"), vec![c_out, c_in, k, k]));
        out.push((format!("{name}.bias"), vec![c_out]));
    };
    let norm = |out: &mut Vec<(String, Vec<usize>)>, name: String, c| {
        out.push((format!("{name}.weight"), vec![c]));
        out.push((format!("{name}.bias"), vec![c]));
    };
    let resnet = |out: &mut Vec<(String, Vec<usize>)>, p: String, c_in: usize, c_out: usize| {
        norm(out, format!("{p}.norm1"), c_in);
        conv(out, format!("{p}.conv1"), c_out, c_in, 3);
        norm(out, format!("{p}.norm2"), c_out);
        conv(out, format!("{p}.conv2"), c_out, c_out, 3);
        if c_in != c_out {
            conv(out, format!("{p}.nin_shortcut"), c_out, c_in, 1);
        }
    };
    let mid = |out: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize| {
        resnet(out, format!("{p}.mid.block_1"), c, c);
        norm(out, format!("{p}.mid.attn_1.norm"), c);
        for n in ["q", "k", "v", "proj_out"] {
            conv(out, format!("{p}.mid.attn_1.{n}"), c, c, 1);
        }
        resnet(out, format!("{p}.mid.block_2"), c, c);
    };
    let chans = cfg.block_out_channels();
    let levels = chans.len();

    // Encoder (autoencoder.py `Encoder.__init__`).
    conv(
        &mut out,
        "encoder.conv_in".into(),
        cfg.ch,
        cfg.in_channels,
        3,
    );
    let mut block_in = cfg.ch;
    for (i, &block_out) in chans.iter().enumerate() {
        for j in 0..cfg.num_res_blocks {
            resnet(
                &mut out,
                format!("encoder.down.{i}.block.{j}"),
                block_in,
                block_out,
            );
            block_in = block_out;
        }
        if i + 1 != levels {
            conv(
                &mut out,
                format!("encoder.down.{i}.downsample.conv"),
                block_in,
                block_in,
                3,
            );
        }
    }
    mid(&mut out, "encoder", block_in);
    norm(&mut out, "encoder.norm_out".into(), block_in);
    conv(
        &mut out,
        "encoder.conv_out".into(),
        2 * cfg.z_channels,
        block_in,
        3,
    );

    // Decoder (`Decoder.__init__`): levels run from the deepest up; `up[i]` keeps BFL's index.
    let mut block_in = chans[levels - 1];
    conv(
        &mut out,
        "decoder.conv_in".into(),
        block_in,
        cfg.z_channels,
        3,
    );
    mid(&mut out, "decoder", block_in);
    for i in (0..levels).rev() {
        let block_out = chans[i];
        for j in 0..=cfg.num_res_blocks {
            resnet(
                &mut out,
                format!("decoder.up.{i}.block.{j}"),
                block_in,
                block_out,
            );
            block_in = block_out;
        }
        if i != 0 {
            conv(
                &mut out,
                format!("decoder.up.{i}.upsample.conv"),
                block_in,
                block_in,
                3,
            );
        }
    }
    norm(&mut out, "decoder.norm_out".into(), block_in);
    conv(
        &mut out,
        "decoder.conv_out".into(),
        cfg.out_channels,
        block_in,
        3,
    );
    out
}

/// The diffusers source of a canonical transformer key (diffusers
/// `convert_flux_transformer_checkpoint_to_diffusers`).
pub fn transformer_source(bfl: &str) -> Option<Source> {
    let (stem, suffix) = bfl.rsplit_once('.')?;
    let renamed = |d: &str| Some(Source::Renamed(format!("{d}.{suffix}")));
    let top = match stem {
        "img_in" => Some("x_embedder"),
        "txt_in" => Some("context_embedder"),
        "time_in.in_layer" => Some("time_text_embed.timestep_embedder.linear_1"),
        "time_in.out_layer" => Some("time_text_embed.timestep_embedder.linear_2"),
        "guidance_in.in_layer" => Some("time_text_embed.guidance_embedder.linear_1"),
        "guidance_in.out_layer" => Some("time_text_embed.guidance_embedder.linear_2"),
        "vector_in.in_layer" => Some("time_text_embed.text_embedder.linear_1"),
        "vector_in.out_layer" => Some("time_text_embed.text_embedder.linear_2"),
        "final_layer.linear" => Some("proj_out"),
        _ => None,
    };
    if let Some(d) = top {
        return renamed(d);
    }
    if stem == "final_layer.adaLN_modulation.1" {
        return Some(Source::SwapHalves(format!("norm_out.linear.{suffix}")));
    }
    if let Some(rest) = stem.strip_prefix("double_blocks.") {
        let (n, part) = rest.split_once('.')?;
        let p = format!("transformer_blocks.{n}");
        let rows = |names: &[&str]| {
            Some(Source::Rows(
                names.iter().map(|d| format!("{p}.{d}.{suffix}")).collect(),
            ))
        };
        let d = match part {
            "img_mod.lin" => "norm1.linear",
            "txt_mod.lin" => "norm1_context.linear",
            "img_attn.qkv" => return rows(&["attn.to_q", "attn.to_k", "attn.to_v"]),
            "txt_attn.qkv" => {
                return rows(&["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"]);
            }
            "img_attn.norm.query_norm" if suffix == "scale" => {
                return Some(Source::Renamed(format!("{p}.attn.norm_q.weight")));
            }
            "img_attn.norm.key_norm" if suffix == "scale" => {
                return Some(Source::Renamed(format!("{p}.attn.norm_k.weight")));
            }
            "txt_attn.norm.query_norm" if suffix == "scale" => {
                return Some(Source::Renamed(format!("{p}.attn.norm_added_q.weight")));
            }
            "txt_attn.norm.key_norm" if suffix == "scale" => {
                return Some(Source::Renamed(format!("{p}.attn.norm_added_k.weight")));
            }
            "img_attn.proj" => "attn.to_out.0",
            "txt_attn.proj" => "attn.to_add_out",
            "img_mlp.0" => "ff.net.0.proj",
            "img_mlp.2" => "ff.net.2",
            "txt_mlp.0" => "ff_context.net.0.proj",
            "txt_mlp.2" => "ff_context.net.2",
            _ => return None,
        };
        return Some(Source::Renamed(format!("{p}.{d}.{suffix}")));
    }
    if let Some(rest) = stem.strip_prefix("single_blocks.") {
        let (n, part) = rest.split_once('.')?;
        let p = format!("single_transformer_blocks.{n}");
        let d = match part {
            "modulation.lin" => "norm.linear",
            "linear1" => {
                return Some(Source::Rows(
                    ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]
                        .iter()
                        .map(|d| format!("{p}.{d}.{suffix}"))
                        .collect(),
                ));
            }
            "linear2" => "proj_out",
            "norm.query_norm" if suffix == "scale" => {
                return Some(Source::Renamed(format!("{p}.attn.norm_q.weight")));
            }
            "norm.key_norm" if suffix == "scale" => {
                return Some(Source::Renamed(format!("{p}.attn.norm_k.weight")));
            }
            _ => return None,
        };
        return Some(Source::Renamed(format!("{p}.{d}.{suffix}")));
    }
    None
}

/// The diffusers `vae/` source of a canonical autoencoder key; `levels` = `len(ch_mult)`
/// (decoder levels are numbered in reverse in diffusers).
pub fn vae_source(bfl: &str, levels: usize) -> Option<Source> {
    let (side, rest) = bfl.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    let (stem, suffix) = rest.rsplit_once('.')?;
    let renamed = |d: String| Some(Source::Renamed(format!("{side}.{d}.{suffix}")));
    match stem {
        "conv_in" | "conv_out" => return renamed(stem.to_string()),
        "norm_out" => return renamed("conv_norm_out".into()),
        _ => {}
    }
    if let Some(mid) = stem.strip_prefix("mid.") {
        let (block, part) = mid.split_once('.')?;
        let resnet = |k: usize| renamed(format!("mid_block.resnets.{k}.{}", resnet_part(part)?));
        return match block {
            "block_1" => resnet(0),
            "block_2" => resnet(1),
            "attn_1" => {
                let d = match part {
                    "norm" => "group_norm",
                    "q" => "to_q",
                    "k" => "to_k",
                    "v" => "to_v",
                    "proj_out" => "to_out.0",
                    _ => return None,
                };
                let key = format!("{side}.mid_block.attentions.0.{d}.{suffix}");
                if part != "norm" && suffix == "weight" {
                    Some(Source::Conv1x1(key))
                } else {
                    Some(Source::Renamed(key))
                }
            }
            _ => None,
        };
    }
    let (dir, level_rest) = match side {
        "encoder" => ("down", stem.strip_prefix("down.")?),
        _ => ("up", stem.strip_prefix("up.")?),
    };
    let (level, part) = level_rest.split_once('.')?;
    let level: usize = level.parse().ok()?;
    if level >= levels {
        return None;
    }
    let (blocks, d_level) = match dir {
        "down" => ("down_blocks", level),
        _ => ("up_blocks", levels - 1 - level),
    };
    if let Some(block) = part.strip_prefix("block.") {
        let (j, sub) = block.split_once('.')?;
        let j: usize = j.parse().ok()?;
        return renamed(format!(
            "{blocks}.{d_level}.resnets.{j}.{}",
            resnet_part(sub)?
        ));
    }
    match part {
        "downsample.conv" if dir == "down" => {
            renamed(format!("{blocks}.{d_level}.downsamplers.0.conv"))
        }
        "upsample.conv" if dir == "up" => renamed(format!("{blocks}.{d_level}.upsamplers.0.conv")),
        _ => None,
    }
}

fn resnet_part(part: &str) -> Option<&'static str> {
    Some(match part {
        "norm1" => "norm1",
        "conv1" => "conv1",
        "norm2" => "norm2",
        "conv2" => "conv2",
        "nin_shortcut" => "conv_shortcut",
        _ => return None,
    })
}

/// Row counts of the diffusers pieces of a `Source::Rows` canonical tensor with `rows` rows:
/// qkv splits into three equal blocks, single-block `linear1` into `[h, h, h, rows − 3h]`.
pub fn row_split(parts: usize, rows: usize, hidden: usize) -> Vec<usize> {
    match parts {
        4 => vec![hidden, hidden, hidden, rows - 3 * hidden],
        _ => vec![rows / parts; parts],
    }
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
