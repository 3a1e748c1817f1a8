//! Seeded Gaussian noise that is identical on every platform, thread count and device.
//!
//! The generator is our own (SplitMix64, Steele et al. 2014) feeding a Box–Muller transform in f64,
//! so the initial latents for a seed never depend on a library's RNG or on the compute device:
//! noise is drawn on the CPU and then moved. It cannot reproduce `torch.randn`; parity runs pass
//! the reference's noise as initial latents instead, as diffusers' `latents=` argument allows
//! (docs/engine.md §Noise).

use candle_core::{DType, Device, Result, Tensor};

use super::flux::sampling::pack;

/// SplitMix64: a 64-bit state advanced by a Weyl increment and mixed (public-domain reference).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
    /// Second Box–Muller output, kept for the next call.
    spare: Option<f64>,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare: None,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller; both outputs are used).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // 1 − u ∈ (0, 1], so the log is finite.
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }

    pub fn normal_f32(&mut self) -> f32 {
        self.normal() as f32
    }
}

/// Standard normal values, `n` of them, from `seed`.
pub fn gaussian(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..n).map(|_| rng.normal_f32()).collect()
}

/// Packed initial noise for a `width × height` pixel target: N(0, 1) drawn as the unpacked latent
/// `(1, channels, height/8, width/8)` in row-major order (like BFL `get_noise`), then packed 2×2
/// to `(1, (h/16)(w/16), 4·channels)`, cast to `dtype` and moved to `device`.
pub fn packed_noise(
    seed: u64,
    width: u32,
    height: u32,
    channels: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let (h, w) = (
        2 * height.div_ceil(16) as usize,
        2 * width.div_ceil(16) as usize,
    );
    let data = gaussian(seed, channels * h * w);
    let x = Tensor::from_vec(data, (1, channels, h, w), &Device::Cpu)?;
    pack(&x)?.to_dtype(dtype)?.to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // First outputs for seed 1234567 from the published reference implementation.
        let mut r = SplitMix64::new(1_234_567);
        let want = [
            6_457_827_717_110_365_317u64,
            3_203_168_211_198_807_973,
            9_817_491_932_198_370_423,
            4_593_380_528_125_082_431,
            16_408_922_859_458_223_821,
        ];
        for w in want {
            assert_eq!(r.next_u64(), w);
        }
    }

    #[test]
    fn gaussian_moments_and_determinism() {
        let a = gaussian(7, 200_000);
        assert_eq!(a, gaussian(7, 200_000));
        assert_ne!(a[..16], gaussian(8, 16)[..]);
        let n = a.len() as f64;
        let mean = a.iter().map(|v| f64::from(*v)).sum::<f64>() / n;
        let var = a
            .iter()
            .map(|v| (f64::from(*v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }

    #[test]
    fn packed_noise_shape() -> Result<()> {
        let x = packed_noise(0, 64, 48, 16, DType::F32, &Device::Cpu)?;
        assert_eq!(x.dims(), &[1, 12, 64]);
        Ok(())
    }
}
