#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use super::*;

fn diffusers_keys(
    canonical: &[(String, Vec<usize>)],
    map: impl Fn(&str) -> Option<Source>,
) -> BTreeSet<String> {
    canonical
        .iter()
        .flat_map(|(name, _)| {
            map(name)
                .unwrap_or_else(|| panic!("no diffusers source for {name}"))
                .keys()
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn kontext_dev_transformer_has_the_reference_tensor_counts() {
    // The real checkpoints: flux1-kontext-dev.safetensors holds 780 tensors
    // (20 top-level + 19 × 24 + 38 × 8), diffusers' transformer/ 1160 (20 + 19 × 32 + 38 × 14).
    let canonical = transformer_tensors(&FluxConfig::kontext_dev());
    assert_eq!(canonical.len(), 780);
    let names: BTreeSet<_> = canonical.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(names.len(), 780, "canonical names are unique");
    assert_eq!(diffusers_keys(&canonical, transformer_source).len(), 1160);
}

#[test]
fn tiny_transformer_has_the_parity_notes_counts() {
    // The same formulas at 1 double and 2 single blocks: 20 + 24 + 2 × 8 = 60 BFL tensors,
    // 20 + 32 + 2 × 14 = 80 diffusers tensors.
    let canonical = transformer_tensors(&FluxConfig::tiny());
    assert_eq!(canonical.len(), 60);
    assert_eq!(diffusers_keys(&canonical, transformer_source).len(), 80);
}

#[test]
fn tiny_vae_has_240_tensors_in_both_layouts() {
    let cfg = VaeConfig::tiny();
    let canonical = vae_tensors(&cfg);
    assert_eq!(canonical.len(), 240);
    let levels = cfg.ch_mult.len();
    assert_eq!(
        diffusers_keys(&canonical, |n| vae_source(n, levels)).len(),
        240
    );
}

#[test]
fn transformer_rows_follow_the_reference_table() {
    let r = |s: &str| Some(Source::Renamed(s.to_string()));
    assert_eq!(transformer_source("img_in.weight"), r("x_embedder.weight"));
    assert_eq!(
        transformer_source("txt_in.bias"),
        r("context_embedder.bias")
    );
    assert_eq!(
        transformer_source("vector_in.out_layer.weight"),
        r("time_text_embed.text_embedder.linear_2.weight")
    );
    assert_eq!(
        transformer_source("guidance_in.in_layer.bias"),
        r("time_text_embed.guidance_embedder.linear_1.bias")
    );
    assert_eq!(
        transformer_source("double_blocks.3.txt_mod.lin.weight"),
        r("transformer_blocks.3.norm1_context.linear.weight")
    );
    assert_eq!(
        transformer_source("double_blocks.0.img_attn.qkv.bias"),
        Some(Source::Rows(vec![
            "transformer_blocks.0.attn.to_q.bias".into(),
            "transformer_blocks.0.attn.to_k.bias".into(),
            "transformer_blocks.0.attn.to_v.bias".into(),
        ]))
    );
    assert_eq!(
        transformer_source("double_blocks.0.txt_attn.qkv.weight"),
        Some(Source::Rows(vec![
            "transformer_blocks.0.attn.add_q_proj.weight".into(),
            "transformer_blocks.0.attn.add_k_proj.weight".into(),
            "transformer_blocks.0.attn.add_v_proj.weight".into(),
        ]))
    );
    assert_eq!(
        transformer_source("double_blocks.1.img_attn.norm.key_norm.scale"),
        r("transformer_blocks.1.attn.norm_k.weight")
    );
    assert_eq!(
        transformer_source("double_blocks.1.txt_attn.norm.query_norm.scale"),
        r("transformer_blocks.1.attn.norm_added_q.weight")
    );
    assert_eq!(
        transformer_source("double_blocks.2.txt_attn.proj.weight"),
        r("transformer_blocks.2.attn.to_add_out.weight")
    );
    assert_eq!(
        transformer_source("double_blocks.2.img_attn.proj.weight"),
        r("transformer_blocks.2.attn.to_out.0.weight")
    );
    assert_eq!(
        transformer_source("double_blocks.0.txt_mlp.2.bias"),
        r("transformer_blocks.0.ff_context.net.2.bias")
    );
    assert_eq!(
        transformer_source("single_blocks.7.linear1.weight"),
        Some(Source::Rows(vec![
            "single_transformer_blocks.7.attn.to_q.weight".into(),
            "single_transformer_blocks.7.attn.to_k.weight".into(),
            "single_transformer_blocks.7.attn.to_v.weight".into(),
            "single_transformer_blocks.7.proj_mlp.weight".into(),
        ]))
    );
    assert_eq!(
        transformer_source("single_blocks.7.linear2.bias"),
        r("single_transformer_blocks.7.proj_out.bias")
    );
    assert_eq!(
        transformer_source("single_blocks.0.norm.query_norm.scale"),
        r("single_transformer_blocks.0.attn.norm_q.weight")
    );
    assert_eq!(
        transformer_source("single_blocks.0.modulation.lin.weight"),
        r("single_transformer_blocks.0.norm.linear.weight")
    );
    assert_eq!(
        transformer_source("final_layer.linear.weight"),
        r("proj_out.weight")
    );
    assert_eq!(
        transformer_source("final_layer.adaLN_modulation.1.bias"),
        Some(Source::SwapHalves("norm_out.linear.bias".into()))
    );
    assert_eq!(
        transformer_source("double_blocks.0.img_attn.norm.query_norm.weight"),
        None
    );
    assert_eq!(transformer_source("nonsense.weight"), None);
}

#[test]
fn vae_rows_follow_the_reference_table() {
    let r = |s: &str| Some(Source::Renamed(s.to_string()));
    assert_eq!(
        vae_source("encoder.down.2.block.0.nin_shortcut.weight", 4),
        r("encoder.down_blocks.2.resnets.0.conv_shortcut.weight")
    );
    assert_eq!(
        vae_source("encoder.down.1.downsample.conv.bias", 4),
        r("encoder.down_blocks.1.downsamplers.0.conv.bias")
    );
    assert_eq!(
        vae_source("decoder.mid.block_2.norm1.weight", 4),
        r("decoder.mid_block.resnets.1.norm1.weight")
    );
    assert_eq!(
        vae_source("encoder.mid.attn_1.q.weight", 4),
        Some(Source::Conv1x1(
            "encoder.mid_block.attentions.0.to_q.weight".into()
        ))
    );
    assert_eq!(
        vae_source("encoder.mid.attn_1.proj_out.bias", 4),
        r("encoder.mid_block.attentions.0.to_out.0.bias")
    );
    assert_eq!(
        vae_source("decoder.mid.attn_1.norm.weight", 4),
        r("decoder.mid_block.attentions.0.group_norm.weight")
    );
    assert_eq!(
        vae_source("encoder.norm_out.bias", 4),
        r("encoder.conv_norm_out.bias")
    );
    assert_eq!(
        vae_source("decoder.up.3.block.2.conv1.weight", 4),
        r("decoder.up_blocks.0.resnets.2.conv1.weight")
    );
    assert_eq!(
        vae_source("decoder.up.1.upsample.conv.weight", 4),
        r("decoder.up_blocks.2.upsamplers.0.conv.weight")
    );
    assert_eq!(
        vae_source("decoder.conv_out.weight", 4),
        r("decoder.conv_out.weight")
    );
    assert_eq!(vae_source("decoder.up.4.block.0.conv1.weight", 4), None);
    assert_eq!(vae_source("encoder.down.0.upsample.conv.weight", 4), None);
    assert_eq!(vae_source("quant_conv.weight", 4), None);
}

#[test]
fn kontext_dev_shapes_match_the_reference() {
    let shapes: std::collections::HashMap<_, _> = transformer_tensors(&FluxConfig::kontext_dev())
        .into_iter()
        .collect();
    assert_eq!(
        shapes["double_blocks.0.img_attn.qkv.weight"],
        vec![9216, 3072]
    );
    assert_eq!(shapes["single_blocks.0.linear1.weight"], vec![21504, 3072]);
    assert_eq!(shapes["single_blocks.0.linear2.weight"], vec![3072, 15360]);
    assert_eq!(
        shapes["final_layer.adaLN_modulation.1.weight"],
        vec![6144, 3072]
    );
    assert_eq!(shapes["single_blocks.37.norm.key_norm.scale"], vec![128]);
    assert_eq!(row_split(4, 21504, 3072), vec![3072, 3072, 3072, 12288]);
    assert_eq!(row_split(3, 9216, 3072), vec![3072; 3]);
}
