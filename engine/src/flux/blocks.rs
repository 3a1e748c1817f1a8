//! The transformer blocks with BFL key names (`modules/layers.py` @ 802fb47): modulation,
//! QK-norm self-attention projections, the MLP, the double-stream and single-stream blocks and the
//! final layer. Math per docs/engine.md §Transformer blocks.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::linear::{BlockLinear, LinearPrecision, Operand};
use super::ops::{self, ModulationOut, QkvStream};

/// The layers outside the blocks keep the compute dtype whatever the blocks' precision.
const NATIVE: LinearPrecision = LinearPrecision::Native;
const TOKENS: Operand = Operand::Tokens;
const VECTOR: Operand = Operand::Vector;
use super::rope::RopeTable;
use crate::config::FluxConfig;

/// BFL `Modulation` (layers.py:112-128): `lin(silu(vec))[:, None, :].chunk(k)`, k = 3 or 6.
#[derive(Debug, Clone)]
struct Modulation {
    lin: BlockLinear,
    double: bool,
}

impl Modulation {
    fn new(dim: usize, double: bool, vb: VarBuilder<'_>, p: LinearPrecision) -> Result<Self> {
        let mult = if double { 6 } else { 3 };
        Ok(Self {
            lin: BlockLinear::load(dim, mult * dim, true, vb.pp("lin"), p, Operand::Vector)?,
            double,
        })
    }

    fn forward(&self, vec: &Tensor) -> Result<(ModulationOut, Option<ModulationOut>)> {
        let k = if self.double { 6 } else { 3 };
        let ys = vec
            .silu()?
            .apply(&self.lin)?
            .unsqueeze(1)?
            .chunk(k, D::Minus1)?; // k × (b, 1, dim)
        let triple = |i: usize| ModulationOut {
            shift: ys[i].clone(),
            scale: ys[i + 1].clone(),
            gate: ys[i + 2].clone(),
        };
        Ok((triple(0), self.double.then(|| triple(3))))
    }
}

/// BFL `QKNorm`: one RMSNorm scale for queries, one for keys (`norm.query_norm.scale`, ...).
#[derive(Debug, Clone)]
struct QkNorm {
    query_scale: Tensor,
    key_scale: Tensor,
}

impl QkNorm {
    fn new(head_dim: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            query_scale: vb.get(head_dim, "query_norm.scale")?,
            key_scale: vb.get(head_dim, "key_norm.scale")?,
        })
    }
}

/// BFL `SelfAttention` weights: `qkv`, `norm`, `proj`.
#[derive(Debug, Clone)]
struct SelfAttention {
    qkv: BlockLinear,
    norm: QkNorm,
    proj: BlockLinear,
}

impl SelfAttention {
    fn stream<'a>(&'a self, qkv: &'a Tensor) -> QkvStream<'a> {
        QkvStream {
            qkv,
            q_scale: &self.norm.query_scale,
            k_scale: &self.norm.key_scale,
        }
    }

    fn new(cfg: &FluxConfig, vb: VarBuilder<'_>, p: LinearPrecision) -> Result<Self> {
        let h = cfg.hidden_size;
        let tokens = Operand::Tokens;
        Ok(Self {
            qkv: BlockLinear::load(h, 3 * h, cfg.qkv_bias, vb.pp("qkv"), p, tokens)?,
            norm: QkNorm::new(cfg.head_dim(), vb.pp("norm"))?,
            proj: BlockLinear::load(h, h, true, vb.pp("proj"), p, tokens)?,
        })
    }
}

/// BFL MLP `Sequential(Linear, GELU(tanh), Linear)`, keys `.0` and `.2`.
#[derive(Debug, Clone)]
struct Mlp {
    fc1: BlockLinear,
    fc2: BlockLinear,
}

impl Mlp {
    fn new(cfg: &FluxConfig, vb: VarBuilder<'_>, p: LinearPrecision) -> Result<Self> {
        let (h, m, tokens) = (cfg.hidden_size, cfg.mlp_hidden(), Operand::Tokens);
        Ok(Self {
            fc1: BlockLinear::load(h, m, true, vb.pp("0"), p, tokens)?,
            fc2: BlockLinear::load(m, h, true, vb.pp("2"), p, tokens)?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&ops::gelu_tanh(self.fc1.forward(xs)?)?)
    }
}

/// One stream (img or txt) of a double block.
#[derive(Debug, Clone)]
struct Stream {
    modulation: Modulation,
    attn: SelfAttention,
    mlp: Mlp,
}

impl Stream {
    fn new(
        cfg: &FluxConfig,
        vb: &VarBuilder<'_>,
        prefix: &str,
        p: LinearPrecision,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            modulation: Modulation::new(h, true, vb.pp(format!("{prefix}_mod")), p)?,
            attn: SelfAttention::new(cfg, vb.pp(format!("{prefix}_attn")), p)?,
            mlp: Mlp::new(cfg, vb.pp(format!("{prefix}_mlp")), p)?,
        })
    }
}

/// BFL `DoubleStreamBlock` (layers.py:131-201): separate weights for txt and img, one joint attention.
#[derive(Debug, Clone)]
pub struct DoubleStreamBlock {
    img: Stream,
    txt: Stream,
    num_heads: usize,
}

impl DoubleStreamBlock {
    pub fn new(cfg: &FluxConfig, vb: VarBuilder<'_>, p: LinearPrecision) -> Result<Self> {
        Ok(Self {
            img: Stream::new(cfg, &vb, "img", p)?,
            txt: Stream::new(cfg, &vb, "txt", p)?,
            num_heads: cfg.num_heads,
        })
    }

    /// The block's linear layers (for memory accounting).
    pub fn linears(&self) -> Vec<&BlockLinear> {
        [&self.img, &self.txt]
            .into_iter()
            .flat_map(|s| {
                [
                    &s.modulation.lin,
                    &s.attn.qkv,
                    &s.attn.proj,
                    &s.mlp.fc1,
                    &s.mlp.fc2,
                ]
            })
            .collect()
    }

    /// The block's linear layers by canonical name under `prefix` (`double_blocks.N`).
    pub fn named_linears_mut(&mut self, prefix: &str) -> Vec<(String, &mut BlockLinear)> {
        let mut out = Vec::new();
        for (name, s) in [("img", &mut self.img), ("txt", &mut self.txt)] {
            let p = format!("{prefix}.{name}");
            out.push((format!("{p}_mod.lin"), &mut s.modulation.lin));
            out.push((format!("{p}_attn.qkv"), &mut s.attn.qkv));
            out.push((format!("{p}_attn.proj"), &mut s.attn.proj));
            out.push((format!("{p}_mlp.0"), &mut s.mlp.fc1));
            out.push((format!("{p}_mlp.2"), &mut s.mlp.fc2));
        }
        out
    }

    /// `img (b, L_img, h)`, `txt (b, L_txt, h)`, `vec (b, h)`; `pe` covers txt then img.
    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        vec: &Tensor,
        pe: &RopeTable,
    ) -> Result<(Tensor, Tensor)> {
        let (img_mod1, img_mod2) = self.img.modulation.forward(vec)?;
        let (txt_mod1, txt_mod2) = self.txt.modulation.forward(vec)?;
        let (img_mod2, txt_mod2) = (
            img_mod2.expect("double modulation yields two triples; this is a bug"),
            txt_mod2.expect("double modulation yields two triples; this is a bug"),
        );

        let img_qkv = self.img.attn.qkv.forward(&modulate(img, &img_mod1)?)?; // (b, L_img, 3h)
        let txt_qkv = self.txt.attn.qkv.forward(&modulate(txt, &txt_mod1)?)?; // (b, L_txt, 3h)
        // Joint sequence, txt first (layers.py:175-177): (b, H, L_txt + L_img, D).
        let (q, k, v) = ops::attention_inputs(
            &[
                self.txt.attn.stream(&txt_qkv),
                self.img.attn.stream(&img_qkv),
            ],
            self.num_heads,
            pe,
        )?;
        let attn = ops::attention(&q, &k, &v)?; // (b, L_txt + L_img, h)
        let n_txt = txt.dim(1)?;
        let txt_attn = attn.narrow(1, 0, n_txt)?;
        let img_attn = attn.narrow(1, n_txt, img.dim(1)?)?;

        let img = ops::gated_residual(img, &img_mod1.gate, self.img.attn.proj.forward(&img_attn)?)?;
        let img_mlp = self.img.mlp.forward(&modulate(&img, &img_mod2)?)?;
        let img = ops::gated_residual(&img, &img_mod2.gate, img_mlp)?;

        let txt = ops::gated_residual(txt, &txt_mod1.gate, self.txt.attn.proj.forward(&txt_attn)?)?;
        let txt_mlp = self.txt.mlp.forward(&modulate(&txt, &txt_mod2)?)?;
        let txt = ops::gated_residual(&txt, &txt_mod2.gate, txt_mlp)?;
        Ok((img, txt))
    }
}

/// `(1 + scale)·LN(x) + shift` for a modulation triple.
fn modulate(x: &Tensor, m: &ModulationOut) -> Result<Tensor> {
    ops::modulated_layer_norm(x, &m.shift, &m.scale)
}

/// BFL `SingleStreamBlock` (layers.py:204-254): fused `linear1` → [q, k, v | mlp], `linear2` over
/// `cat(attn, gelu(mlp))`.
#[derive(Debug, Clone)]
pub struct SingleStreamBlock {
    linear1: BlockLinear,
    linear2: BlockLinear,
    norm: QkNorm,
    modulation: Modulation,
    hidden: usize,
    mlp_hidden: usize,
    num_heads: usize,
}

impl SingleStreamBlock {
    pub fn new(cfg: &FluxConfig, vb: VarBuilder<'_>, p: LinearPrecision) -> Result<Self> {
        let (h, m, tokens) = (cfg.hidden_size, cfg.mlp_hidden(), Operand::Tokens);
        Ok(Self {
            linear1: BlockLinear::load(h, 3 * h + m, true, vb.pp("linear1"), p, tokens)?,
            linear2: BlockLinear::load(h + m, h, true, vb.pp("linear2"), p, tokens)?,
            norm: QkNorm::new(cfg.head_dim(), vb.pp("norm"))?,
            modulation: Modulation::new(h, false, vb.pp("modulation"), p)?,
            hidden: h,
            mlp_hidden: m,
            num_heads: cfg.num_heads,
        })
    }

    /// The block's linear layers (for memory accounting).
    pub fn linears(&self) -> Vec<&BlockLinear> {
        vec![&self.linear1, &self.linear2, &self.modulation.lin]
    }

    /// The block's linear layers by canonical name under `prefix` (`single_blocks.N`).
    pub fn named_linears_mut(&mut self, prefix: &str) -> Vec<(String, &mut BlockLinear)> {
        vec![
            (format!("{prefix}.linear1"), &mut self.linear1),
            (format!("{prefix}.linear2"), &mut self.linear2),
            (format!("{prefix}.modulation.lin"), &mut self.modulation.lin),
        ]
    }

    /// `x (b, L, h)` is the joint txt+img sequence.
    pub fn forward(&self, x: &Tensor, vec: &Tensor, pe: &RopeTable) -> Result<Tensor> {
        let (m, _) = self.modulation.forward(vec)?;
        let lin1 = self.linear1.forward(&modulate(x, &m)?)?; // (b, L, 3h + mlp)
        let qkv = lin1.narrow(D::Minus1, 0, 3 * self.hidden)?; // (b, L, 3h)
        let mlp = lin1.narrow(D::Minus1, 3 * self.hidden, self.mlp_hidden)?; // (b, L, mlp)
        let stream = QkvStream {
            qkv: &qkv,
            q_scale: &self.norm.query_scale,
            k_scale: &self.norm.key_scale,
        };
        let (q, k, v) = ops::attention_inputs(&[stream], self.num_heads, pe)?;
        let attn = ops::attention(&q, &k, &v)?; // (b, L, h)
        let hidden = ops::cat_gelu(&attn, &mlp)?; // (b, L, h + mlp)
        ops::gated_residual(x, &m.gate, self.linear2.forward(&hidden)?)
    }
}

/// BFL `LastLayer` (layers.py:257-270): `adaLN_modulation.1(silu(vec))` chunked (shift, scale),
/// then `linear`.
#[derive(Debug, Clone)]
pub struct LastLayer {
    linear: BlockLinear,
    ada_ln: BlockLinear,
}

impl LastLayer {
    pub fn new(cfg: &FluxConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            linear: BlockLinear::load(h, cfg.in_channels, true, vb.pp("linear"), NATIVE, TOKENS)?,
            ada_ln: BlockLinear::load(h, 2 * h, true, vb.pp("adaLN_modulation.1"), NATIVE, VECTOR)?,
        })
    }

    /// Its linear layers by canonical name (`final_layer.*`).
    pub fn named_linears_mut(&mut self) -> Vec<(String, &mut BlockLinear)> {
        vec![
            ("final_layer.linear".into(), &mut self.linear),
            ("final_layer.adaLN_modulation.1".into(), &mut self.ada_ln),
        ]
    }

    pub fn forward(&self, x: &Tensor, vec: &Tensor) -> Result<Tensor> {
        let chunks = self
            .ada_ln
            .forward(&vec.silu()?)?
            .unsqueeze(1)?
            .chunk(2, D::Minus1)?; // 2 × (b, 1, h)
        let (shift, scale) = (&chunks[0], &chunks[1]);
        self.linear
            .forward(&ops::modulated_layer_norm(x, shift, scale)?)
    }
}
