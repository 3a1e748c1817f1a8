//! The transformer blocks' linear layers, in the compute dtype or with FP8 (E4M3) weights.
//!
//! FP8 here is the numerics of an FP8 GEMM with row-wise scaling — the recipe of torchao's
//! `Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())` that flux-fast uses, and of
//! cuBLASLt/CUTLASS FP8 GEMMs with a per-row/per-column scale epilogue:
//!
//! - weights are quantized once, at load: per output channel `s_w[o] = max|W[o,:]| / 448`,
//!   `W8 = e4m3(W / s_w)` (round to nearest even, saturating; 448 is E4M3's largest finite value);
//! - activations are quantized dynamically per token: `s_x[t] = max|x[t,:]| / 448`,
//!   `x8 = e4m3(x / s_x)`;
//! - `y = (x8 · W8ᵀ) ⊙ (s_x s_wᵀ) + b`, accumulated in f32, returned in the compute dtype.
//!
//! The modulation linears multiply one vector per image (M = batch), where an FP8 GEMM gains
//! nothing and activation rounding would touch every token's shift/scale/gate: they keep FP8
//! weights (the memory saving) with activations in the compute dtype. The input embeddings and
//! the final layer stay in the compute dtype, as in flux-fast (small, and first/last in the chain).
//!
//! On CUDA with the `fp8-gemm` feature, token layers run cuBLASLt's FP8 GEMM
//! (`kontext_cuda::fp8_gemm`: E4M3 × E4M3, f32 accumulation, the scales and bias in its
//! epilogue). Everywhere else `forward` takes the portable path: it dequantizes
//! (`e4m3 → f32 × scale`) and multiplies in the compute dtype, which gives the FP8 GEMM's result
//! up to accumulation order and the compute dtype's rounding of the dequantized operands. It runs
//! on the CPU (the reference the tests bound) and on CUDA (weights resident in FP8, half of bf16's
//! memory). docs/engine.md §FP8 linears says what is measured.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::ops;

/// Largest finite E4M3 value (OCP 8-bit floating point spec, E4M3: S.1111.110 = 448).
pub const E4M3_MAX: f64 = 448.0;
/// Floor of a scale, so an all-zero row quantizes to zeros instead of dividing by zero.
const MIN_SCALE: f64 = 1e-12;

static FP8_GEMM: AtomicBool = AtomicBool::new(true);

/// Turns the cuBLASLt FP8 GEMM (feature `fp8-gemm`) on or off process-wide (on by default): the
/// GPU benchmark's check against the portable path.
pub fn set_fp8_gemm(on: bool) {
    FP8_GEMM.store(on, Ordering::Relaxed);
}

/// Which FP8 GEMM this build and process use for token layers on CUDA.
pub fn fp8_gemm_path() -> &'static str {
    #[cfg(feature = "fp8-gemm")]
    {
        kontext_cuda::fp8_gemm::path()
    }
    #[cfg(not(feature = "fp8-gemm"))]
    {
        "not compiled"
    }
}

/// How the transformer blocks store their linear weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinearPrecision {
    /// The compute dtype (bf16 on CUDA, f32 on the CPU).
    #[default]
    Native,
    /// FP8 E4M3 weights with per-output-channel scales; token activations quantized per token.
    Fp8,
}

impl LinearPrecision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Fp8 => "fp8",
        }
    }
}

/// What a layer multiplies: token sequences (FP8 activations under `Fp8`) or the one modulation
/// vector per image (activations stay in the compute dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    Tokens,
    Vector,
}

/// A transformer linear layer: its weights (compute dtype or FP8) and, while a job's LoRAs are
/// applied (`crate::lora`), either the weights they were merged into (compute dtype) or their
/// low-rank addition (FP8).
#[derive(Debug, Clone)]
pub struct BlockLinear {
    weights: LinearWeights,
    adapter: Option<LowRank>,
    /// The weights from before a merge (on the host when they live on a GPU), put back exactly
    /// by the next `set_lora`.
    original: Option<Linear>,
}

/// How a [`BlockLinear`] stores its weights.
#[derive(Debug, Clone)]
pub enum LinearWeights {
    Native(Linear),
    Fp8(Fp8Linear),
    /// A ggml block format from a GGUF checkpoint (`weights::gguf`).
    Gguf(GgufLinear),
}

/// A runtime low-rank addition `y += (x · downᵀ) · upᵀ`: `down` `(R, in)`, `up` `(out, R)` in the
/// compute dtype, every LoRA of the job (and its scale) concatenated along `R`.
#[derive(Debug, Clone)]
pub struct LowRank {
    down: Linear,
    up: Linear,
}

impl LowRank {
    /// `down` `(R, in)`, `up` `(out, R)`.
    pub fn new(down: Tensor, up: Tensor) -> Self {
        Self {
            down: Linear::new(down, None),
            up: Linear::new(up, None),
        }
    }

    /// The rank `R` (all parts together).
    pub fn rank(&self) -> usize {
        self.down.weight().dims().first().copied().unwrap_or(0)
    }

    /// `x (…, in)` → `(…, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(&ops::linear(x, &self.down)?, &self.up) // (…, R) → (…, out)
    }

    /// `up · down` `(out, in)` in f32: what merging adds to the weight.
    pub fn delta(&self) -> Result<Tensor> {
        let up = self.up.weight().to_dtype(DType::F32)?; // (out, R)
        up.matmul(&self.down.weight().to_dtype(DType::F32)?) // (out, in)
    }
}

impl BlockLinear {
    /// Loads `weight` `(out, in)` and, when `bias`, `bias` `(out)` from `vb`, quantizing the
    /// weight under `Fp8` (the full-precision copy is dropped here, layer by layer).
    pub fn load(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder<'_>,
        precision: LinearPrecision,
        operand: Operand,
    ) -> Result<Self> {
        let linear = candle_nn::linear_b(in_dim, out_dim, bias, vb)?;
        Ok(match precision {
            LinearPrecision::Native => Self::native(linear),
            LinearPrecision::Fp8 => Self::fp8(Fp8Linear::quantize(&linear, operand)?),
        })
    }

    pub fn native(linear: Linear) -> Self {
        Self {
            weights: LinearWeights::Native(linear),
            adapter: None,
            original: None,
        }
    }

    pub fn fp8(linear: Fp8Linear) -> Self {
        Self {
            weights: LinearWeights::Fp8(linear),
            adapter: None,
            original: None,
        }
    }

    pub fn weights(&self) -> &LinearWeights {
        &self.weights
    }

    /// Swaps in other weights, returning the old ones (`bench-lora` merges by hand with it).
    pub fn replace_weights(&mut self, weights: LinearWeights) -> LinearWeights {
        std::mem::replace(&mut self.weights, weights)
    }

    /// Applies `lora` to the layer (`None`: none), after putting back what a previous one changed.
    /// Weights in the compute dtype get it merged, `W' = W + up·down` computed in f32 (diffusers'
    /// `fuse_lora`), the originals kept (copied to the host from a GPU, as ComfyUI's
    /// `ModelPatcher` backs weights up) so the restore is exact; FP8 weights get the runtime
    /// addition instead, since re-quantizing `W'` would round small LoRA deltas away. Why merge:
    /// docs/loras.md §Merge or runtime addition. On an error the layer is left as it was before
    /// the call, or, when the restore itself failed, still merged with its backup kept.
    pub fn set_lora(&mut self, lora: Option<LowRank>) -> Result<()> {
        self.restore()?;
        let Some(lora) = lora else { return Ok(()) };
        match &self.weights {
            LinearWeights::Native(l) => {
                let w = l.weight();
                let merged = (w.to_dtype(DType::F32)? + lora.delta()?)?.to_dtype(w.dtype())?;
                let backup = if w.device().is_cpu() {
                    l.clone()
                } else {
                    Linear::new(w.to_device(&Device::Cpu)?, l.bias().cloned())
                };
                self.weights = LinearWeights::Native(Linear::new(merged, l.bias().cloned()));
                self.original = Some(backup);
            }
            LinearWeights::Fp8(_) | LinearWeights::Gguf(_) => self.adapter = Some(lora),
        }
        Ok(())
    }

    /// Replaces the weight with `weight` as stored in a GGUF file, kept in its block format
    /// where candle's kernels take that row width (else dequantized to the compute dtype); the
    /// bias and the compute dtype stay those loaded.
    pub fn set_gguf_weight(&mut self, weight: QTensor) -> Result<()> {
        let (bias, dtype) = match &self.weights {
            LinearWeights::Native(l) => (l.bias().cloned(), l.weight().dtype()),
            LinearWeights::Fp8(f) => (f.bias.clone(), f.dtype),
            LinearWeights::Gguf(g) => (g.bias.clone(), g.dtype),
        };
        let in_dim = weight.shape().dims().last().copied().unwrap_or(0);
        self.weights = if gguf_kernel_fits(weight.dtype(), in_dim) {
            LinearWeights::Gguf(GgufLinear::new(weight, bias, dtype)?)
        } else {
            let w = weight.dequantize(&weight.device())?.to_dtype(dtype)?;
            LinearWeights::Native(Linear::new(w, bias))
        };
        Ok(())
    }

    /// Puts back the weights from before a merge and drops any runtime addition.
    fn restore(&mut self) -> Result<()> {
        self.adapter = None;
        if let (Some(original), LinearWeights::Native(now)) = (&self.original, &self.weights) {
            let weight = original.weight().to_device(now.weight().device())?;
            self.weights = LinearWeights::Native(Linear::new(weight, original.bias().cloned()));
            self.original = None;
        }
        Ok(())
    }

    /// Sets (or, with `None`, removes) a runtime addition whatever the weights, which stay
    /// untouched (`bench-lora` measures it on weights `set_lora` would merge into).
    pub fn set_adapter(&mut self, adapter: Option<LowRank>) {
        self.adapter = adapter;
    }

    /// The runtime addition applied now (FP8 weights with a LoRA).
    pub fn adapter(&self) -> Option<&LowRank> {
        self.adapter.as_ref()
    }

    /// Whether a LoRA is merged into the weights now.
    pub fn is_merged(&self) -> bool {
        self.original.is_some()
    }

    /// Bytes the weights (and bias) hold on their device (an applied adapter not included).
    pub fn resident_bytes(&self) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        match &self.weights {
            LinearWeights::Native(l) => bytes(l.weight()) + l.bias().map_or(0, bytes),
            LinearWeights::Fp8(f) => {
                bytes(&f.weight) + bytes(&f.scale) + f.bias.as_ref().map_or(0, bytes)
            }
            LinearWeights::Gguf(g) => g.weight_bytes + g.bias.as_ref().map_or(0, bytes),
        }
    }
}

impl Module for BlockLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.weights {
            LinearWeights::Native(l) => ops::linear(x, l)?,
            LinearWeights::Fp8(f) => f.forward(x)?,
            LinearWeights::Gguf(g) => g.forward(x)?,
        };
        match &self.adapter {
            None => Ok(y),
            Some(a) => y + a.forward(x)?,
        }
    }
}

/// FP8 weights `(out, in)` E4M3, their per-row scales `(out, 1)` f32, the bias in the compute
/// dtype.
#[derive(Debug, Clone)]
pub struct Fp8Linear {
    weight: Tensor,
    scale: Tensor,
    bias: Option<Tensor>,
    dtype: DType,
    operand: Operand,
}

impl Fp8Linear {
    pub fn quantize(linear: &Linear, operand: Operand) -> Result<Self> {
        let (weight, scale) = quantize_rows(linear.weight())?;
        Ok(Self {
            weight,
            scale,
            bias: linear.bias().cloned(),
            dtype: linear.weight().dtype(),
            operand,
        })
    }

    /// `x (…, in)` → `(…, out)` in the compute dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        #[cfg(feature = "fp8-gemm")]
        if self.operand == Operand::Tokens
            && FP8_GEMM.load(Ordering::Relaxed)
            && let Some(y) =
                kontext_cuda::fp8_gemm::linear(x, &self.weight, &self.scale, self.bias.as_ref())?
        {
            return Ok(y);
        }
        let x = match self.operand {
            Operand::Tokens => fake_quantize_rows(x)?,
            Operand::Vector => x.clone(),
        };
        let weight = dequantize(&self.weight, &self.scale, self.dtype)?; // (out, in)
        ops::linear(&x, &Linear::new(weight, self.bias.clone()))
    }
}

/// A linear layer whose weight stays in a ggml block format (Q8_0, Q4_K, …) and is multiplied by
/// candle's quantized matmul (`QMatMul`: CPU kernels, and CUDA ones in a CUDA build) with f32
/// activations, as llama.cpp and ComfyUI-GGUF run these files; the output is cast back to the
/// compute dtype.
#[derive(Debug, Clone)]
pub struct GgufLinear {
    matmul: QMatMul,
    bias: Option<Tensor>,
    dtype: DType,
    weight_bytes: usize,
}

impl GgufLinear {
    pub fn new(weight: QTensor, bias: Option<Tensor>, dtype: DType) -> Result<Self> {
        let weight_bytes = weight.storage_size_in_bytes();
        Ok(Self {
            matmul: QMatMul::from_qtensor(weight)?,
            bias,
            dtype,
            weight_bytes,
        })
    }

    /// `x (…, in)` → `(…, out)` in the compute dtype.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?.contiguous()?;
        let y = self.matmul.forward(&x)?.to_dtype(self.dtype)?; // (…, out)
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Whether candle's quantized matmul takes rows of `in_dim` weights in `t`: its CPU dot
/// products for Q4_1, Q5_0 and Q5_1 (`k_quants.rs`, `vec_dot`) unroll two blocks at a time and
/// assert an even number of blocks per row. Every FLUX.1 width fits; the tiny model's 32-wide
/// rows do not.
pub fn gguf_kernel_fits(t: GgmlDType, in_dim: usize) -> bool {
    let blocks = in_dim / t.block_size();
    match t {
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => blocks.is_multiple_of(2),
        _ => true,
    }
}

/// Row-wise E4M3 quantization of a 2-D tensor: `(q (rows, cols) E4M3, scale (rows, 1) f32)`.
pub fn quantize_rows(w: &Tensor) -> Result<(Tensor, Tensor)> {
    let w = w.to_dtype(DType::F32)?;
    let scale = (w.abs()?.max_keepdim(D::Minus1)? / E4M3_MAX)?.clamp(MIN_SCALE, f64::MAX)?; // (rows, 1)
    if !w.device().is_cpu() {
        #[cfg(feature = "fp8-gemm")]
        if let Some(q) = kontext_cuda::fp8_cast::quantize_with_scale(&w, &scale)? {
            return Ok((q, scale));
        }
        return Err(no_gpu_e4m3_casts());
    }
    let q = w.broadcast_div(&scale)?.to_dtype(DType::F8E4M3)?;
    Ok((q, scale))
}

/// `q × scale` in `dtype`.
pub fn dequantize(q: &Tensor, scale: &Tensor, dtype: DType) -> Result<Tensor> {
    if !q.device().is_cpu() {
        #[cfg(feature = "fp8-gemm")]
        if let Some(w) = kontext_cuda::fp8_cast::dequantize(q, scale, dtype)? {
            return Ok(w);
        }
        return Err(no_gpu_e4m3_casts());
    }
    q.to_dtype(DType::F32)?
        .broadcast_mul(scale)?
        .to_dtype(dtype)
}

/// candle 0.11.1 names its CUDA casts from and to E4M3 differently from the kernels it compiles
/// (`cast_f32_f8e4m3` vs `cast_f32_f8_e4m3`), so on a GPU only our kernels cast (docs/gpu.md §5).
fn no_gpu_e4m3_casts() -> candle_core::Error {
    candle_core::Error::msg(
        "FP8 linears on a GPU need the `fp8-gemm` build (scripts/build-cuda.sh --fp8): candle \
         0.11.1 cannot cast to or from E4M3 on CUDA",
    )
}

/// Quantize → dequantize along the last axis (one scale per token), in `x`'s dtype: what an
/// FP8 GEMM sees of the activations.
pub fn fake_quantize_rows(x: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let cols = *dims.last().unwrap_or(&1);
    let rows = x.elem_count() / cols.max(1);
    let flat = x.reshape((rows, cols))?; // (…, in) → (rows, in)
    let (q, scale) = quantize_rows(&flat)?;
    dequantize(&q, &scale, x.dtype())?.reshape(dims) // (rows, in) → (…, in)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn e4m3_round_trip(values: &[f32]) -> Vec<f32> {
        Tensor::new(values, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F8E4M3))
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1())
            .expect("cast")
    }

    #[test]
    fn e4m3_rounds_to_nearest_even_and_saturates_at_448() {
        // Between 1 and 2 the step is 1/8; halfway cases go to the even mantissa.
        assert_eq!(
            e4m3_round_trip(&[1.0, 1.0625, 1.1875, 1.2, 447.0, 460.0, 1e6, -1e6]),
            vec![1.0, 1.0, 1.25, 1.25, 448.0, 448.0, 448.0, -448.0]
        );
        // Subnormals: steps of 2^-9 below 2^-6.
        let tiny = 2f32.powi(-9);
        assert_eq!(
            e4m3_round_trip(&[tiny, 3.0 * tiny, 0.4 * tiny]),
            vec![tiny, 3.0 * tiny, 0.0]
        );
    }

    #[test]
    fn row_scales_map_each_rows_largest_magnitude_to_448() -> Result<()> {
        let w = Tensor::new(
            &[[0.5f32, -2.0, 1.0], [0.0, 0.0, 0.0], [3.0, 1e-3, -0.25]],
            &Device::Cpu,
        )?;
        let (q, scale) = quantize_rows(&w)?;
        assert_eq!(q.dtype(), DType::F8E4M3);
        let scale: Vec<f32> = scale.flatten_all()?.to_vec1()?;
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-6 * b.abs();
        assert!(
            close(scale[0], 2.0 / 448.0) && close(scale[2], 3.0 / 448.0),
            "{scale:?}"
        );
        let back: Vec<Vec<f32>> = dequantize(
            &q,
            &Tensor::new(scale.as_slice(), &Device::Cpu)?.unsqueeze(1)?,
            DType::F32,
        )?
        .to_vec2()?;
        assert_eq!(back[1], vec![0.0; 3], "a zero row stays zero");
        // The largest element of each row is exact; the rest are within E4M3's relative step.
        assert!(
            close(back[0][1], -2.0) && close(back[2][0], 3.0),
            "{back:?}"
        );
        for (row, orig) in back
            .iter()
            .zip([[0.5f32, -2.0, 1.0], [0.0; 3], [3.0, 1e-3, -0.25]])
        {
            for (b, o) in row.iter().zip(orig) {
                assert!(
                    (b - o).abs() <= o.abs() / 16.0 + 3.0 / 448.0 * 2f32.powi(-9),
                    "{b} vs {o}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn an_fp8_linear_is_close_to_the_f32_one_and_a_quarter_of_its_size() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (96, 64), &dev)?;
        let b = Tensor::randn(0f32, 0.1, 96, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, 10, 64), &dev)?;
        let dense = Linear::new(w, Some(b));
        let reference = dense.forward(&x)?;
        for operand in [Operand::Tokens, Operand::Vector] {
            let fp8 = BlockLinear::fp8(Fp8Linear::quantize(&dense, operand)?);
            let y = fp8.forward(&x)?;
            let rel = ((&y - &reference)?
                .sqr()?
                .sum_all()?
                .sqrt()?
                .to_scalar::<f32>()?)
                / reference.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
            // E4M3 has 3 mantissa bits: ~2-4 % relative error per rounded operand.
            assert!(
                rel > 1e-3 && rel < 0.06,
                "{operand:?}: relative error {rel}"
            );
            let native = BlockLinear::native(dense.clone()).resident_bytes();
            // (96·64 bytes + 96 f32 scales + 96 f32 biases) against 96·64·4 + 96·4.
            assert_eq!(fp8.resident_bytes(), 96 * 64 + 96 * 4 + 96 * 4);
            assert_eq!(native, 96 * 64 * 4 + 96 * 4);
        }
        Ok(())
    }
}
