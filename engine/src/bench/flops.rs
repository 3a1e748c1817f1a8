//! Floating-point work of one transformer forward, and the compute floor it implies: the time
//! the work would take at the GPU's dense bf16 peak.
//!
//! Per token, every double block applies (per stream) qkv 3H² + proj H² + MLP 2·H·M weights and
//! every single block linear1 H·(3H+M) + linear2 (H+M)·H: both 4H² + 2HM, so the linear work is
//! 2 FLOP × (blocks) × (4H² + 2HM) × L. Attention is 4·L²·H per block (q·kᵀ and p·v). Modulation,
//! embedders and the final layer run once per image, not per token, and are left out (at the 12B
//! size: 112.4 + 53.1 = 165.4 TFLOP per step at L = 8704).

use crate::config::FluxConfig;

/// Dense bf16 peak of an H100 SXM / H200 (NVIDIA's H100 and H200 Tensor Core GPU datasheets;
/// the datasheets' higher figure assumes structured sparsity), TFLOP/s.
pub const H100_BF16_PEAK_TFLOPS: f64 = 989.0;

/// FLOPs of one transformer forward over `tokens` joint tokens (text + target + context).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForwardFlops {
    pub linear: f64,
    pub attention: f64,
}

impl ForwardFlops {
    pub fn new(cfg: &FluxConfig, tokens: usize) -> Self {
        let blocks = (cfg.depth + cfg.depth_single_blocks) as f64;
        let h = cfg.hidden_size as f64;
        let m = cfg.mlp_hidden() as f64;
        let l = tokens as f64;
        Self {
            linear: 2.0 * blocks * (4.0 * h * h + 2.0 * h * m) * l,
            attention: blocks * 4.0 * l * l * h,
        }
    }

    pub fn total(&self) -> f64 {
        self.linear + self.attention
    }

    /// The time this work takes at `peak_tflops` (the floor).
    pub fn floor_seconds(&self, peak_tflops: f64) -> f64 {
        self.total() / (peak_tflops * 1e12)
    }

    /// Model FLOPs utilisation of a forward that took `seconds`.
    pub fn mfu(&self, seconds: f64, peak_tflops: f64) -> f64 {
        if seconds <= 0.0 {
            return 0.0;
        }
        self.floor_seconds(peak_tflops) / seconds
    }
}

/// Joint tokens of an edit: 512 T5 tokens + target + context (Kontext packs 16×16 pixels per token).
pub fn edit_tokens(
    text_tokens: usize,
    width: u32,
    height: u32,
    context: Option<(u32, u32)>,
) -> usize {
    let grid = |w: u32, h: u32| (w / 16) as usize * (h / 16) as usize;
    text_tokens + grid(width, height) + context.map_or(0, |(w, h)| grid(w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_floor_for_a_1024_edit() {
        // Worked by hand from the module doc's formulas at the 12B size (H 3072, M 12288, 57
        // blocks): 8704 tokens → 112.4 TF linear, 53.1 TF attention, 165.4 total,
        // 167 ms per step at 989 TF/s; T2I at 4608 tokens → 74.4 TF.
        let cfg = FluxConfig::kontext_dev();
        let l = edit_tokens(512, 1024, 1024, Some((1024, 1024)));
        assert_eq!(l, 8704);
        let f = ForwardFlops::new(&cfg, l);
        assert!((f.linear / 1e12 - 112.4).abs() < 0.1, "{f:?}");
        assert!((f.attention / 1e12 - 53.1).abs() < 0.1, "{f:?}");
        assert!((f.total() / 1e12 - 165.4).abs() < 0.1, "{f:?}");
        assert!((f.floor_seconds(H100_BF16_PEAK_TFLOPS) - 0.167).abs() < 0.001);
        let t2i = ForwardFlops::new(&cfg, edit_tokens(512, 1024, 1024, None));
        assert!((t2i.total() / 1e12 - 74.4).abs() < 0.1, "{t2i:?}");
    }

    #[test]
    fn mfu_is_floor_over_measured() {
        let f = ForwardFlops::new(&FluxConfig::kontext_dev(), 8704);
        let floor = f.floor_seconds(H100_BF16_PEAK_TFLOPS);
        assert!((f.mfu(2.0 * floor, H100_BF16_PEAK_TFLOPS) - 0.5).abs() < 1e-12);
        assert_eq!(f.mfu(0.0, H100_BF16_PEAK_TFLOPS), 0.0);
    }
}
