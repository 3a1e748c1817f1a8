//! Sampling for FLUX.1 Kontext: the shifted schedule, 2×2 latent packing, position ids and the
//! Euler loop that concatenates the context tokens after the target every step and keeps only the
//! target's prediction (BFL `sampling.py` @ 802fb47; docs/engine.md §Schedule, §Denoising loop).

use candle_core::{D, DType, Device, Result, Tensor};

use super::model::{Flux, FluxInputs};
use super::step_cache::{StepCache, StepCaching};
use crate::{EngineError, ReferencePositions, StepControl};

/// BFL `get_lin_function(x1=256, y1=0.5, x2=4096, y2=1.15)` (sampling.py:283-287): the schedule
/// shift μ for `tokens` target tokens.
pub fn mu_for_tokens(tokens: usize) -> f64 {
    let m = (1.15 - 0.5) / (4096.0 - 256.0);
    let b = 0.5 - m * 256.0;
    m * tokens as f64 + b
}

/// BFL `time_shift(mu, 1.0, t) = e^μ / (e^μ + (1/t − 1))` (sampling.py:279-280), in f32 like the
/// torch tensor it is applied to. t = 0 gives 0 (1/0 = inf).
pub fn time_shift(mu: f64, t: f32) -> f32 {
    let e = mu.exp() as f32;
    e / (e + (1.0 / t - 1.0))
}

/// `torch.linspace(1, 0, n)` in f32, reproducing torch's two-sided evaluation
/// (start + i·step for the first half, end − (n−1−i)·step for the rest).
fn linspace_one_to_zero(n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![1.0];
    }
    let step = (0.0f32 - 1.0) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                1.0 + step * i as f32
            } else {
                0.0 - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// BFL `get_schedule(num_steps, image_seq_len)` (sampling.py:290-305): `linspace(1, 0, N+1)`
/// shifted with μ from the TARGET token count. Returns N+1 times from 1 down to 0.
pub fn schedule(num_steps: usize, target_tokens: usize) -> Vec<f32> {
    let mu = mu_for_tokens(target_tokens);
    linspace_one_to_zero(num_steps + 1)
        .into_iter()
        .map(|t| time_shift(mu, t))
        .collect()
}

/// `b c (h ph) (w pw) -> b (h w) (c ph pw)` with ph = pw = 2 (sampling.py:33, diffusers
/// `_pack_latents`): feature index = c·4 + ph·2 + pw, tokens row-major over the (h/2, w/2) grid.
pub fn pack(x: &Tensor) -> Result<Tensor> {
    let (b_sz, c, h, w) = x.dims4()?;
    if !h.is_multiple_of(2) || !w.is_multiple_of(2) {
        candle_core::bail!("latent {h}×{w} is not a multiple of 2 and cannot be packed 2×2");
    }
    x.reshape((b_sz, c, h / 2, 2, w / 2, 2))? // (b, c, h', ph, w', pw)
        .permute((0, 2, 4, 1, 3, 5))? // (b, h', w', c, ph, pw)
        .reshape((b_sz, (h / 2) * (w / 2), c * 4)) // (b, h'·w', c·4)
}

/// Inverse of [`pack`]: `(b, (h/2)(w/2), c·4)` → `(b, c, h, w)` for a latent of `h × w`.
pub fn unpack(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b_sz, n, f) = x.dims3()?;
    if !h.is_multiple_of(2)
        || !w.is_multiple_of(2)
        || n != (h / 2) * (w / 2)
        || !f.is_multiple_of(4)
    {
        candle_core::bail!("cannot unpack {:?} into a {h}×{w} latent", x.shape());
    }
    x.reshape((b_sz, h / 2, w / 2, f / 4, 2, 2))? // (b, h', w', c, ph, pw)
        .permute((0, 3, 1, 4, 2, 5))? // (b, c, h', ph, w', pw)
        .reshape((b_sz, f / 4, h, w)) // (b, c, h, w)
}

/// Position ids `(b, rows·cols, 3)` f32: `(index, r, c)` in row-major token order
/// (sampling.py:45-48 for the target with index 0; :250-254 for the context with index 1, no offset).
pub fn position_ids(
    b_sz: usize,
    rows: usize,
    cols: usize,
    index: f32,
    dev: &Device,
) -> Result<Tensor> {
    offset_position_ids(
        b_sz,
        rows,
        cols,
        Placement {
            index,
            row: 0,
            col: 0,
        },
        dev,
    )
}

/// Where one reference's tokens sit in RoPE space: the first axis, and the offset of its top-left
/// token on the row and column axes (in tokens).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub index: f32,
    pub row: usize,
    pub col: usize,
}

/// [`position_ids`] of a block placed at `at`: `(index, at.row + r, at.col + c)`.
pub fn offset_position_ids(
    b_sz: usize,
    rows: usize,
    cols: usize,
    at: Placement,
    dev: &Device,
) -> Result<Tensor> {
    let mut ids = Vec::with_capacity(rows * cols * 3);
    for r in 0..rows {
        for c in 0..cols {
            ids.extend_from_slice(&[at.index, (at.row + r) as f32, (at.col + c) as f32]);
        }
    }
    Tensor::from_vec(ids, (1, rows * cols, 3), dev)?.repeat((b_sz, 1, 1))
}

/// Placements of references of `(rows, cols)` tokens each. `Index`: reference k at index k
/// (1-based), no offsets. `Offset` (ComfyUI's default for several Kontext references): all at
/// index 1; with (h, w) the extent covered so far, a reference goes to the right of it (column
/// offset w) when it is taller than wide relative to that extent (rows + h > cols + w), else
/// below it (row offset h), so the references tile one growing canvas without overlapping.
/// The first reference is at (1, 0, 0) either way: one reference is the plain Kontext edit.
pub fn reference_layout(sizes: &[(usize, usize)], positions: ReferencePositions) -> Vec<Placement> {
    let (mut h, mut w) = (0usize, 0usize);
    sizes
        .iter()
        .enumerate()
        .map(|(k, &(rows, cols))| match positions {
            ReferencePositions::Index => Placement {
                index: (k + 1) as f32,
                row: 0,
                col: 0,
            },
            ReferencePositions::Offset => {
                let (row, col) = if rows + h > cols + w { (0, w) } else { (h, 0) };
                h = h.max(rows + row);
                w = w.max(cols + col);
                Placement {
                    index: 1.0,
                    row,
                    col,
                }
            }
        })
        .collect()
}

/// Text position ids: zeros `(b, n_txt, 3)` f32 (sampling.py:55).
pub fn text_ids(b_sz: usize, n_txt: usize, dev: &Device) -> Result<Tensor> {
    Tensor::zeros((b_sz, n_txt, 3), DType::F32, dev)
}

/// The Euler loop (sampling.py:308-353) over `timesteps` (N+1 values), model-agnostic.
///
/// `x`: packed target latents `(b, n_t, f)` in the compute dtype. `context`: packed context tokens
/// `(b, n_c, f)`, appended after the target at every step and never updated. `velocity(img, t)`
/// gets `cat(x, context)` and the current time and returns a prediction for every token; only the
/// first n_t are used. The update `x + (t_next − t)·v` is done in f32 and cast back to the compute
/// dtype (diffusers' scheduler: one rounding per step). `on_step(done, total)` is called with
/// done = 0 before the first step and after every step; `Cancel` stops with `EngineError::Canceled`.
pub fn denoise(
    x: Tensor,
    context: Option<&Tensor>,
    timesteps: &[f32],
    velocity: &mut dyn FnMut(&Tensor, f32) -> Result<Tensor>,
    on_step: &mut dyn FnMut(u32, u32) -> StepControl,
) -> std::result::Result<Tensor, EngineError> {
    let total = u32::try_from(timesteps.len().saturating_sub(1))
        .map_err(|_| EngineError::InvalidInput("too many steps".into()))?;
    let dtype = x.dtype();
    let n_target = x.dim(1)?;
    if on_step(0, total) == StepControl::Cancel {
        return Err(EngineError::Canceled);
    }
    let mut x = x;
    for (i, pair) in timesteps.windows(2).enumerate() {
        let (t_cur, t_next) = (pair[0], pair[1]);
        let img = match context {
            Some(ctx) => Tensor::cat(&[&x, ctx], 1)?, // (b, n_t + n_c, f)
            None => x.clone(),
        };
        let pred = velocity(&img, t_cur)?.narrow(1, 0, n_target)?; // (b, n_t, f)
        let dt = f64::from(t_next - t_cur);
        let x32 = x.to_dtype(DType::F32)?;
        x = (x32 + (pred.to_dtype(DType::F32)? * dt)?)?.to_dtype(dtype)?;
        let done = u32::try_from(i + 1).expect("step index fits u32 as total does; this is a bug");
        if on_step(done, total) == StepControl::Cancel {
            return Err(EngineError::Canceled);
        }
    }
    Ok(x)
}

/// Packed context tokens and their position ids.
#[derive(Debug, Clone)]
pub struct ContextTokens {
    /// `(b, n_c, 64)` in the compute dtype.
    pub tokens: Tensor,
    /// `(b, n_c, 3)` f32, axis 0 = 1.
    pub ids: Tensor,
}

/// Everything that stays fixed across the steps of one generation.
#[derive(Debug, Clone)]
pub struct Conditioning {
    /// T5 hidden states `(b, n_txt, d_t5)`.
    pub txt: Tensor,
    /// Pooled CLIP `(b, d_clip)`.
    pub y: Tensor,
    /// `(b, n_t, 3)` f32, axis 0 = 0.
    pub target_ids: Tensor,
    pub context: Option<ContextTokens>,
    pub guidance: f32,
}

/// Runs [`denoise`] with the transformer: RoPE tables for `[txt, target, context]` are built once,
/// and every step gets `t` and the guidance as `(b)` f32 tensors (the model rounds them to its
/// compute dtype itself, like BFL).
pub fn denoise_flux(
    model: &Flux,
    cond: &Conditioning,
    x: Tensor,
    timesteps: &[f32],
    on_step: &mut dyn FnMut(u32, u32) -> StepControl,
) -> std::result::Result<Tensor, EngineError> {
    denoise_flux_cached(model, cond, x, timesteps, StepCaching::Off, on_step).map(|(x, _)| x)
}

/// [`denoise_flux`] with step caching (`step_cache`); also returns the number of full
/// transformer evaluations. `StepCaching::Off` is the plain sampler, bit for bit.
pub fn denoise_flux_cached(
    model: &Flux,
    cond: &Conditioning,
    x: Tensor,
    timesteps: &[f32],
    caching: StepCaching,
    on_step: &mut dyn FnMut(u32, u32) -> StepControl,
) -> std::result::Result<(Tensor, u32), EngineError> {
    let dev = x.device().clone();
    let b_sz = x.dim(0)?;
    let txt_ids = text_ids(b_sz, cond.txt.dim(1)?, &dev)?;
    let img_ids = match &cond.context {
        Some(ctx) => Tensor::cat(&[&cond.target_ids, &ctx.ids], 1)?, // (b, n_t + n_c, 3)
        None => cond.target_ids.clone(),
    };
    let pe = model.rope(&txt_ids, &img_ids)?;
    let guidance = Tensor::full(cond.guidance, b_sz, &dev)?;
    let mut cache = StepCache::new(caching, timesteps.len().saturating_sub(1));
    let mut velocity = |img: &Tensor, t: f32| -> Result<Tensor> {
        let t_value = t;
        let t = Tensor::full(t, b_sz, &dev)?;
        let inp = FluxInputs {
            img,
            img_ids: &img_ids,
            txt: &cond.txt,
            txt_ids: &txt_ids,
            timesteps: &t,
            y: &cond.y,
            guidance: Some(&guidance),
        };
        cache.velocity(model, &inp, t_value, &pe)
    };
    let context = cond.context.as_ref().map(|c| &c.tokens);
    let x = denoise(x, context, timesteps, &mut velocity, on_step)?;
    Ok((x, cache.full))
}

/// Relative L2 distance `‖a − b‖ / ‖b‖` in f32 (parity and test metric).
pub fn relative_l2(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.to_dtype(DType::F32)?.flatten_all()?;
    let b = b.to_dtype(DType::F32)?.flatten_all()?;
    let num = (&a - &b)?.sqr()?.sum(D::Minus1)?.to_scalar::<f32>()?.sqrt();
    let den = b.sqr()?.sum(D::Minus1)?.to_scalar::<f32>()?.sqrt();
    Ok(if den == 0.0 { num } else { num / den })
}

#[cfg(test)]
mod layout_tests {
    use super::*;

    fn at(index: f32, row: usize, col: usize) -> Placement {
        Placement { index, row, col }
    }

    #[test]
    fn one_reference_is_the_plain_kontext_context_in_both_methods() {
        for p in [ReferencePositions::Offset, ReferencePositions::Index] {
            assert_eq!(reference_layout(&[(64, 48)], p), vec![at(1.0, 0, 0)]);
        }
    }

    #[test]
    fn index_numbers_the_references_from_one() {
        let sizes = [(64, 64), (32, 48), (16, 16), (64, 32)];
        let got = reference_layout(&sizes, ReferencePositions::Index);
        assert_eq!(
            got,
            vec![at(1.0, 0, 0), at(2.0, 0, 0), at(3.0, 0, 0), at(4.0, 0, 0)]
        );
    }

    #[test]
    fn offset_tiles_references_on_one_canvas_without_overlap() {
        // Two squares: the second goes below (64 + 64 > 64 + 0 is false? rows + h = 128,
        // cols + w = 128: not greater, so below).
        assert_eq!(
            reference_layout(&[(64, 64), (64, 64)], ReferencePositions::Offset),
            vec![at(1.0, 0, 0), at(1.0, 64, 0)]
        );
        // After a wide first one (32×96), a tall second one goes below it; then the canvas is
        // 96 tall and 96 wide, and a third square goes below again; a tall fourth goes right.
        let got = reference_layout(
            &[(32, 96), (64, 32), (16, 16), (96, 16)],
            ReferencePositions::Offset,
        );
        assert_eq!(
            got,
            vec![
                at(1.0, 0, 0),
                at(1.0, 32, 0),
                at(1.0, 96, 0),
                at(1.0, 0, 96)
            ]
        );
        // No two references share a (row, col) position.
        let sizes = [(32, 96), (64, 32), (16, 16), (96, 16)];
        let mut seen = std::collections::HashSet::new();
        for (p, (rows, cols)) in got.iter().zip(sizes) {
            for r in 0..rows {
                for c in 0..cols {
                    assert!(seen.insert((p.row + r, p.col + c)), "overlap at {r},{c}");
                }
            }
        }
    }

    #[test]
    fn offset_ids_shift_rows_and_columns() -> Result<()> {
        let ids = offset_position_ids(1, 2, 2, at(1.0, 3, 5), &Device::Cpu)?;
        let v: Vec<Vec<f32>> = ids.squeeze(0)?.to_vec2()?;
        assert_eq!(
            v,
            vec![
                vec![1.0, 3.0, 5.0],
                vec![1.0, 3.0, 6.0],
                vec![1.0, 4.0, 5.0],
                vec![1.0, 4.0, 6.0]
            ]
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_bfl_reference_at_4096_tokens() {
        // BFL `get_schedule(30, 4096)` (the Kontext CLI's default steps at 1024²).
        let s = schedule(30, 4096);
        assert_eq!(s.len(), 31);
        let head = [1.0, 0.989199, 0.977883, 0.966014, 0.953549];
        for (got, want) in s.iter().zip(head) {
            assert!((got - want).abs() < 1e-6, "{s:?}");
        }
        let tail = [0.184063, 0.098208, 0.0];
        for (got, want) in s[28..].iter().zip(tail) {
            assert!((got - want).abs() < 1e-6, "{s:?}");
        }
        assert!((mu_for_tokens(4096) - 1.15).abs() < 1e-12);
    }

    #[test]
    fn schedule_for_twelve_tokens_matches_diffusers() {
        // diffusers `calculate_shift` + `FlowMatchEulerDiscreteScheduler` with 2 steps on 12 target
        // tokens: mu 0.45870, sigmas [1.0, 0.6127053, 0.0].
        assert!((mu_for_tokens(12) - 0.45870).abs() < 1e-5);
        let s = schedule(2, 12);
        assert_eq!(s[0], 1.0);
        assert!((s[1] - 0.612_705_3).abs() < 1e-6, "{s:?}");
        assert_eq!(s[2], 0.0);
    }

    #[test]
    fn schedule_is_monotone() {
        for n in [1, 2, 7, 28, 50] {
            let s = schedule(n, 1000);
            assert!(s.windows(2).all(|w| w[1] < w[0]), "{s:?}");
        }
    }
}
