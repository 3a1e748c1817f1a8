//! Attention on the CPU without materialising `(b, heads, L, L)`.
//!
//! Work is split into tasks of one (batch, head, tile of query rows): `S = q_tile·kᵀ·scale` into
//! a per-thread scratch buffer (a GEMM), a row-wise softmax numerator `exp(S − max)` with its f32
//! row sums, `O = P·v` (a GEMM) into the task's block of a per-head output, and O scaled by 1/sum;
//! a final pass interleaves the heads into `(b, L, H·D)`. The scratch tile (tile × L) is reused
//! and stays cache-resident, so memory traffic is O(L·D) per head instead of O(L²), and no score
//! tensor is ever allocated. Larger tiles amortise the GEMM's packing of k and v over more rows.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use super::gemm::{MatMut, MatRef, gemm};
use super::math::exp;
use super::with_f32;

/// Default query rows per tile (see `set_tile`).
const DEFAULT_TILE: usize = 256;
static TILE: AtomicUsize = AtomicUsize::new(DEFAULT_TILE);

/// Sets the query rows per tile (benchmark tuning); 0 restores the default.
pub fn set_tile(rows: usize) {
    TILE.store(
        if rows == 0 { DEFAULT_TILE } else { rows },
        Ordering::Relaxed,
    );
}
/// Lanes of the independent accumulators that let the row reductions vectorise.
const LANES: usize = 16;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Row max with LANES independent accumulators (vectorisable).
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
        }
    }
    let mut m = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for a in acc {
        m = m.max(a);
    }
    m
}

/// `row ← exp(row − max)`, returning the sum (LANES partial sums, then combined).
#[inline(always)]
fn exp_shift_sum(row: &mut [f32], max: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            let e = exp(c[i] - max);
            c[i] = e;
            acc[i] += e;
        }
    }
    let mut s = 0.0;
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        s += *x;
    }
    acc.iter().sum::<f32>() + s
}

/// Softmax numerators of `rows` rows of `cols` scores in place; returns 1/sum per row.
fn softmax_rows(scores: &mut [f32], cols: usize, inv_sums: &mut [f32]) {
    super::vectorized(
        #[inline(always)]
        || {
            for (row, inv) in scores.chunks_exact_mut(cols).zip(inv_sums.iter_mut()) {
                let m = row_max(row);
                *inv = 1.0 / exp_shift_sum(row, m);
            }
        },
    );
}

/// `softmax(q·kᵀ/√D)·v` for q, k, v `(b, H, L, D)` f32 on the CPU; returns `(b, L, H·D)`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b_sz, n_head, seq_len, head_dim) = q.dims4()?;
    if k.dims() != q.dims() || v.dims() != q.dims() {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} differ",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    let scale = 1.0 / (head_dim as f32).sqrt();
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let head_len = seq_len * head_dim;
    let tile_rows = TILE.load(Ordering::Relaxed).max(1);
    // Per-head output (b, H, L, D): every task owns a contiguous block of it.
    let mut heads = vec![0.0f32; b_sz * n_head * head_len];
    with_f32(&q, |qs, ql| {
        with_f32(&k, |ks, kl| {
            with_f32(&v, |vs, vl| {
                let (qs, ks, vs) = (
                    &qs[ql.start_offset()..],
                    &ks[kl.start_offset()..],
                    &vs[vl.start_offset()..],
                );
                // One task per (batch, head, tile of query rows).
                heads
                    .par_chunks_mut(head_len)
                    .enumerate()
                    .flat_map(|(bh, head)| {
                        head.par_chunks_mut(tile_rows * head_dim)
                            .enumerate()
                            .map(move |(ti, tile)| (bh, ti, tile))
                    })
                    .for_each(|(bh, ti, tile)| {
                        let r0 = ti * tile_rows;
                        let rows = tile.len() / head_dim;
                        let base = bh * head_len;
                        let q_tile = &qs[base + r0 * head_dim..base + (r0 + rows) * head_dim];
                        let k_head = &ks[base..base + head_len];
                        let v_head = &vs[base..base + head_len];
                        SCRATCH.with(|cell| {
                            let mut scratch = cell.borrow_mut();
                            if scratch.len() < rows * seq_len + rows {
                                scratch.resize(rows * seq_len + rows, 0.0);
                            }
                            let (scores, inv) = scratch.split_at_mut(rows * seq_len);
                            let (scores, inv) = (&mut scores[..], &mut inv[..rows]);
                            // S = q_tile · kᵀ · scale: (rows, D)·(D, L).
                            gemm(
                                MatMut::rows(scores, rows, seq_len, seq_len),
                                MatRef::rows(q_tile, rows, head_dim, head_dim),
                                MatRef::transposed(k_head, head_dim, seq_len, head_dim),
                                scale,
                                false,
                                1,
                            );
                            softmax_rows(scores, seq_len, inv);
                            // O = P · v: (rows, L)·(L, D).
                            gemm(
                                MatMut::rows(tile, rows, head_dim, head_dim),
                                MatRef::rows(scores, rows, seq_len, seq_len),
                                MatRef::rows(v_head, seq_len, head_dim, head_dim),
                                1.0,
                                false,
                                1,
                            );
                            for (o, s) in tile.chunks_exact_mut(head_dim).zip(inv.iter()) {
                                for x in o {
                                    *x *= s;
                                }
                            }
                        });
                    });
                Ok(())
            })
        })
    })?;
    // (b, H, L, D) -> (b, L, H, D): each output row gathers its H head slices.
    let row_width = n_head * head_dim;
    let mut out = vec![0.0f32; b_sz * seq_len * row_width];
    out.par_chunks_mut(row_width)
        .enumerate()
        .for_each(|(r, row)| {
            let (bi, t) = (r / seq_len, r % seq_len);
            for (h, dst) in row.chunks_exact_mut(head_dim).enumerate() {
                let src = ((bi * n_head + h) * seq_len + t) * head_dim;
                dst.copy_from_slice(&heads[src..src + head_dim]);
            }
        });
    Tensor::from_vec(out, (b_sz, seq_len, row_width), &Device::Cpu)
}
