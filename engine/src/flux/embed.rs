//! Conditioning embeddings: the timestep/guidance sinusoid and the MLP embedders that turn it, and
//! the pooled CLIP vector, into the modulation vector `vec`.

use candle_core::{D, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::linear::{BlockLinear, LinearPrecision, Operand};

/// BFL `layers.py:28-49` `timestep_embedding(t, dim, max_period=10000, time_factor=1000)`.
///
/// `t` is `(b)` in [0, 1] (any dtype). `1000·t` is computed in the compute dtype `dtype`, so a
/// bf16 model reproduces BFL's rounding of t and of 1000·t (t=0.966 → 964; guidance 2.5 → 2496);
/// f32 does no rounding. The sinusoid itself is f32: `[cos(t'·f) ‖ sin(t'·f)]`,
/// `f_i = exp(−ln(10000)·i/half)`, then cast to `dtype`.
pub fn timestep_embedding(t: &Tensor, dim: usize, dtype: DType) -> Result<Tensor> {
    const TIME_FACTOR: f64 = 1000.0;
    const MAX_PERIOD: f64 = 10_000.0;
    if !dim.is_multiple_of(2) {
        candle_core::bail!("timestep embedding dim {dim} is odd");
    }
    let half = dim / 2;
    // t' = time_factor · t in t's dtype (BFL passes t already in the model dtype).
    let t_scaled = (t.to_dtype(dtype)? * TIME_FACTOR)?.to_dtype(DType::F32)?;
    // torch: exp(-math.log(max_period) * arange(half, dtype=f32) / half), all f32.
    let neg_log = -(MAX_PERIOD.ln() as f32);
    let freqs: Vec<f32> = (0..half)
        .map(|i| (neg_log * i as f32 / half as f32).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t_scaled.unsqueeze(1)?.broadcast_mul(&freqs)?; // (b, half)
    Tensor::cat(&[args.cos()?, args.sin()?], D::Minus1)?.to_dtype(dtype) // (b, dim)
}

/// An input-embedding linear layer: always in the compute dtype (it multiplies one vector).
pub fn embed_linear(in_dim: usize, out_dim: usize, vb: VarBuilder<'_>) -> Result<BlockLinear> {
    BlockLinear::load(
        in_dim,
        out_dim,
        true,
        vb,
        LinearPrecision::Native,
        Operand::Vector,
    )
}

/// BFL `MLPEmbedder`: `out_layer(silu(in_layer(x)))` (layers.py:52-60).
#[derive(Debug, Clone)]
pub struct MlpEmbedder {
    in_layer: BlockLinear,
    out_layer: BlockLinear,
}

impl MlpEmbedder {
    pub fn new(in_dim: usize, hidden: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            in_layer: embed_linear(in_dim, hidden, vb.pp("in_layer"))?,
            out_layer: embed_linear(hidden, hidden, vb.pp("out_layer"))?,
        })
    }

    /// Its two linear layers by canonical name under `prefix` (`time_in`, ...).
    pub fn named_linears_mut(&mut self, prefix: &str) -> Vec<(String, &mut BlockLinear)> {
        vec![
            (format!("{prefix}.in_layer"), &mut self.in_layer),
            (format!("{prefix}.out_layer"), &mut self.out_layer),
        ]
    }
}

impl Module for MlpEmbedder {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        xs.apply(&self.in_layer)?.silu()?.apply(&self.out_layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sinusoid_is_cos_then_sin() -> Result<()> {
        let t = Tensor::new(&[0.5f32], &Device::Cpu)?;
        let e = timestep_embedding(&t, 8, DType::F32)?.to_vec2::<f32>()?;
        // i = 0 → frequency 1, argument 500.
        assert!((e[0][0] - 500f32.cos()).abs() < 1e-5);
        assert!((e[0][4] - 500f32.sin()).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn bf16_rounds_like_bfl() -> Result<()> {
        // Guidance 2.5 → bf16(2500) = 2496 (docs/engine.md §Conditioning vector); f32 keeps 2500.
        let g = Tensor::new(&[2.5f32], &Device::Cpu)?;
        let bf = timestep_embedding(&g, 2, DType::BF16)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let want = Tensor::new(&[2496f32.cos()], &Device::Cpu)?
            .to_dtype(DType::BF16)?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        assert_eq!(bf[0][0], want[0]);
        let f = timestep_embedding(&g, 2, DType::F32)?.to_vec2::<f32>()?;
        assert!((f[0][0] - 2500f32.cos()).abs() < 1e-4);
        Ok(())
    }
}
