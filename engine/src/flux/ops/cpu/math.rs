//! Vectorisable f32 transcendental functions for the CPU kernels.
//!
//! Each is branch-free straight-line arithmetic over slices, so LLVM vectorises the loops to
//! whatever the surrounding `pulp` dispatch enabled (AVX-512 / AVX2+FMA / SSE2). Accuracy: `exp` is
//! within 2 ulp of the correctly rounded value over the whole f32 range that does not under- or
//! overflow (Cody–Waite reduction by ln 2 and a degree-6 polynomial on [−ln2/2, ln2/2]); the
//! activations built on it are within a few ulp (relative 1e-7-ish) of f64 references.

/// 1.5·2²³: adding then subtracting it rounds an f32 in ±2²² to the nearest integer.
const ROUND_MAGIC: f32 = 12_582_912.0;
const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split so that n·LN2_HI is exact for |n| < 2⁸.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Inputs are clamped to [EXP_MIN, EXP_MAX] so that n = round(x/ln 2) stays in [−126, 127] and
/// 2ⁿ is a normal float: e^x saturates at e^88 ≈ 1.7e38 and bottoms out at e^−87 ≈ 1.6e−38.
const EXP_MAX: f32 = 88.0;
const EXP_MIN: f32 = -87.0;

/// e^x for one value (inlined into the slice loops).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    // n = round(x / ln 2); r = x − n·ln 2 ∈ [−ln2/2, ln2/2].
    let k = x.mul_add(LOG2_E, ROUND_MAGIC);
    let n = k - ROUND_MAGIC;
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    // Taylor coefficients to degree 6 (truncation error < 2e-8 relative on the interval).
    let mut p = 1.0 / 720.0f32;
    p = p.mul_add(r, 1.0 / 120.0);
    p = p.mul_add(r, 1.0 / 24.0);
    p = p.mul_add(r, 1.0 / 6.0);
    p = p.mul_add(r, 0.5);
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    // 2ⁿ by building the exponent field; n ∈ [−126, 127] after the clamp. k's bit pattern is
    // 0x4B40_0000 + n (the magic constant puts n in the low mantissa bits), so the exponent comes
    // from integer adds and a shift: an `as i32` cast would be a saturating conversion that LLVM
    // does not vectorise.
    let biased = k
        .to_bits()
        .wrapping_add(127u32.wrapping_sub(ROUND_MAGIC.to_bits()));
    let scale = f32::from_bits(biased << 23);
    p * scale
}

/// √(2/π), the tanh-GELU constant.
const GELU_C: f32 = 0.797_884_6;

/// GELU, tanh approximation: `0.5·x·(1 + tanh(c·(x + 0.044715·x³)))`, evaluated as the equal
/// `x / (1 + e^(−2u))` (no cancellation for negative u).
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    let u = GELU_C * (x + 0.044_715 * x * x * x);
    x / (1.0 + exp(-2.0 * u))
}

/// `x·sigmoid(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f32, b: f64) -> f64 {
        if b == 0.0 {
            f64::from(a).abs()
        } else {
            ((f64::from(a) - b) / b).abs()
        }
    }

    #[test]
    fn exp_is_accurate_over_its_range() {
        let mut worst = 0.0f64;
        let mut x = -86.99f32;
        while x < 88.0 {
            worst = worst.max(rel(exp(x), f64::from(x).exp()));
            x += 0.001_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-200.0) < 2e-38 && exp(-200.0) > 0.0);
        assert!(exp(200.0).is_finite());
    }

    #[test]
    fn gelu_and_silu_match_f64_references() {
        let mut worst_g = 0.0f64;
        let mut worst_s = 0.0f64;
        let mut x = -12.0f32;
        while x < 12.0 {
            let xd = f64::from(x);
            let u = (2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd * xd * xd);
            let g = 0.5 * xd * (1.0 + u.tanh());
            let s = xd / (1.0 + (-xd).exp());
            // Absolute floor: near the zeros of the functions relative error is meaningless.
            worst_g = worst_g.max((f64::from(gelu_tanh(x)) - g).abs() / g.abs().max(1e-3));
            worst_s = worst_s.max((f64::from(silu(x)) - s).abs() / s.abs().max(1e-3));
            x += 0.000_73;
        }
        // In the negative tail g ≈ x·e^(2u): the f32 rounding of u (shared by any f32 evaluation,
        // torch's included) is amplified by 2|u|, to ~1e-6 relative.
        assert!(worst_g < 3e-6, "gelu worst {worst_g}");
        assert!(worst_s < 1e-6, "silu worst {worst_s}");
    }
}
