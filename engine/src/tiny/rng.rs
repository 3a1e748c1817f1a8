//! The tiny model's portable random numbers: SplitMix64 plus Box–Muller, with `libm` (a pure
//! Rust port of musl's libm) for `log`/`cos`/`sin` so the same seed gives the same bits on any
//! platform, whatever the thread count or the system math library.
//!
//! Every tensor gets its own stream, seeded from the model seed and the tensor's name, so the
//! values of one tensor do not depend on which other tensors exist or the order they are drawn.

/// SplitMix64 (Steele, Lea, Flood 2014): a 64-bit state advanced by a Weyl increment.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
    /// The second Box–Muller value, kept for the next draw.
    spare: Option<f64>,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare: None,
        }
    }

    /// The stream of tensor `name` under model seed `seed`.
    pub fn for_tensor(seed: u64, name: &str) -> Self {
        // FNV-1a of the name, then one mixing round so nearby seeds give unrelated streams.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.as_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut mix = Self::new(seed ^ h);
        Self::new(mix.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1]: 53 random bits, never 0 (Box–Muller takes its log).
    fn next_open_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal draw (Box–Muller; both values of each pair are used).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = self.next_open_unit();
        let u2 = self.next_open_unit();
        let r = libm::sqrt(-2.0 * libm::log(u1));
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * libm::sin(theta));
        r * libm::cos(theta)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // Reference values of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(r.next_u64(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn streams_depend_on_seed_and_name() {
        let a = SplitMix64::for_tensor(0, "img_in.weight").next_u64();
        assert_eq!(a, SplitMix64::for_tensor(0, "img_in.weight").next_u64());
        assert_ne!(a, SplitMix64::for_tensor(1, "img_in.weight").next_u64());
        assert_ne!(a, SplitMix64::for_tensor(0, "img_in.bias").next_u64());
    }

    #[test]
    fn normal_draws_have_unit_moments() {
        let mut r = SplitMix64::new(42);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }
}
