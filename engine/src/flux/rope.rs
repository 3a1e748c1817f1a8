//! Rotary position embedding over the three Kontext position axes (index, row, col).
//!
//! The tables are built on the host in f32 from f32 ids, exactly like BFL `math.py:15-30`
//! (docs/engine.md §RoPE): per-axis frequencies ω_j = 1/θ^(2j/d_a), the pairs of axis 0
//! first, then axis 1, then axis 2, and interleaved rotation of adjacent pairs (x₂ₖ, x₂ₖ₊₁). q and
//! k are rotated in f32 and cast back to the compute dtype (BFL `apply_rope`), so bf16 never
//! touches an angle. Building on the host makes the tables identical on every device.

use candle_core::{DType, Device, Result, Tensor};

/// cos/sin of every rotation angle, `(b, seq_len, head_dim / 2)` f32 each, on the compute device.
#[derive(Debug, Clone)]
pub struct RopeTable {
    pub cos: Tensor,
    pub sin: Tensor,
}

/// Per-axis frequencies ω_j for an axis of `dim` channels, in f32 like BFL:
/// `scale = arange(0, dim, 2) / dim; omega = 1.0 / theta**scale` (math.py:18-19).
fn axis_frequencies(dim: usize, theta: f64) -> Vec<f32> {
    (0..dim)
        .step_by(2)
        .map(|i| {
            let scale = i as f32 / dim as f32;
            1.0 / (theta as f32).powf(scale)
        })
        .collect()
}

impl RopeTable {
    /// Tables for position ids `(b, seq_len, n_axes)` (any float dtype; read as f32), placed on
    /// `device`.
    ///
    /// `axes_dim` gives each axis' share of the head dim; every entry must be even and the sum is
    /// the head dim.
    pub fn new(ids: &Tensor, axes_dim: &[usize], theta: f64, device: &Device) -> Result<Self> {
        let (b_sz, seq_len, n_axes) = ids.dims3()?;
        if n_axes != axes_dim.len() {
            candle_core::bail!(
                "position ids have {n_axes} axes but the model has axes_dim {axes_dim:?}"
            );
        }
        if let Some(odd) = axes_dim.iter().find(|d| !d.is_multiple_of(2)) {
            candle_core::bail!("every RoPE axis dim must be even, got {odd} in {axes_dim:?}");
        }
        let freqs: Vec<Vec<f32>> = axes_dim
            .iter()
            .map(|&d| axis_frequencies(d, theta))
            .collect();
        let half: usize = axes_dim.iter().sum::<usize>() / 2;
        let ids = ids.to_dtype(DType::F32)?.to_vec3::<f32>()?;
        let mut cos = Vec::with_capacity(b_sz * seq_len * half);
        let mut sin = Vec::with_capacity(b_sz * seq_len * half);
        for batch in &ids {
            for pos in batch {
                for (axis, omega) in freqs.iter().enumerate() {
                    for w in omega {
                        // BFL einsum("...n,d->...nd", pos, omega): one f32 product per angle.
                        let angle = pos[axis] * w;
                        cos.push(angle.cos());
                        sin.push(angle.sin());
                    }
                }
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (b_sz, seq_len, half), device)?,
            sin: Tensor::from_vec(sin, (b_sz, seq_len, half), device)?,
        })
    }

    /// Rows `[start, start + len)` of the sequence axis (e.g. the text part).
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            cos: self.cos.narrow(1, start, len)?.contiguous()?,
            sin: self.sin.narrow(1, start, len)?.contiguous()?,
        })
    }

    pub fn seq_len(&self) -> usize {
        self.cos.dims().get(1).copied().unwrap_or(0)
    }
}

/// Rotates `x` `(b, heads, seq_len, head_dim)` by the table, in f32, and casts back to `x`'s dtype
/// (BFL `apply_rope`: `xq.float()` … `.type_as(xq)`).
pub fn apply_rope(x: &Tensor, table: &RopeTable) -> Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?.contiguous()?;
    candle_nn::rotary_emb::rope_i(&x32, &table.cos, &table.sin)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequencies_are_per_axis() {
        // Axis dim 4: ω = [1, 1/sqrt(θ)]; 16: first 1, last θ^(-14/16).
        let f = axis_frequencies(4, 10_000.0);
        assert_eq!(f.len(), 2);
        assert!((f[0] - 1.0).abs() < 1e-7);
        assert!((f[1] - 0.01).abs() < 1e-7);
        let f = axis_frequencies(16, 10_000.0);
        assert!((f[7] - 10_000f32.powf(-14.0 / 16.0)).abs() < 1e-9);
    }

    #[test]
    fn table_layout_axis_then_pair() -> Result<()> {
        // One token at (index 1, row 2, col 3) with axes [2, 2, 2]: three pairs, ω = 1 each.
        let ids = Tensor::new(&[[[1f32, 2., 3.]]], &Device::Cpu)?;
        let t = RopeTable::new(&ids, &[2, 2, 2], 10_000.0, &Device::Cpu)?;
        let cos = t.cos.flatten_all()?.to_vec1::<f32>()?;
        let sin = t.sin.flatten_all()?.to_vec1::<f32>()?;
        for (i, p) in [1f32, 2., 3.].iter().enumerate() {
            assert!((cos[i] - p.cos()).abs() < 1e-7);
            assert!((sin[i] - p.sin()).abs() < 1e-7);
        }
        Ok(())
    }

    #[test]
    fn rotation_is_interleaved() -> Result<()> {
        // Angle π/2 on the only pair: (x0, x1) → (−x1, x0).
        let ids = Tensor::new(&[[[std::f32::consts::FRAC_PI_2]]], &Device::Cpu)?;
        let t = RopeTable::new(&ids, &[2], 10_000.0, &Device::Cpu)?;
        let x = Tensor::new(&[[[[3f32, 5.]]]], &Device::Cpu)?; // (1, 1, 1, 2)
        let y = apply_rope(&x, &t)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(
            (y[0] + 5.0).abs() < 1e-6 && (y[1] - 3.0).abs() < 1e-6,
            "{y:?}"
        );
        Ok(())
    }
}
