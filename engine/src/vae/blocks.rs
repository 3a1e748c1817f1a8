//! The autoencoder's building blocks (BFL autoencoder.py:17-118): ResnetBlock, AttnBlock,
//! Downsample, Upsample. GroupNorm eps is 1e-6 everywhere, swish = x·sigmoid(x).

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::{GroupNorm, VarBuilder};

use super::conv::VaeConv;

pub(super) fn group_norm(groups: usize, channels: usize, vb: VarBuilder<'_>) -> Result<GroupNorm> {
    candle_nn::group_norm(groups, channels, 1e-6, vb)
}

/// autoencoder.py:55-88.
#[derive(Debug, Clone)]
pub(super) struct ResnetBlock {
    norm1: GroupNorm,
    conv1: VaeConv,
    norm2: GroupNorm,
    conv2: VaeConv,
    nin_shortcut: Option<VaeConv>,
}

impl ResnetBlock {
    pub(super) fn new(
        c_in: usize,
        c_out: usize,
        groups: usize,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(groups, c_in, vb.pp("norm1"))?,
            conv1: VaeConv::new(c_in, c_out, 3, 1, 1, vb.pp("conv1"))?,
            norm2: group_norm(groups, c_out, vb.pp("norm2"))?,
            conv2: VaeConv::new(c_out, c_out, 3, 1, 1, vb.pp("conv2"))?,
            nin_shortcut: if c_in != c_out {
                Some(VaeConv::new(c_in, c_out, 1, 0, 1, vb.pp("nin_shortcut"))?)
            } else {
                None
            },
        })
    }
}

impl Module for ResnetBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.norm1.forward(x)?.silu()?;
        let h = self.conv1.forward(&h)?;
        let h = self.norm2.forward(&h)?.silu()?;
        let h = self.conv2.forward(&h)?;
        match &self.nin_shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

/// Single-head self-attention over the H·W positions (autoencoder.py:17-52).
#[derive(Debug, Clone)]
pub(super) struct AttnBlock {
    norm: GroupNorm,
    q: VaeConv,
    k: VaeConv,
    v: VaeConv,
    proj_out: VaeConv,
}

/// Query rows per attention chunk: bounds the (rows × H·W) f32 score block (1024² images have
/// 16384 positions at the mid level; the full matrix would be 1 GiB).
const ATTN_QUERY_CHUNK: usize = 4096;

impl AttnBlock {
    pub(super) fn new(c: usize, groups: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            norm: group_norm(groups, c, vb.pp("norm"))?,
            q: VaeConv::new(c, c, 1, 0, 1, vb.pp("q"))?,
            k: VaeConv::new(c, c, 1, 0, 1, vb.pp("k"))?,
            v: VaeConv::new(c, c, 1, 0, 1, vb.pp("v"))?,
            proj_out: VaeConv::new(c, c, 1, 0, 1, vb.pp("proj_out"))?,
        })
    }
}

impl Module for AttnBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let dtype = x.dtype();
        let hn = self.norm.forward(x)?;
        // "b c h w -> b (h w) c" (autoencoder.py:37-39; one head, so the "1" axis is dropped).
        let tokens = |t: Tensor| t.flatten_from(2)?.transpose(1, 2)?.contiguous();
        let q = tokens(self.q.forward(&hn)?)?.to_dtype(DType::F32)?; // (b, hw, c)
        let k = tokens(self.k.forward(&hn)?)?.to_dtype(DType::F32)?; // (b, hw, c)
        let v = tokens(self.v.forward(&hn)?)?; // (b, hw, c)
        let k_t = k.transpose(1, 2)?.contiguous()?; // (b, c, hw)
        let scale = 1.0 / (c as f64).sqrt();
        let n = h * w;
        let mut outs = Vec::with_capacity(n.div_ceil(ATTN_QUERY_CHUNK));
        for start in (0..n).step_by(ATTN_QUERY_CHUNK) {
            let rows = ATTN_QUERY_CHUNK.min(n - start);
            let scores = (q.narrow(1, start, rows)?.matmul(&k_t)? * scale)?; // (b, rows, hw)
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(dtype)?;
            outs.push(probs.matmul(&v)?); // (b, rows, c)
        }
        let att = Tensor::cat(&outs, 1)?; // (b, hw, c)
        // "b (h w) c -> b c h w"
        let att = att.transpose(1, 2)?.reshape((b, c, h, w))?;
        x + self.proj_out.forward(&att)?
    }
}

/// Zero-pad right and bottom by one, then a stride-2 3×3 conv (autoencoder.py:91-103).
#[derive(Debug, Clone)]
pub(super) struct Downsample {
    conv: VaeConv,
}

impl Downsample {
    pub(super) fn new(c: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            conv: VaeConv::new(c, c, 3, 0, 2, vb.pp("conv"))?,
        })
    }
}

impl Module for Downsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // F.pad(x, (0, 1, 0, 1)): W gets (left 0, right 1), H gets (top 0, bottom 1).
        let x = x
            .pad_with_zeros(D::Minus1, 0, 1)?
            .pad_with_zeros(D::Minus2, 0, 1)?;
        self.conv.forward(&x)
    }
}

/// Nearest-neighbour ×2, then a 3×3 conv (autoencoder.py:106-118).
#[derive(Debug, Clone)]
pub(super) struct Upsample {
    conv: VaeConv,
}

impl Upsample {
    pub(super) fn new(c: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            conv: VaeConv::new(c, c, 3, 1, 1, vb.pp("conv"))?,
        })
    }
}

impl Module for Upsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.conv.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use candle_core::{Device, Tensor};
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    use super::*;

    fn vb(tensors: HashMap<String, Tensor>) -> VarBuilder<'static> {
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu)
    }

    #[test]
    fn downsample_pads_right_and_bottom_only() {
        let dev = Device::Cpu;
        let tensors = HashMap::from([
            (
                "conv.weight".to_string(),
                Tensor::ones((1, 1, 3, 3), DType::F32, &dev).unwrap(),
            ),
            (
                "conv.bias".to_string(),
                Tensor::zeros(1, DType::F32, &dev).unwrap(),
            ),
        ]);
        let d = Downsample::new(1, vb(tensors)).unwrap();
        let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let x = Tensor::from_vec(x, (1, 1, 4, 4), &dev).unwrap();
        let y = d.forward(&x).unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 2]);
        let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        // Window rows/cols 0..3 for output 0, 2..5 for output 1; index 4 is the zero pad.
        let sum = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>| -> f32 {
            rows.flat_map(|r| {
                cols.clone().map(move |c| {
                    if r < 4 && c < 4 {
                        (r * 4 + c) as f32
                    } else {
                        0.0
                    }
                })
            })
            .sum()
        };
        assert_eq!(
            y,
            vec![
                sum(0..3, 0..3),
                sum(0..3, 2..5),
                sum(2..5, 0..3),
                sum(2..5, 2..5)
            ]
        );
    }

    #[test]
    fn upsample_is_nearest_then_conv() {
        let dev = Device::Cpu;
        let mut w = vec![0f32; 9];
        w[4] = 1.0; // identity 3×3 kernel
        let tensors = HashMap::from([
            (
                "conv.weight".to_string(),
                Tensor::from_vec(w, (1, 1, 3, 3), &dev).unwrap(),
            ),
            (
                "conv.bias".to_string(),
                Tensor::zeros(1, DType::F32, &dev).unwrap(),
            ),
        ]);
        let u = Upsample::new(1, vb(tensors)).unwrap();
        let x = Tensor::from_vec(vec![1f32, 2., 3., 4.], (1, 1, 2, 2), &dev).unwrap();
        let y: Vec<f32> = u
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(
            y,
            vec![
                1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.
            ]
        );
    }

    #[test]
    fn attention_is_single_head_with_scale_one_over_sqrt_c() {
        let dev = Device::Cpu;
        let c = 4;
        let eye = Tensor::eye(c, DType::F32, &dev)
            .unwrap()
            .reshape((c, c, 1, 1))
            .unwrap();
        let zeros = Tensor::zeros(c, DType::F32, &dev).unwrap();
        let mut tensors = HashMap::new();
        for n in ["q", "k", "v", "proj_out"] {
            tensors.insert(format!("{n}.weight"), eye.clone());
            tensors.insert(format!("{n}.bias"), zeros.clone());
        }
        tensors.insert(
            "norm.weight".into(),
            Tensor::ones(c, DType::F32, &dev).unwrap(),
        );
        tensors.insert("norm.bias".into(), zeros.clone());
        let a = AttnBlock::new(c, 1, vb(tensors)).unwrap();
        let x = Tensor::from_vec(
            (0..24)
                .map(|v| ((v * 7 % 11) as f32) / 5.0)
                .collect::<Vec<_>>(),
            (1, c, 2, 3),
            &dev,
        )
        .unwrap();
        let y = a.forward(&x).unwrap();

        // Reference: GroupNorm(1 group) then softmax(h hᵀ / √c) h, plus the residual.
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let mean = xs.iter().sum::<f32>() / 24.0;
        let var = xs.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 24.0;
        let hn: Vec<f32> = xs
            .iter()
            .map(|v| (v - mean) / (var + 1e-6).sqrt())
            .collect();
        let tok = |p: usize, ch: usize| hn[ch * 6 + p];
        let ys: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        for p in 0..6 {
            let logits: Vec<f32> = (0..6)
                .map(|j| (0..c).map(|ch| tok(p, ch) * tok(j, ch)).sum::<f32>() / 2.0)
                .collect();
            let m = logits.iter().cloned().fold(f32::MIN, f32::max);
            let e: Vec<f32> = logits.iter().map(|l| (l - m).exp()).collect();
            let s: f32 = e.iter().sum();
            for ch in 0..c {
                let att: f32 = (0..6).map(|j| e[j] / s * tok(j, ch)).sum();
                let want = xs[ch * 6 + p] + att;
                assert!(
                    (ys[ch * 6 + p] - want).abs() < 1e-5,
                    "p {p} ch {ch}: {} vs {want}",
                    ys[ch * 6 + p]
                );
            }
        }
    }
}
