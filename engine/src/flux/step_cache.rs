//! Step caching: fewer full transformer evaluations per image, at a measured cost in fidelity.
//!
//! Two mechanisms, each selectable on its own for benchmarks:
//!
//! - **First-Block-Cache** (ParaAttention's `apply_cache_on_pipe`, the "FBCache" of
//!   chengzeyi/ParaAttention): every step runs the embeddings and the first double block; when
//!   that block's residual on the image tokens changed by less than `threshold` (relative L1)
//!   since the last full step, the remaining blocks are skipped and their residual from that full
//!   step is added instead. Adaptive: it skips only where the model's input barely moves.
//! - **Fixed schedule with first-order extrapolation** (the "TaylorSeer"-style schedule behind
//!   production "go fast" modes): full evaluations on the first and last step and every `every`-th
//!   step between; on the others the velocity is extrapolated linearly in `t` from the last two
//!   full evaluations (before the second one, the first is reused). Predictable cost, larger
//!   savings, larger error.
//!
//! `Acceleration` is the per-job level (fal's names): `None` runs every step in full and is
//! bit-identical to the plain sampler; `Regular` is First-Block-Cache at a conservative threshold
//! (quality first: it only skips near-duplicate steps); `High` is the fixed schedule with a full
//! evaluation every third step and two extrapolated between (10 of 28 evaluations, whatever the
//! content; Replicate's `go_fast` runs about 13 of 28).

use candle_core::{D, DType, Result, Tensor};

use super::model::{Flux, FluxInputs};
use super::rope::RopeTable;

/// The per-job speed level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Acceleration {
    #[default]
    None,
    Regular,
    High,
}

impl Acceleration {
    /// The mechanism behind the level (see the module comment for why).
    pub fn caching(self) -> StepCaching {
        match self {
            Self::None => StepCaching::Off,
            Self::Regular => StepCaching::FirstBlock { threshold: 0.10 },
            Self::High => StepCaching::Fixed { every: 3 },
        }
    }
}

/// How the sampler decides which steps run the whole transformer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepCaching {
    /// Every step in full.
    Off,
    /// First-Block-Cache with this relative-L1 threshold.
    FirstBlock { threshold: f32 },
    /// Full on the first and last step and every `every`-th (≥ 1) step; extrapolated between.
    Fixed { every: u32 },
}

/// One sampler's cache: call [`StepCache::velocity`] once per step, in order.
pub struct StepCache {
    caching: StepCaching,
    total_steps: usize,
    step: usize,
    /// Full transformer evaluations so far.
    pub full: u32,
    /// FBCache: the first block's residual at the last full step, and the remaining blocks'.
    first_residual: Option<Tensor>,
    rest_residual: Option<Tensor>,
    /// Fixed schedule: (t, velocity) of the last two full evaluations, newest last.
    history: Vec<(f32, Tensor)>,
}

/// `mean|a − b| / mean|b|` in f32.
fn relative_l1(a: &Tensor, b: &Tensor) -> Result<f32> {
    let a = a.to_dtype(DType::F32)?;
    let b = b.to_dtype(DType::F32)?;
    let num = (&a - &b)?
        .abs()?
        .flatten_all()?
        .mean(D::Minus1)?
        .to_scalar::<f32>()?;
    let den = b
        .abs()?
        .flatten_all()?
        .mean(D::Minus1)?
        .to_scalar::<f32>()?;
    Ok(if den == 0.0 { f32::INFINITY } else { num / den })
}

impl StepCache {
    pub fn new(caching: StepCaching, total_steps: usize) -> Self {
        Self {
            caching,
            total_steps,
            step: 0,
            full: 0,
            first_residual: None,
            rest_residual: None,
            history: Vec::new(),
        }
    }

    fn full_step_due(&self, every: u32) -> bool {
        let every = every.max(1) as usize;
        self.step == 0 || self.step + 1 == self.total_steps || self.step.is_multiple_of(every)
    }

    /// The velocity for this step's input `inp` at time `t` (`inp.timesteps` holds `t`).
    pub fn velocity(
        &mut self,
        model: &Flux,
        inp: &FluxInputs<'_>,
        t: f32,
        pe: &RopeTable,
    ) -> Result<Tensor> {
        let out = match self.caching {
            StepCaching::Off => {
                self.full += 1;
                model.forward_with_rope(inp, pe)
            }
            StepCaching::FirstBlock { threshold } => {
                self.first_block_cached(model, inp, pe, threshold)
            }
            StepCaching::Fixed { every } => {
                if self.full_step_due(every) {
                    self.full += 1;
                    let v = model.forward_with_rope(inp, pe)?;
                    self.history.push((t, v.clone()));
                    if self.history.len() > 2 {
                        self.history.remove(0);
                    }
                    Ok(v)
                } else if let [(_, only)] = self.history.as_slice() {
                    // One evaluation so far (the steps right after the first): reuse it, as
                    // FORA-style caches do; first order needs two.
                    Ok(only.clone())
                } else {
                    // v(t) ≈ v1 + (v1 − v0)·(t − t1)/(t1 − t0), in f32.
                    let (t0, v0) = &self.history[0];
                    let (t1, v1) = &self.history[1];
                    let slope = f64::from((t - t1) / (t1 - t0));
                    let v1_32 = v1.to_dtype(DType::F32)?;
                    let d = (&v1_32 - v0.to_dtype(DType::F32)?)?;
                    (v1_32 + (d * slope)?)?.to_dtype(v1.dtype())
                }
            }
        };
        self.step += 1;
        out
    }

    fn first_block_cached(
        &mut self,
        model: &Flux,
        inp: &FluxInputs<'_>,
        pe: &RopeTable,
        threshold: f32,
    ) -> Result<Tensor> {
        let streams = model.embed(inp, pe)?;
        let (img1, txt1) = model.first_block(&streams, pe)?;
        let first = (&img1 - &streams.img)?; // (b, n_img, h)
        let reuse = match (&self.first_residual, &self.rest_residual) {
            (Some(prev), Some(_)) => relative_l1(&first, prev)? < threshold,
            _ => false,
        };
        let hidden = match (&self.rest_residual, reuse) {
            (Some(rest), true) => (&img1 + rest)?,
            _ => {
                self.full += 1;
                let hidden = model.remaining_blocks(&img1, &txt1, &streams.vec, pe)?;
                self.rest_residual = Some((&hidden - &img1)?);
                self.first_residual = Some(first);
                hidden
            }
        };
        model.head(&hidden, &streams.vec)
    }
}
