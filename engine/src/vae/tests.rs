#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::*;
use crate::tiny;
use crate::weights::{Layout, ModelDir, keys};

fn input(h: usize, w: usize) -> Tensor {
    let v: Vec<f32> = (0..3 * h * w)
        .map(|i| (((i * 37) % 101) as f32 / 50.0) - 1.0)
        .collect();
    Tensor::from_vec(v, (1, 3, h, w), &Device::Cpu).unwrap()
}

fn tiny_ae(dtype: DType) -> AutoEncoder {
    let dir = tempfile::tempdir().unwrap();
    tiny::write(dir.path(), 0, Layout::Diffusers).unwrap();
    let m = ModelDir::open(dir.path()).unwrap();
    AutoEncoder::new(m.vae_config(), m.vae_vb(dtype, &Device::Cpu)).unwrap()
}

pub(super) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn encode_is_scaled_shifted_mean_and_decode_inverts_the_scaling() {
    let ae = tiny_ae(DType::F32);
    let x = input(48, 64);
    let z = ae.encode(&x).unwrap();
    assert_eq!(z.dims(), &[1, 16, 6, 8]);
    let moments = ae.moments(&x).unwrap();
    assert_eq!(moments.dims(), &[1, 32, 6, 8]);
    let want = ((moments.narrow(1, 0, 16).unwrap() - 0.1159).unwrap() * 0.3611).unwrap();
    assert_eq!(max_abs_diff(&z, &want), 0.0);
    // The logvar half must not leak in.
    let with_logvar = ((moments.narrow(1, 16, 16).unwrap() - 0.1159).unwrap() * 0.3611).unwrap();
    assert!(max_abs_diff(&z, &with_logvar) > 1e-3);

    let img = ae.decode(&z).unwrap();
    assert_eq!(img.dims(), &[1, 3, 48, 64]);
    let manual = ae
        .decoder_forward(&((&z / 0.3611).unwrap() + 0.1159).unwrap())
        .unwrap();
    assert_eq!(max_abs_diff(&img, &manual), 0.0);
}

#[test]
fn odd_sizes_follow_the_pad_then_stride_rule() {
    // 40×24 → 20×12 → 10×6 → 5×3: the last two downsamples see odd sizes only with padding.
    let ae = tiny_ae(DType::F32);
    let z = ae.encode(&input(40, 24)).unwrap();
    assert_eq!(z.dims(), &[1, 16, 5, 3]);
    assert_eq!(ae.decode(&z).unwrap().dims(), &[1, 3, 40, 24]);
}

#[test]
fn group_count_comes_from_the_config() {
    let dev = Device::Cpu;
    let cfg32 = VaeConfig::tiny();
    let cfg8 = VaeConfig {
        norm_groups: 8,
        ..VaeConfig::tiny()
    };
    let tensors: HashMap<String, Tensor> = tiny::generate(1, &keys::vae_tensors(&cfg32))
        .into_iter()
        .map(|(k, t)| (k, Tensor::from_vec(t.data, t.shape, &dev).unwrap()))
        .collect();
    let a = AutoEncoder::new(
        &cfg32,
        VarBuilder::from_tensors(tensors.clone(), DType::F32, &dev),
    )
    .unwrap();
    let b = AutoEncoder::new(&cfg8, VarBuilder::from_tensors(tensors, DType::F32, &dev)).unwrap();
    let x = input(16, 16);
    let (za, zb) = (a.encode(&x).unwrap(), b.encode(&x).unwrap());
    assert_eq!(za.dims(), zb.dims());
    assert!(
        max_abs_diff(&za, &zb) > 1e-4,
        "the group count must change the result"
    );
}
