//! Fused elementwise kernels: one pass over memory where candle needs three to six, no `exp`/`tanh`
//! libm calls, and in-place updates of buffers the caller owns. Rows are split across rayon
//! workers; the per-row loops run under a `pulp` dispatch so they vectorise for the CPU at hand.

use candle_core::{CpuStorage, Device, InplaceOp1, InplaceOp2, Layout, Result, Tensor};
use rayon::prelude::*;

use super::math::gelu_tanh;
use super::{row_view, to_vec_f32, with_f32};
use crate::flux::ops::{LN_EPS, RMS_EPS};
use crate::flux::rope::RopeTable;

/// Rows per rayon task for row-wise kernels (keeps the dispatch overhead negligible).
const ROWS_PER_TASK: usize = 16;
const LANES: usize = 16;

/// Sum with LANES independent partial sums (vectorisable, like torch's cascade sums).
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Σ (x − m)².
#[inline(always)]
fn sum_sq_dev(xs: &[f32], m: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            let d = c[i] - m;
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>()
        + chunks
            .remainder()
            .iter()
            .map(|x| (x - m) * (x - m))
            .sum::<f32>()
}

/// `x` itself when its rows have one stride, else a contiguous copy.
fn uniform_rows(x: &Tensor) -> Result<Tensor> {
    if row_view(x.layout()).is_some() {
        Ok(x.clone())
    } else {
        x.contiguous()
    }
}

/// `(1 + scale)·LN(x) + shift` for `x (b, L, h)` with `shift`/`scale` `(b, 1, h)`.
pub fn modulated_layer_norm(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let (b_sz, seq_len, h) = x.dims3()?;
    let shift = to_vec_f32(shift)?;
    let one_plus_scale: Vec<f32> = to_vec_f32(scale)?.iter().map(|s| 1.0 + s).collect();
    if shift.len() != b_sz * h || one_plus_scale.len() != b_sz * h {
        candle_core::bail!("modulation must be (b, 1, {h})");
    }
    let x = uniform_rows(x)?;
    let mut out = vec![0.0f32; b_sz * seq_len * h];
    with_f32(&x, |xs, xl| {
        let (_, _, rs, off) =
            row_view(xl).expect("uniform_rows guarantees a row view; this is a bug");
        out.par_chunks_mut(ROWS_PER_TASK * h)
            .enumerate()
            .for_each(|(task, chunk)| {
                super::vectorized(
                    #[inline(always)]
                    || {
                        for (i, o) in chunk.chunks_exact_mut(h).enumerate() {
                            let r = task * ROWS_PER_TASK + i;
                            let bi = r / seq_len;
                            let row = &xs[off + r * rs..off + r * rs + h];
                            let mean = sum(row) / h as f32;
                            let var = sum_sq_dev(row, mean) / h as f32;
                            let rstd = 1.0 / (var + LN_EPS).sqrt();
                            let sc = &one_plus_scale[bi * h..(bi + 1) * h];
                            let sh = &shift[bi * h..(bi + 1) * h];
                            for j in 0..h {
                                o[j] = sc[j].mul_add((row[j] - mean) * rstd, sh[j]);
                            }
                        }
                    },
                );
            });
        Ok(())
    })?;
    Tensor::from_vec(out, (b_sz, seq_len, h), &Device::Cpu)
}

/// One stream's fused projection for [`attention_inputs`].
pub struct Stream<'a> {
    /// `(b, L_i, 3·H·D)`, rows possibly strided.
    pub qkv: &'a Tensor,
    pub q_scale: Vec<f32>,
    pub k_scale: Vec<f32>,
}

/// "B L (K H D) -> K B H L D" for the joint sequence of `streams`, with the QK RMSNorm (f32,
/// eps 1e-6, then × scale) and the interleaved RoPE on q and k, in one pass. Returns a
/// `(3, b, H, ΣL, D)` tensor: index 0 = q, 1 = k, 2 = v.
pub fn attention_inputs(
    streams: &[Stream<'_>],
    num_heads: usize,
    pe: &RopeTable,
) -> Result<Tensor> {
    let first = streams
        .first()
        .ok_or_else(|| candle_core::Error::Msg("no streams".into()))?;
    let (b_sz, _, width) = first.qkv.dims3()?;
    let head_dim = width / (3 * num_heads);
    let half = head_dim / 2;
    let lens: Vec<usize> = streams
        .iter()
        .map(|s| s.qkv.dim(1))
        .collect::<Result<_>>()?;
    let total: usize = lens.iter().sum();
    if pe.seq_len() != total {
        candle_core::bail!(
            "RoPE table has {} rows, joint sequence {total}",
            pe.seq_len()
        );
    }
    let cos = pe.cos.contiguous()?;
    let sin = pe.sin.contiguous()?;
    // Gather each stream's storage once; the guards are held for the whole kernel.
    let guards: Vec<_> = streams.iter().map(|s| s.qkv.storage_and_layout()).collect();
    let mut views = Vec::with_capacity(streams.len());
    for ((g, l), s) in guards.iter().zip(streams) {
        let candle_core::Storage::Cpu(CpuStorage::F32(data)) = &**g else {
            candle_core::bail!("attention_inputs expects CPU f32 projections");
        };
        let Some((_, cols, rs, off)) = row_view(l) else {
            candle_core::bail!("attention_inputs: projection rows must be uniformly strided");
        };
        if cols != 3 * num_heads * head_dim
            || s.q_scale.len() != head_dim
            || s.k_scale.len() != head_dim
        {
            candle_core::bail!(
                "attention_inputs: stream width {cols} or norm scales do not match {num_heads} heads × {head_dim}"
            );
        }
        views.push((data.as_slice(), rs, off));
    }
    let mut out = vec![0.0f32; 3 * b_sz * num_heads * total * head_dim];
    with_f32(&cos, |cs, cl| {
        with_f32(&sin, |ss, sl| {
            let (cs, ss) = (&cs[cl.start_offset()..], &ss[sl.start_offset()..]);
            out.par_chunks_mut(total * head_dim)
                .enumerate()
                .for_each(|(task, dst)| {
                    let part = task / (b_sz * num_heads);
                    let bi = (task / num_heads) % b_sz;
                    let h = task % num_heads;
                    super::vectorized(
                        #[inline(always)]
                        || {
                            let mut t = 0;
                            for ((data, rs, off), (s, len)) in
                                views.iter().zip(streams.iter().zip(&lens))
                            {
                                let scale = if part == 0 { &s.q_scale } else { &s.k_scale };
                                for tl in 0..*len {
                                    let src0 = off
                                        + (bi * len + tl) * rs
                                        + (part * num_heads + h) * head_dim;
                                    let src = &data[src0..src0 + head_dim];
                                    let o = &mut dst[t * head_dim..(t + 1) * head_dim];
                                    if part == 2 {
                                        o.copy_from_slice(src);
                                    } else {
                                        let ms = sum_sq_dev(src, 0.0) / head_dim as f32;
                                        let r = 1.0 / (ms + RMS_EPS as f32).sqrt();
                                        let pe0 = (bi * total + t) * half;
                                        for j in 0..half {
                                            let y0 = src[2 * j] * r * scale[2 * j];
                                            let y1 = src[2 * j + 1] * r * scale[2 * j + 1];
                                            let (c, sn) = (cs[pe0 + j], ss[pe0 + j]);
                                            o[2 * j] = c * y0 - sn * y1;
                                            o[2 * j + 1] = sn * y0 + c * y1;
                                        }
                                    }
                                    t += 1;
                                }
                            }
                        },
                    );
                });
            Ok(())
        })
    })?;
    Tensor::from_vec(out, (3, b_sz, num_heads, total, head_dim), &Device::Cpu)
}

struct GeluInPlace;

impl InplaceOp1 for GeluInPlace {
    fn name(&self) -> &'static str {
        "kontext-gelu-tanh-inplace"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let CpuStorage::F32(v) = storage else {
            candle_core::bail!("gelu in place expects f32");
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("gelu in place expects a contiguous tensor");
        };
        v[a..b].par_chunks_mut(1 << 14).for_each(|c| {
            super::vectorized(
                #[inline(always)]
                || {
                    for x in c.iter_mut() {
                        *x = gelu_tanh(*x);
                    }
                },
            );
        });
        Ok(())
    }
}

/// tanh-GELU of a tensor the caller owns, in place (contiguous f32 CPU).
pub fn gelu_tanh_in_place(x: Tensor) -> Result<Tensor> {
    let x = if x.is_contiguous() {
        x
    } else {
        x.contiguous()?
    };
    x.inplace_op1(&GeluInPlace)?;
    Ok(x)
}

/// `cat(attn, gelu(mlp))` along features: `attn (b, L, h)`, `mlp (b, L, m)` (rows may be strided).
pub fn cat_gelu(attn: &Tensor, mlp: &Tensor) -> Result<Tensor> {
    let (attn, mlp) = (uniform_rows(attn)?, uniform_rows(mlp)?);
    let (attn, mlp) = (&attn, &mlp);
    let (b_sz, seq_len, h) = attn.dims3()?;
    let m = mlp.dim(2)?;
    let width = h + m;
    let mut out = vec![0.0f32; b_sz * seq_len * width];
    with_f32(attn, |xa, la| {
        with_f32(mlp, |xm, lm| {
            let (Some((_, _, rsa, offa)), Some((_, _, rsm, offm))) = (row_view(la), row_view(lm))
            else {
                candle_core::bail!("cat_gelu: rows must be uniformly strided");
            };
            out.par_chunks_mut(ROWS_PER_TASK * width)
                .enumerate()
                .for_each(|(task, chunk)| {
                    super::vectorized(
                        #[inline(always)]
                        || {
                            for (i, o) in chunk.chunks_exact_mut(width).enumerate() {
                                let r = task * ROWS_PER_TASK + i;
                                o[..h].copy_from_slice(&xa[offa + r * rsa..offa + r * rsa + h]);
                                let src = &xm[offm + r * rsm..offm + r * rsm + m];
                                for (d, s) in o[h..].iter_mut().zip(src) {
                                    *d = gelu_tanh(*s);
                                }
                            }
                        },
                    );
                });
            Ok(())
        })
    })?;
    Tensor::from_vec(out, (b_sz, seq_len, width), &Device::Cpu)
}

/// `y ← x + gate·y`, with `gate (b, 1, h)` copied in.
struct GatedResidual {
    gate: Vec<f32>,
    seq_len: usize,
    h: usize,
}

impl InplaceOp2 for GatedResidual {
    fn name(&self) -> &'static str {
        "kontext-gated-residual-inplace"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (CpuStorage::F32(y), CpuStorage::F32(x)) = (s1, s2) else {
            candle_core::bail!("gated residual expects f32");
        };
        let Some((y0, y1)) = l1.contiguous_offsets() else {
            candle_core::bail!("gated residual: y must be contiguous");
        };
        let Some((_, _, rsx, offx)) = row_view(l2) else {
            candle_core::bail!("gated residual: x rows must be uniformly strided");
        };
        let (h, seq_len, gate) = (self.h, self.seq_len, &self.gate);
        y[y0..y1]
            .par_chunks_mut(ROWS_PER_TASK * h)
            .enumerate()
            .for_each(|(task, chunk)| {
                super::vectorized(
                    #[inline(always)]
                    || {
                        for (i, o) in chunk.chunks_exact_mut(h).enumerate() {
                            let r = task * ROWS_PER_TASK + i;
                            let g = &gate[(r / seq_len) * h..(r / seq_len + 1) * h];
                            let xr = &x[offx + r * rsx..offx + r * rsx + h];
                            for j in 0..h {
                                o[j] = g[j].mul_add(o[j], xr[j]);
                            }
                        }
                    },
                );
            });
        Ok(())
    }
}

/// `x + gate·y`, reusing `y`'s buffer (the caller gives up `y`).
pub fn gated_residual(x: &Tensor, gate: &Tensor, y: Tensor) -> Result<Tensor> {
    let (_, seq_len, h) = x.dims3()?;
    if y.dims() != x.dims() {
        candle_core::bail!("gated residual: x {:?} vs y {:?}", x.shape(), y.shape());
    }
    let y = if y.is_contiguous() {
        y
    } else {
        y.contiguous()?
    };
    let x = uniform_rows(x)?;
    y.inplace_op2(
        &x,
        &GatedResidual {
            gate: to_vec_f32(gate)?,
            seq_len,
            h,
        },
    )?;
    Ok(y)
}
