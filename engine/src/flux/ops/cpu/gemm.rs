//! A bounds-checked, safe wrapper around the `gemm` crate's f32 kernel (the one candle's CPU
//! matmul uses; with the `x86-v4` feature it has AVX-512 micro-kernels).
//!
//! `gemm::gemm` takes raw pointers and strides. This module is the only place in the transformer
//! that calls it: every view's extent is checked against its slice before the call, so the safe
//! functions below cannot read or write out of bounds.
#![allow(unsafe_code)]

use gemm::Parallelism;

/// A read-only strided matrix view over a slice.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

/// A writable strided matrix view over a slice.
#[derive(Debug)]
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// Row-major `rows × cols` with rows `row_stride` apart.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major `cols × rows` matrix (e.g. a `(out, in)` weight read as
    /// `in × out`, or keys `(L, D)` read as `D × L`), without copying.
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize, src_row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: 1,
            col_stride: src_row_stride,
        }
    }
}

impl<'a> MatMut<'a> {
    pub fn rows(data: &'a mut [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }
}

/// Largest element index a view touches, or None for an empty view.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return None;
    }
    Some((rows - 1) * rs + (cols - 1) * cs)
}

fn check(name: &str, len: usize, rows: usize, cols: usize, rs: usize, cs: usize) {
    if let Some(last) = extent(rows, cols, rs, cs) {
        assert!(
            last < len,
            "gemm {name}: {rows}x{cols} view with strides ({rs}, {cs}) needs {} elements, slice has {len}",
            last + 1
        );
    }
    assert!(
        isize::try_from(rs).is_ok() && isize::try_from(cs).is_ok(),
        "gemm {name}: stride overflow"
    );
}

/// `dst = alpha·lhs·rhs` (or `dst += alpha·lhs·rhs` with `accumulate`). Shapes must agree;
/// `threads > 1` splits the work with rayon inside the call.
///
/// # Panics
/// On mismatched shapes or a view that does not fit its slice (a bug in the caller).
pub fn gemm(
    dst: MatMut<'_>,
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    alpha: f32,
    accumulate: bool,
    threads: usize,
) {
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    assert!(
        lhs.rows == m && rhs.rows == k && rhs.cols == n,
        "gemm shape mismatch: {m}x{n} = {}x{} · {}x{}",
        lhs.rows,
        lhs.cols,
        rhs.rows,
        rhs.cols
    );
    check("dst", dst.data.len(), m, n, dst.row_stride, dst.col_stride);
    check("lhs", lhs.data.len(), m, k, lhs.row_stride, lhs.col_stride);
    check("rhs", rhs.data.len(), k, n, rhs.row_stride, rhs.col_stride);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for c in 0..n {
                    dst.data[r * dst.row_stride + c * dst.col_stride] = 0.0;
                }
            }
        }
        return;
    }
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    let (alpha_dst, read_dst) = if accumulate {
        (1.0, true)
    } else {
        (0.0, false)
    };
    // SAFETY: every index the kernel touches, (r·rs + c·cs) for r < rows and c < cols of each view,
    // was checked above to lie inside its slice; strides fit isize; `dst` is an exclusive borrow
    // that cannot alias `lhs`/`rhs` (shared borrows); with `read_dst == false` the kernel only
    // writes dst.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            dst.col_stride as isize,
            dst.row_stride as isize,
            read_dst,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            alpha_dst,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_product_with_strides_and_accumulate() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        // b stored as (n, k) row-major and read transposed: b[kk][j] = bt[j*k + kk].
        let bt: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 - 1.5).collect();
        let mut c = vec![1.0f32; m * (n + 2)];
        gemm(
            MatMut::rows(&mut c, m, n, n + 2),
            MatRef::rows(&a, m, k, k),
            MatRef::transposed(&bt, k, n, k),
            2.0,
            true,
            1,
        );
        for r in 0..m {
            for j in 0..n {
                let want: f32 =
                    1.0 + 2.0 * (0..k).map(|kk| a[r * k + kk] * bt[j * k + kk]).sum::<f32>();
                assert!((c[r * (n + 2) + j] - want).abs() < 1e-4, "({r},{j})");
            }
            assert_eq!(c[r * (n + 2) + n], 1.0, "padding untouched");
        }
    }

    #[test]
    #[should_panic(expected = "needs")]
    fn rejects_views_that_overrun_their_slice() {
        let a = vec![0.0f32; 6];
        let mut c = vec![0.0f32; 4];
        gemm(
            MatMut::rows(&mut c, 2, 2, 2),
            MatRef::rows(&a, 2, 4, 4),
            MatRef::rows(&a, 4, 2, 2),
            1.0,
            false,
            1,
        );
    }
}
