//! `x·Wᵀ + b` on the CPU: the output is filled with the bias rows once, then the GEMM accumulates
//! into it (no separate bias pass and no zero-filled buffer). `x` may be row-strided (a column
//! slice of a wider activation), W is read transposed in place.

use candle_core::{Device, Result, Tensor};

use super::gemm::{MatMut, MatRef, gemm};
use super::{row_view, threads, to_vec_f32, with_f32};

/// `x (…, in)` · `w (out, in)`ᵀ + `bias (out)`; x f32 on the CPU.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (out_f, in_f) = w.dims2()?;
    let mut out_shape = x.dims().to_vec();
    match out_shape.last_mut() {
        Some(last) if *last == in_f => *last = out_f,
        _ => candle_core::bail!("linear: input {:?} does not end in {in_f}", x.shape()),
    }
    let bias_v = bias.map(to_vec_f32).transpose()?;
    let out = with_f32(x, |xs, xl| {
        let Some((rows, cols, rs, off)) = row_view(xl) else {
            return Ok(None);
        };
        with_f32(w, |ws, wl| {
            let Some((w0, w1)) = wl.contiguous_offsets() else {
                candle_core::bail!("linear: weight must be contiguous");
            };
            let mut out = match &bias_v {
                Some(b) => {
                    let mut o = Vec::with_capacity(rows * out_f);
                    for _ in 0..rows {
                        o.extend_from_slice(b);
                    }
                    o
                }
                None => vec![0.0; rows * out_f],
            };
            gemm(
                MatMut::rows(&mut out, rows, out_f, out_f),
                MatRef::rows(&xs[off..], rows, cols, rs),
                MatRef::transposed(&ws[w0..w1], in_f, out_f, in_f),
                1.0,
                bias_v.is_some(),
                threads(),
            );
            Ok(Some(out))
        })
    })?;
    match out {
        Some(out) => Tensor::from_vec(out, out_shape, &Device::Cpu),
        // Leading dims that do not merge into rows: make them contiguous once.
        None => linear(&x.contiguous()?, w, bias),
    }
}
