//! The autoencoder's convolutions. On the CPU a 3×3 stride-1 convolution runs as one GEMM over
//! nine shifted windows of the padded input (an im2col built from block copies). candle's own CPU conv2d
//! (`cpu_backend/conv2d.rs`, `conv2d_tiled`) gathers its im2col tiles one element at a time with
//! strided writes, which took about half of a 96×96 decode on the shapes model; the GEMM itself
//! is the same. Other devices, kernel sizes and strides keep candle's convolution.

use candle_core::{D, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};

/// Upper bound on one column matrix (c_in·9 × rows·W elements), so a 1024² decode (128
/// channels at full resolution: 4.5 GiB as one matrix) runs in bands of output rows.
const COLUMN_BYTES: usize = 64 << 20;

#[derive(Debug, Clone)]
pub(super) struct VaeConv {
    inner: Conv2d,
    kernel: usize,
    padding: usize,
    stride: usize,
}

impl VaeConv {
    pub(super) fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        padding: usize,
        stride: usize,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let cfg = Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        Ok(Self {
            inner: candle_nn::conv2d(c_in, c_out, kernel, cfg, vb)?,
            kernel,
            padding,
            stride,
        })
    }

    pub(super) fn weight(&self) -> &Tensor {
        self.inner.weight()
    }
}

impl Module for VaeConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && self.kernel == 3 && self.stride == 1 {
            shifted_gemm_3x3(
                x,
                self.inner.weight(),
                self.inner.bias(),
                self.padding,
                COLUMN_BYTES,
            )
        } else {
            self.inner.forward(x)
        }
    }
}

/// x (b, c_in, H, W), weight (c_out, c_in, 3, 3) → (b, c_out, H + 2p − 2, W + 2p − 2); the same
/// sums as PyTorch's `Conv2d` (cross-correlation), in another order.
///
/// Each padded image is one flat row per channel, (c_in, H'·W'). Computed on the padded grid's
/// width W', output position (y, x) reads input y·W' + x shifted by dy·W' + dx, so the nine
/// taps are nine contiguous windows of those rows: the column matrix is nine block copies,
/// and each output row carries two positions past its right edge that are dropped. Bands of
/// output rows keep each column matrix under `column_bytes`.
fn shifted_gemm_3x3(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    column_bytes: usize,
) -> Result<Tensor> {
    let (b, c_in, h, w) = x.dims4()?;
    let (c_out, ..) = weight.dims4()?;
    let (padded_h, padded_w) = (h + 2 * padding, w + 2 * padding);
    let (out_h, out_w) = (padded_h - 2, padded_w - 2);
    // One spare zero row below the bottom padding: the last window ends two elements past the
    // padded image.
    let x = x
        .pad_with_zeros(D::Minus1, padding, padding)?
        .pad_with_zeros(D::Minus2, padding, padding + 1)?; // (b, c_in, H' + 1, W')
    // (c_out, c_in, 3, 3) → (c_out, 3, 3, c_in) → (c_out, 9·c_in): column k = (3·dy + dx)·c_in
    // + c, the row order of the column matrix below.
    let weight = weight
        .permute((0, 2, 3, 1))?
        .contiguous()?
        .reshape((c_out, 9 * c_in))?;
    let row_bytes = 9 * c_in * padded_w * x.dtype().size_in_bytes();
    let band = (column_bytes / row_bytes.max(1)).clamp(1, out_h.max(1));
    let mut images = Vec::with_capacity(b);
    for i in 0..b {
        let flat = x.get(i)?.flatten_from(1)?; // (c_in, (H' + 1)·W')
        let mut bands = Vec::with_capacity(out_h.div_ceil(band));
        for y0 in (0..out_h).step_by(band) {
            let rows = band.min(out_h - y0);
            let windows = (0..3)
                .flat_map(|dy| (0..3).map(move |dx| (dy, dx)))
                .map(|(dy, dx)| flat.narrow(1, (y0 + dy) * padded_w + dx, rows * padded_w))
                .collect::<Result<Vec<_>>>()?; // 9 × (c_in, rows·W')
            let columns = Tensor::cat(&windows, 0)?; // (9·c_in, rows·W')
            // (c_out, 9·c_in) @ (9·c_in, rows·W') → (c_out, rows, W') → (c_out, rows, out_w)
            let band_out = weight
                .matmul(&columns)?
                .reshape((c_out, rows, padded_w))?
                .narrow(2, 0, out_w)?;
            bands.push(band_out);
        }
        images.push(Tensor::cat(&bands, 1)?.contiguous()?); // (c_out, out_h, out_w)
    }
    let out = Tensor::stack(&images, 0)?; // (b, c_out, out_h, out_w)
    match bias {
        Some(bias) => out.broadcast_add(&bias.reshape((1, c_out, 1, 1))?),
        None => Ok(out),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::vae::tests::max_abs_diff;

    /// The shifted GEMM against candle's convolution, with padding 0 and 1, a batch of two and
    /// bands of a single row.
    #[test]
    fn shifted_gemm_matches_candle_conv2d() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 7, 9), &dev).unwrap();
        let weight = Tensor::randn(0f32, 1.0, (4, 5, 3, 3), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 4, &dev).unwrap();
        for (padding, column_bytes) in [(0, COLUMN_BYTES), (1, COLUMN_BYTES), (1, 1)] {
            let expected = x
                .conv2d(&weight, padding, 1, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, 4, 1, 1)).unwrap())
                .unwrap();
            let got = shifted_gemm_3x3(&x, &weight, Some(&bias), padding, column_bytes).unwrap();
            assert_eq!(got.dims(), expected.dims());
            let diff = max_abs_diff(&got, &expected);
            assert!(
                diff < 1e-4,
                "padding {padding}, {column_bytes} B bands: max |diff| {diff}"
            );
        }
    }
}
