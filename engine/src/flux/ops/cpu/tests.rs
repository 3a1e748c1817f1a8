//! Each CPU kernel against the candle composition it replaces, on odd sizes and strided inputs.

use candle_core::{D, Device, Module, Result, Tensor};

use super::{attention, elementwise, linear};
use crate::flux::ops::{QkvStream, generic};
use crate::flux::rope::RopeTable;
use crate::flux::sampling::{position_ids, relative_l2};

fn randn(shape: &[usize]) -> Result<Tensor> {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu)
}

fn close(a: &Tensor, b: &Tensor, tol: f32) -> Result<()> {
    assert_eq!(a.dims(), b.dims());
    let d = relative_l2(a, b)?;
    assert!(d < tol, "rel L2 {d} ≥ {tol}");
    Ok(())
}

#[test]
fn linear_with_bias_and_strided_input() -> Result<()> {
    let wide = randn(&[2, 37, 50])?;
    let x = wide.narrow(D::Minus1, 7, 33)?; // rows 50 apart
    let w = randn(&[21, 33])?;
    let b = randn(&[21])?;
    let want = candle_nn::Linear::new(w.clone(), Some(b.clone())).forward(&x)?;
    close(&linear::linear(&x, &w, Some(&b))?, &want, 1e-6)?;
    let want = candle_nn::Linear::new(w.clone(), None).forward(&x)?;
    close(&linear::linear(&x, &w, None)?, &want, 1e-6)
}

#[test]
fn modulated_layer_norm_matches() -> Result<()> {
    let x = ((randn(&[2, 19, 40])? * 3.0)? + 1.5)?;
    let shift = randn(&[2, 1, 40])?;
    let scale = randn(&[2, 1, 40])?;
    let want = generic::modulated_layer_norm(&x, &shift, &scale)?;
    close(
        &elementwise::modulated_layer_norm(&x, &shift, &scale)?,
        &want,
        1e-6,
    )
}

#[test]
fn gelu_cat_and_residual_match() -> Result<()> {
    let x = (randn(&[2, 13, 70])? * 4.0)?;
    close(
        &elementwise::gelu_tanh_in_place(x.copy()?)?,
        &x.gelu()?,
        1e-6,
    )?;
    let wide = randn(&[2, 13, 90])?;
    let mlp = wide.narrow(D::Minus1, 20, 70)?;
    let attn = randn(&[2, 13, 16])?;
    close(
        &elementwise::cat_gelu(&attn, &mlp)?,
        &generic::cat_gelu(&attn, &mlp)?,
        1e-6,
    )?;
    let base = randn(&[2, 13, 16])?;
    let gate = randn(&[2, 1, 16])?;
    let want = generic::gated_residual(&base, &gate, &attn)?;
    close(
        &elementwise::gated_residual(&base, &gate, attn.copy()?)?,
        &want,
        1e-6,
    )
}

#[test]
fn attention_inputs_match_for_two_strided_streams() -> Result<()> {
    let (heads, dim) = (3, 8);
    let txt = randn(&[2, 5, 3 * heads * dim])?;
    let wide = randn(&[2, 12, 3 * heads * dim + 11])?;
    let img = wide.narrow(D::Minus1, 0, 3 * heads * dim)?;
    let (qs1, ks1, qs2, ks2) = (
        randn(&[dim])?,
        randn(&[dim])?,
        randn(&[dim])?,
        randn(&[dim])?,
    );
    let dev = Device::Cpu;
    let ids = Tensor::cat(
        &[
            Tensor::zeros((2, 5, 3), candle_core::DType::F32, &dev)?,
            position_ids(2, 3, 4, 1.0, &dev)?,
        ],
        1,
    )?;
    let pe = RopeTable::new(&ids, &[2, 2, 4], 10_000.0, &dev)?;
    let streams = [
        QkvStream {
            qkv: &txt,
            q_scale: &qs1,
            k_scale: &ks1,
        },
        QkvStream {
            qkv: &img,
            q_scale: &qs2,
            k_scale: &ks2,
        },
    ];
    let (q, k, v) = generic::attention_inputs(&streams, heads, &pe)?;
    let fast = elementwise::attention_inputs(
        &[
            elementwise::Stream {
                qkv: &txt,
                q_scale: qs1.to_vec1()?,
                k_scale: ks1.to_vec1()?,
            },
            elementwise::Stream {
                qkv: &img,
                q_scale: qs2.to_vec1()?,
                k_scale: ks2.to_vec1()?,
            },
        ],
        heads,
        &pe,
    )?;
    close(&fast.get(0)?, &q, 1e-6)?;
    close(&fast.get(1)?, &k, 1e-6)?;
    close(&fast.get(2)?, &v, 0.0 + f32::EPSILON)
}

#[test]
fn blocked_attention_matches_materialised() -> Result<()> {
    // L = 150 is not a multiple of the tile; b = 2, 3 heads of 8.
    let q = (randn(&[2, 3, 150, 8])? * 2.0)?;
    let k = randn(&[2, 3, 150, 8])?;
    let v = randn(&[2, 3, 150, 8])?;
    close(
        &attention::attention(&q, &k, &v)?,
        &crate::flux::attention::attention(&q, &k, &v)?,
        1e-6,
    )
}
