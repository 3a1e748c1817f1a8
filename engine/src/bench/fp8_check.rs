//! The FP8 linear on the benchmark's device against the exact FP8 arithmetic in f32 on the CPU,
//! and, on CUDA, its speed beside bf16: `bench-gpu`'s check of the cuBLASLt FP8 GEMM
//! (`kontext_cuda::fp8_gemm`, feature `fp8-gemm`), or of the portable dequantizing path where
//! that GEMM is not built.
//!
//! Both sides quantize the same values: the weights and inputs are rounded to the device dtype
//! first, so the reference's E4M3 codes and scales are the device's. What differs is the
//! accumulation order and the bf16 output (plus, on the portable path, the bf16 rounding of the
//! dequantized operands), so the bound is bf16's.

use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Linear;

use super::checks::{BF16_TOLERANCE, CheckOutcome};
use crate::EngineError;
use crate::flux::linear::{self, BlockLinear, Fp8Linear, Operand};
use crate::noise::SplitMix64;

/// Standard-normal f32 values × `std` of `dims` on the CPU from `SplitMix64(seed)`.
fn normal(seed: u64, dims: &[usize], std: f32) -> Result<Tensor, EngineError> {
    let mut rng = SplitMix64::new(seed);
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| std * rng.normal_f32()).collect();
    Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
}

/// `rows` tokens through a random `in_dim → out_dim` FP8 token layer (with bias) on `dev` in
/// `dtype`, against the same layer in f32 on the CPU; on CUDA also prints the time per call of
/// the FP8 layer, the portable FP8 path and a bf16 linear at the same shape.
pub fn fp8_linear(
    dev: &Device,
    dtype: DType,
    shapes: &[(usize, usize, usize)],
) -> Result<Vec<CheckOutcome>, EngineError> {
    let mut out = Vec::new();
    for (i, &(rows, in_dim, out_dim)) in shapes.iter().enumerate() {
        let seed = 0x0f8 + 10 * i as u64;
        let round = |t: Tensor| -> Result<Tensor, EngineError> {
            Ok(t.to_dtype(dtype)?.to_dtype(DType::F32)?)
        };
        let w = round(normal(seed, &[out_dim, in_dim], 0.02)?)?;
        let b = round(normal(seed + 1, &[out_dim], 0.1)?)?;
        let x = round(normal(seed + 2, &[1, rows, in_dim], 1.0)?)?;
        let reference = BlockLinear::fp8(Fp8Linear::quantize(
            &Linear::new(w.clone(), Some(b.clone())),
            Operand::Tokens,
        )?);
        let want = reference.forward(&x)?; // (1, rows, out) f32
        let on_dev =
            |t: &Tensor| -> Result<Tensor, EngineError> { Ok(t.to_dtype(dtype)?.to_device(dev)?) };
        let dense = Linear::new(on_dev(&w)?, Some(on_dev(&b)?));
        let layer = BlockLinear::fp8(Fp8Linear::quantize(&dense, Operand::Tokens)?);
        let xd = on_dev(&x)?;
        let got = layer.forward(&xd)?.to_dtype(DType::F32)?;
        out.push(CheckOutcome::new(
            format!(
                "fp8 linear {rows}x{in_dim}->{out_dim} ({}, gemm: {})",
                if dev.is_cuda() { "cuda" } else { "cpu" },
                linear::fp8_gemm_path()
            ),
            &got,
            &want,
            BF16_TOLERANCE,
        )?);
        if dev.is_cuda() {
            let time = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> Result<f64, EngineError> {
                f()?;
                dev.synchronize()?;
                let runs = 20;
                let t = Instant::now();
                for _ in 0..runs {
                    f()?;
                }
                dev.synchronize()?;
                Ok(t.elapsed().as_secs_f64() * 1e3 / runs as f64)
            };
            let gemm_ms = time(&|| layer.forward(&xd))?;
            linear::set_fp8_gemm(false);
            let portable_ms = time(&|| layer.forward(&xd));
            linear::set_fp8_gemm(true);
            let portable_ms = portable_ms?;
            let bf16_ms = time(&|| dense.forward(&xd))?;
            let tflops = |ms: f64| 2.0 * (rows * in_dim * out_dim) as f64 / (ms * 1e-3) / 1e12;
            eprintln!(
                "  fp8 linear {rows}x{in_dim}->{out_dim}: fp8 ({}) {gemm_ms:.3} ms \
                 ({:.0} TFLOP/s), fp8 portable {portable_ms:.3} ms, bf16 {bf16_ms:.3} ms \
                 ({:.0} TFLOP/s)",
                linear::fp8_gemm_path(),
                tflops(gemm_ms),
                tflops(bf16_ms)
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_portable_fp8_linear_in_bf16_on_the_cpu_is_within_the_bf16_bound()
    -> Result<(), EngineError> {
        let outcomes = fp8_linear(&Device::Cpu, DType::BF16, &[(37, 64, 48)])?;
        assert_eq!(outcomes.len(), 1);
        assert!(outcomes[0].passed(), "{outcomes:?}");
        assert!(
            outcomes[0].rel_l2 > 0.0,
            "bf16 must differ from f32 somewhere"
        );
        Ok(())
    }
}
