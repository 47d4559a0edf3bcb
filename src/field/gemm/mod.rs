//! The scalar trait of the fields and a bounds-checked, allocation-free strided GEMM over
//! flat buffers.
//!
//! # Why our own GEMM
//! The batched MLP calls [`Gemm::gemm`] a handful of times per chunk of 128 samples in every
//! `eval`, `eval_div` and `vjp_aug`, and hot calls must not allocate. General-purpose crates
//! (`matrixmultiply`, `gemm`) allocate their packing buffer on every call, so this module
//! carries its own implementation, sized for the shapes the fields produce: `m` = 128 or a
//! few hundred rows, `k` and `n` from 2 to a few hundred, row-major operands or transposed
//! views of them (swapped strides).
//!
//! # The algorithm
//! The classic five loops around a register-blocked micro-kernel (Goto/BLIS):
//!
//! 1. `n` in blocks of `NC` columns; 2. the depth `k` in blocks of `KC` (the first block uses
//!    the caller's `β`, later ones accumulate with `β = 1`);
//! 3. the `KC × NC` block of `B` is *packed* into panels `NR` columns wide, each panel stored
//!    depth step by depth step (`NR` consecutive elements per step, the last panel
//!    zero-padded), so the kernel reads it with contiguous (unaligned) vector loads whatever
//!    the original strides were (on the x86 kernels the transposing case, `B` contiguous along
//!    the depth as a row-major weight matrix viewed transposed, runs in `4 × 4` register
//!    transposes). A `B` whose rows are contiguous, at most 512 bytes apart and a whole
//!    number of panels wide is read in place instead (the panels are then slices of its
//!    rows; see `b_in_place` in `kernel.rs`), with the same operations in the same order;
//! 4. `m` in blocks of `MC` rows. `A` is *not* packed: the micro-kernel reads it in place
//!    through its two strides (BLIS's "sup" scheme), broadcasting `A[i, p]` through `MR`
//!    precomputed row pointers at every depth step (rows past the edge of a partial tile
//!    repeat its last row and are never stored). Only a wide product, whose `A` blocks are
//!    reread for many `B` panels (at least 128 panels when `A` has unit depth stride, 32
//!    otherwise), packs each `MC × KC` block of `A` into panels `MR` rows tall first, which
//!    the same kernel reads with strides `(1, MR)`. The routes run the same operations in the
//!    same order, so they give the same bits (see `a_route` in `kernel.rs` for the
//!    measurements behind the thresholds);
//! 5. for every `NR` panel of `B` and `MR` rows of `A`, the micro-kernel accumulates the
//!    `MR × NR` tile of `A·B` in registers over the whole depth block, then writes
//!    `α·acc + β·C` into `C` (vector loads/stores for a full tile with unit column stride, a
//!    scalar loop with the same arithmetic for edge tiles and strided `C`; `C` is never read
//!    when `β = 0`).
//!
//! A narrow product (`n < NR` and `m > n`) is computed as `Cᵀ = Bᵀ·Aᵀ` (swapped strides
//! again), so the wide dimension fills the tile; but at most 4 columns wide with `A`
//! contiguous along the depth (the 2-wide output layer of a 2-D flow) it runs as dot
//! products: `Bᵀ` copied once (`n·k` elements), four rows of `A` at a time against it one
//! vector register of depth per step, each sum reduced over the register's lanes pairwise
//! (`small_n_body` in `kernel.rs`) — no `k × m` block of `A` packed for a product of
//! `2·k·m` flops.
//!
//! # Kernels
//! On x86-64 with AVX2 and FMA (detected at run time with `is_x86_feature_detected!`; the
//! standard library caches the answer) the kernels are `6 × 8` for `f64` and `6 × 16` for
//! `f32`: twelve `ymm` accumulators, per depth step two vector loads of the `B` panel, six
//! broadcasts from `A` (in place or packed) and twelve FMAs. With AVX-512F both run the same
//! scheme on `zmm` registers (`6 × 16` for `f64`, `6 × 32` for `f32`). Everywhere else a
//! portable `4 × 8` kernel in plain arrays runs (the compiler vectorizes it for the baseline
//! target features). All blocking parameters:
//! `KC = 256`; `MC = 72` (`f64`), `144` (`f32`), `128` (portable); `NC = 4080` (4096; `4064` for the `6 × 32` kernel, a multiple of its width).
//!
//! # Packing buffers
//! The packed `B` block (and, on the packed route, the packed `A` block) live in one buffer
//! per thread and element type (a `thread_local!` `Vec`), grown to the next power of two when
//! a call needs more than it holds and reused by every later call on that thread: after the
//! first call of the largest shape a thread sees, GEMMs allocate nothing. (Each rayon worker
//! has its own buffer, grown on its first GEMM.) The buffers are at most `KC·(MC + NC)`
//! elements, `KC·NC` when `A` is read in place (none when `B` is too).
//!
//! # Determinism
//! The order of the floating-point operations depends only on the shape (and on which kernel
//! the CPU selects), never on the thread or on earlier calls: a given input gives
//! bit-identical results on every call and thread. Results differ from other GEMMs' in the
//! last bits (different summation order and FMA contraction).

/// Strided general matrix multiply `C ← α·A·B + β·C` for one scalar type.
///
/// `A` is `m × k`, `B` is `k × n`, `C` is `m × n`; each operand is a flat slice with a
/// `(row stride, column stride)` pair, so a transposed view of a row-major buffer is just
/// swapped strides and never a copy. Implemented for exactly `f32` and `f64` by this
/// crate's own blocked GEMM (packed `B` panels, `A` read in place, a register-blocked
/// AVX-512/AVX2 + FMA micro-kernel picked at run time, a portable one elsewhere; packing
/// buffers kept per thread): no
/// allocation after a thread's first call of its largest shape, and bit-identical results for
/// a given input on every call and thread (not bit-identical to other GEMM libraries).
pub trait Gemm: Copy {
    /// `C ← α·A·B + β·C` with `C` not read when `β = 0`.
    ///
    /// # Panics
    /// If a stride pattern addresses an element outside its slice (checked always; the
    /// check is a handful of multiplications per call).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: &[Self],
        sa: (usize, usize),
        b: &[Self],
        sb: (usize, usize),
        beta: Self,
        c: &mut [Self],
        sc: (usize, usize),
    );
}

mod kernel;

#[inline]
fn check(len: usize, rows: usize, cols: usize, s: (usize, usize), what: &str) {
    if rows == 0 || cols == 0 {
        return;
    }
    // Checked: a wrapped product could pass the comparison and let the kernel read or
    // write outside the slice.
    let last = (rows - 1)
        .checked_mul(s.0)
        .zip((cols - 1).checked_mul(s.1))
        .and_then(|(r, c)| r.checked_add(c));
    assert!(
        last.is_some_and(|last| last < len),
        "gemm: {what} ({rows}×{cols}, strides {s:?}) exceeds its buffer of {len}"
    );
}

macro_rules! impl_gemm {
    ($t:ty, $f:path) => {
        impl Gemm for $t {
            #[inline]
            fn gemm(
                m: usize,
                k: usize,
                n: usize,
                alpha: $t,
                a: &[$t],
                sa: (usize, usize),
                b: &[$t],
                sb: (usize, usize),
                beta: $t,
                c: &mut [$t],
                sc: (usize, usize),
            ) {
                if m == 0 || n == 0 {
                    return;
                }
                check(c.len(), m, n, sc, "C");
                if k == 0 {
                    for i in 0..m {
                        for j in 0..n {
                            let x = &mut c[i * sc.0 + j * sc.1];
                            *x = if beta == 0.0 { 0.0 } else { beta * *x };
                        }
                    }
                    return;
                }
                check(a.len(), m, k, sa, "A");
                check(b.len(), k, n, sb, "B");
                // SAFETY: every element addressed by (m, k, n) and the strides lies inside the
                // slices (checked above); `c` is borrowed mutably so it aliases neither input.
                unsafe {
                    $f(m, k, n, alpha, a.as_ptr(), sa, b.as_ptr(), sb, beta, c.as_mut_ptr(), sc)
                }
            }
        }
    };
}

impl_gemm!(f32, kernel::sgemm);
impl_gemm!(f64, kernel::dgemm);

/// The scalar type of the vector fields: [`odeflow_solvers::Real`] (exactly `f32` or `f64`)
/// plus the strided GEMM the batched layers run on and the vectorizable `exp`/`ln(1 + y)` of
/// the activation loops ([`FastMath`](super::FastMath)). Blanket-implemented; nothing to do.
pub trait Real: odeflow_solvers::Real + Gemm + super::FastMath {}

impl<T: odeflow_solvers::Real + Gemm + super::FastMath> Real for T {}

#[cfg(test)]
mod tests {
    use super::Gemm;

    #[test]
    fn gemm_transposed_views() {
        // A = [[1,2,3],[4,5,6]] (2×3 row-major); B = Aᵀ through strides; C = A Aᵀ.
        let a = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut c = [0.0f64; 4];
        f64::gemm(2, 3, 2, 1.0, &a, (3, 1), &a, (1, 3), 0.0, &mut c, (2, 1));
        assert_eq!(c.map(f64::to_bits), [14.0, 32.0, 32.0, 77.0].map(f64::to_bits));
        f64::gemm(2, 3, 2, 1.0, &a, (3, 1), &a, (1, 3), 1.0, &mut c, (2, 1));
        assert_eq!(c.map(f64::to_bits), [28.0, 64.0, 64.0, 154.0].map(f64::to_bits));
    }

    #[test]
    #[should_panic(expected = "exceeds")]
    fn gemm_out_of_bounds_panics() {
        let a = [1.0f32; 5];
        let mut c = [0.0f32; 4];
        f32::gemm(2, 3, 2, 1.0, &a, (3, 1), &a, (1, 3), 0.0, &mut c, (2, 1));
    }

    /// A stride whose address arithmetic wraps around (3 · s ≡ 1 mod 2⁶⁴) is caught, on A
    /// and on C, before the kernel dereferences anything (it read out of bounds).
    #[test]
    fn gemm_wrapping_strides_panic() {
        let wrap = 0xAAAA_AAAA_AAAA_AAAB_usize;
        assert_eq!(3usize.wrapping_mul(wrap), 1);
        for on_c in [false, true] {
            let caught = std::panic::catch_unwind(|| {
                let (a, b, mut c) = ([1.0f64; 2], [1.0f64; 1], [0.0f64; 4]);
                let (sa, sc) = if on_c { ((1, 1), (wrap, 1)) } else { ((wrap, 1), (1, 1)) };
                f64::gemm(4, 1, 1, 1.0, &a, sa, &b, (1, 1), 0.0, &mut c, sc);
            });
            let msg = caught.unwrap_err();
            let msg = msg.downcast_ref::<String>().unwrap();
            assert!(msg.contains("exceeds its buffer"), "{msg}");
        }
    }

    /// Same input, same bits: repeated calls and calls on other threads agree exactly.
    #[test]
    fn gemm_deterministic_across_calls_and_threads() {
        let (m, k, n) = (128, 64, 64);
        let a: Vec<f64> = (0..m * k).map(|i| ((i * 37 % 101) as f64 - 50.0) / 7.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| ((i * 53 % 97) as f64 - 48.0) / 11.0).collect();
        let run = || {
            let mut c = vec![0.0f64; m * n];
            f64::gemm(m, k, n, 1.0, &a, (k, 1), &b, (1, k), 0.0, &mut c, (n, 1));
            c.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        let other = std::thread::scope(|s| s.spawn(run).join().unwrap());
        assert_eq!(first, other);
    }
}
