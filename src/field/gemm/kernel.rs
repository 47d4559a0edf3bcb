//! The blocked GEMM driver, the packing routines, the per-thread packing buffers and the
//! micro-kernels (AVX2 + FMA on x86-64, chosen at run time; portable elsewhere).
//!
//! See the [parent module](super) for the design; everything here works on raw pointers
//! whose bounds the caller ([`Gemm::gemm`](super::Gemm::gemm)) has already checked.

use std::cell::RefCell;
use std::ops::{Add, Mul};

/// The element types the driver runs on (`f32`, `f64`): arithmetic plus a per-thread packing
/// buffer.
pub(super) trait Elem:
    Copy + PartialEq + Add<Output = Self> + Mul<Output = Self> + 'static
{
    /// Additive identity.
    const ZERO: Self;
    /// Multiplicative identity.
    const ONE: Self;

    /// Runs `f` on this thread's packing buffer of at least `need` elements, grown (once per
    /// new maximum, to a power of two) and then reused by every later call on the thread.
    fn with_pack<R>(need: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

thread_local! {
    static PACK_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PACK_F64: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

macro_rules! impl_elem {
    ($t:ty, $tls:ident) => {
        impl Elem for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;

            fn with_pack<R>(need: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                let mut f = Some(f);
                let r = $tls.try_with(|cell| {
                    // A re-entrant call cannot happen (the driver calls no user code), but a
                    // failed borrow falls through to the private buffer below all the same.
                    let mut buf = cell.try_borrow_mut().ok()?;
                    if buf.len() < need {
                        *buf = vec![0.0; need.next_power_of_two()];
                    }
                    Some((f.take().expect("called once"))(&mut buf[..need]))
                });
                match r {
                    Ok(Some(r)) => r,
                    // The thread-local is being torn down (a GEMM from a thread-local
                    // destructor): a private buffer, allocated for this call only.
                    _ => (f.take().expect("called once"))(&mut vec![0.0; need]),
                }
            }
        }
    };
}

impl_elem!(f32, PACK_F32);
impl_elem!(f64, PACK_F64);

/// A register-blocked micro-kernel: one `MR × NR` tile of `C` from packed panels.
pub(super) trait MicroKernel<T: Elem> {
    /// Rows of the register tile (the width of a packed `A` panel).
    const MR: usize;
    /// Columns of the register tile (the width of a packed `B` panel).
    const NR: usize;
    /// Rows of `A` packed at a time (a multiple of `MR`; the packed block stays in L2).
    const MC: usize;
    /// Depth packed at a time (a `KC × NR` panel of `B` stays in L1).
    const KC: usize;
    /// Columns of `B` packed at a time (a multiple of `NR`).
    const NC: usize;

    /// `C[..mr, ..nr] ← α·(Ã·B̃) + β·C[..mr, ..nr]`, `C` not read when `β = 0`.
    ///
    /// # Safety
    /// `ap` holds `kc·MR` and `bp` `kc·NR` readable elements (an `A` panel stored `MR` per
    /// depth step, a `B` panel `NR` per depth step); `1 ≤ mr ≤ MR`, `1 ≤ nr ≤ NR`; every
    /// `c + i·rs + j·cs` for `i < mr`, `j < nr` is valid for reads and writes and aliases
    /// neither panel.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        kc: usize,
        alpha: T,
        ap: *const T,
        bp: *const T,
        beta: T,
        c: *mut T,
        rs: usize,
        cs: usize,
        mr: usize,
        nr: usize,
    );
}

/// Packs a `width × kc` block (element `(w, p)` at `src + w·sw + p·sk`) into panels of `W`
/// along `width`: panel `q` is `kc` groups of `W` consecutive elements (`(q·W + i, p)` at
/// `q·W·kc + p·W + i`), the last panel zero-padded.
///
/// # Safety
/// Every `src + w·sw + p·sk` for `w < width`, `p < kc` is readable; `out` holds at least
/// `⌈width / W⌉·W·kc` elements.
unsafe fn pack<T: Elem, const W: usize>(
    kc: usize,
    width: usize,
    src: *const T,
    sw: usize,
    sk: usize,
    out: &mut [T],
) {
    let panels = width.div_ceil(W);
    for (q, panel) in out[..panels * W * kc].chunks_exact_mut(W * kc).enumerate() {
        let w0 = q * W;
        let rows = W.min(width - w0);
        // SAFETY (all reads below): w0 + i < width and p < kc, as the caller guarantees.
        if rows == W && sw == 1 {
            // Contiguous along the panel width (column-major A, row-major B): W-element copies.
            for (p, dst) in panel.chunks_exact_mut(W).enumerate() {
                let s = unsafe { src.add(w0 + p * sk) };
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = unsafe { *s.add(i) };
                }
            }
        } else if rows == W {
            // Contiguous along the depth (row-major A, column-major B) or general strides:
            // W streams read in step, each depth step's W elements written together.
            for (p, dst) in panel.chunks_exact_mut(W).enumerate() {
                let s = unsafe { src.add(p * sk) };
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = unsafe { *s.add((w0 + i) * sw) };
                }
            }
        } else {
            // The last, partial panel: zero-padded to W.
            for i in 0..rows {
                let s = unsafe { src.add((w0 + i) * sw) };
                for p in 0..kc {
                    panel[p * W + i] = unsafe { *s.add(p * sk) };
                }
            }
            for i in rows..W {
                for p in 0..kc {
                    panel[p * W + i] = T::ZERO;
                }
            }
        }
    }
}

/// `C ← α·A·B + β·C` on kernel `K`: the five loops around the micro-kernel.
///
/// # Safety
/// `m, k, n ≥ 1`; every element addressed by `(m, k, n)` and the strides lies in its operand
/// (`A`, `B` readable, `C` readable and writable) and `C` aliases neither input.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn driver<T: Elem, K: MicroKernel<T>>(
    m: usize,
    k: usize,
    n: usize,
    alpha: T,
    a: *const T,
    sa: (usize, usize),
    b: *const T,
    sb: (usize, usize),
    beta: T,
    c: *mut T,
    sc: (usize, usize),
) {
    // A narrow C (n below one register tile, m larger) is computed as Cᵀ = Bᵀ·Aᵀ, so that the
    // wide dimension fills the tile's columns. The choice depends on the shape only.
    let (m, n, a, sa, b, sb, sc) = if n < K::NR && m > n {
        (n, m, b, (sb.1, sb.0), a, (sa.1, sa.0), (sc.1, sc.0))
    } else {
        (m, n, a, sa, b, sb, sc)
    };
    let kc_max = k.min(K::KC);
    let mc_max = m.next_multiple_of(K::MR).min(K::MC);
    let nc_max = n.next_multiple_of(K::NR).min(K::NC);
    T::with_pack(kc_max * (mc_max + nc_max), |buf| {
        let (abuf, bbuf) = buf.split_at_mut(kc_max * mc_max);
        for jc in (0..n).step_by(K::NC) {
            let nc = K::NC.min(n - jc);
            for pc in (0..k).step_by(K::KC) {
                let kc = K::KC.min(k - pc);
                // Later depth blocks accumulate onto the first one's result.
                let beta = if pc == 0 { beta } else { T::ONE };
                // SAFETY: rows pc..pc + kc and columns jc..jc + nc of B are in bounds; bbuf
                // holds ⌈nc / NR⌉·NR·kc ≤ nc_max·kc_max elements.
                unsafe { pack_b::<T, K>(kc, nc, b.add(pc * sb.0 + jc * sb.1), sb, bbuf) };
                for ic in (0..m).step_by(K::MC) {
                    let mc = K::MC.min(m - ic);
                    // SAFETY: as for B, rows ic..ic + mc and columns pc..pc + kc of A.
                    unsafe { pack_a::<T, K>(kc, mc, a.add(ic * sa.0 + pc * sa.1), sa, abuf) };
                    for jr in (0..nc).step_by(K::NR) {
                        let nr = K::NR.min(nc - jr);
                        for ir in (0..mc).step_by(K::MR) {
                            let mr = K::MR.min(mc - ir);
                            // SAFETY: panel ir / MR of abuf and jr / NR of bbuf are packed
                            // (kc·MR and kc·NR elements); the mr × nr tile of C at
                            // (ic + ir, jc + jr) is in bounds and disjoint from the buffers.
                            unsafe {
                                K::tile(
                                    kc,
                                    alpha,
                                    abuf.as_ptr().add(ir * kc),
                                    bbuf.as_ptr().add(jr * kc),
                                    beta,
                                    c.add((ic + ir) * sc.0 + (jc + jr) * sc.1),
                                    sc.0,
                                    sc.1,
                                    mr,
                                    nr,
                                )
                            };
                        }
                    }
                }
            }
        }
    })
}

/// Packs `B[.., ..nc]` (depth `kc`) into `NR`-wide panels.
///
/// # Safety
/// As for [`pack`], with `width = nc`, `sw = sb.1`, `sk = sb.0`.
#[inline]
unsafe fn pack_b<T: Elem, K: MicroKernel<T>>(
    kc: usize,
    nc: usize,
    b: *const T,
    sb: (usize, usize),
    out: &mut [T],
) {
    // Const-generic dispatch on the kernel's NR (the kernels here use 8, 16 and 32).
    // SAFETY: forwarded from the caller.
    unsafe {
        match K::NR {
            4 => pack::<T, 4>(kc, nc, b, sb.1, sb.0, out),
            8 => pack::<T, 8>(kc, nc, b, sb.1, sb.0, out),
            16 => pack::<T, 16>(kc, nc, b, sb.1, sb.0, out),
            32 => pack::<T, 32>(kc, nc, b, sb.1, sb.0, out),
            _ => unreachable!("no packing routine for NR = {}", K::NR),
        }
    }
}

/// Packs `A[..mc, ..]` (depth `kc`) into `MR`-tall panels.
///
/// # Safety
/// As for [`pack`], with `width = mc`, `sw = sa.0`, `sk = sa.1`.
#[inline]
unsafe fn pack_a<T: Elem, K: MicroKernel<T>>(
    kc: usize,
    mc: usize,
    a: *const T,
    sa: (usize, usize),
    out: &mut [T],
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match K::MR {
            4 => pack::<T, 4>(kc, mc, a, sa.0, sa.1, out),
            6 => pack::<T, 6>(kc, mc, a, sa.0, sa.1, out),
            _ => unreachable!("no packing routine for MR = {}", K::MR),
        }
    }
}

/// Writes an `MR × NR` accumulator tile (row-major in `acc`, already scaled by `α`) to
/// `C[..mr, ..nr]`: `C ← acc + β·C`, `C` not read when `β = 0`.
///
/// # Safety
/// As for [`MicroKernel::tile`]'s `C`; `acc` holds at least `(mr − 1)·ld + nr` elements.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn store_scalar<T: Elem>(
    acc: &[T],
    ld: usize,
    beta: T,
    c: *mut T,
    rs: usize,
    cs: usize,
    mr: usize,
    nr: usize,
) {
    for i in 0..mr {
        for j in 0..nr {
            // SAFETY: i < mr, j < nr: inside the tile the caller vouches for.
            let x = unsafe { &mut *c.add(i * rs + j * cs) };
            let t = acc[i * ld + j];
            *x = if beta == T::ZERO { t } else { t + beta * *x };
        }
    }
}

/// The portable micro-kernel (any CPU): a `4 × 8` tile in plain arrays, which the compiler
/// keeps in registers and vectorizes for the baseline target features.
pub(super) struct Portable;

impl<T: Elem> MicroKernel<T> for Portable {
    const MR: usize = 4;
    const NR: usize = 8;
    const MC: usize = 128;
    const KC: usize = 256;
    const NC: usize = 4096;

    unsafe fn tile(
        kc: usize,
        alpha: T,
        ap: *const T,
        bp: *const T,
        beta: T,
        c: *mut T,
        rs: usize,
        cs: usize,
        mr: usize,
        nr: usize,
    ) {
        // SAFETY: the panels hold kc·4 and kc·8 elements (the caller's contract).
        let (a, b) = unsafe {
            (std::slice::from_raw_parts(ap, kc * 4), std::slice::from_raw_parts(bp, kc * 8))
        };
        let mut acc = [[T::ZERO; 8]; 4];
        for (ak, bk) in a.chunks_exact(4).zip(b.chunks_exact(8)) {
            for i in 0..4 {
                for j in 0..8 {
                    acc[i][j] = acc[i][j] + ak[i] * bk[j];
                }
            }
        }
        let mut flat = [T::ZERO; 32];
        for i in 0..4 {
            for j in 0..8 {
                flat[i * 8 + j] = alpha * acc[i][j];
            }
        }
        // SAFETY: the caller's contract on C.
        unsafe { store_scalar(&flat, 8, beta, c, rs, cs, mr, nr) };
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{Avx2F32, Avx2F64, Avx512F32, Avx512F64};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{store_scalar, MicroKernel};
    use std::arch::x86_64::*;

    /// AVX2 + FMA `f64` kernel: a `6 × 8` tile in twelve `ymm` accumulators (two per row);
    /// per depth step two loads of `B̃`, six broadcasts of `Ã`, twelve FMAs.
    pub(in super::super) struct Avx2F64;

    /// AVX2 + FMA `f32` kernel: a `6 × 16` tile, otherwise as [`Avx2F64`].
    pub(in super::super) struct Avx2F32;

    /// AVX-512F `f64` kernel: a `6 × 16` tile in twelve `zmm` accumulators, otherwise as
    /// [`Avx2F64`].
    pub(in super::super) struct Avx512F64;

    /// AVX-512F `f32` kernel: a `6 × 32` tile in twelve `zmm` accumulators, otherwise as
    /// [`Avx2F32`].
    pub(in super::super) struct Avx512F32;

    macro_rules! avx2_kernel {
        ($name:ident, $imp:ident, $t:ty, $nr:expr, $lanes:expr, $v:ty, $zero:ident, $load:ident,
         $store:ident, $set1:ident, $fma:ident, $mul:ident, $add:ident, $mc:expr, $nc:expr,
         $feat:literal) => {
            impl MicroKernel<$t> for $name {
                const MR: usize = 6;
                const NR: usize = $nr;
                const MC: usize = $mc;
                const KC: usize = 256;
                const NC: usize = $nc;

                #[inline]
                unsafe fn tile(
                    kc: usize,
                    alpha: $t,
                    ap: *const $t,
                    bp: *const $t,
                    beta: $t,
                    c: *mut $t,
                    rs: usize,
                    cs: usize,
                    mr: usize,
                    nr: usize,
                ) {
                    // SAFETY: the kernels are only selected after their target features were
                    // detected (see `dgemm`/`sgemm`); the rest is the caller's contract.
                    unsafe { $imp(kc, alpha, ap, bp, beta, c, rs, cs, mr, nr) }
                }
            }

            /// # Safety
            #[doc = concat!("The target features `", $feat, "` are available; otherwise as")]
            /// [`MicroKernel::tile`].
            #[target_feature(enable = $feat)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn $imp(
                kc: usize,
                alpha: $t,
                ap: *const $t,
                bp: *const $t,
                beta: $t,
                c: *mut $t,
                rs: usize,
                cs: usize,
                mr: usize,
                nr: usize,
            ) {
                const MR: usize = 6;
                const NR: usize = $nr;
                const L: usize = $lanes;
                let mut acc: [[$v; 2]; MR] = [[$zero(); 2]; MR];
                for p in 0..kc {
                    // SAFETY: p < kc, so p·NR + NR ≤ kc·NR and p·MR + MR ≤ kc·MR elements.
                    unsafe {
                        let b0 = $load(bp.add(p * NR));
                        let b1 = $load(bp.add(p * NR + L));
                        let a = ap.add(p * MR);
                        for (i, acc) in acc.iter_mut().enumerate() {
                            let ai = $set1(*a.add(i));
                            acc[0] = $fma(ai, b0, acc[0]);
                            acc[1] = $fma(ai, b1, acc[1]);
                        }
                    }
                }
                let va = $set1(alpha);
                for acc in acc.iter_mut() {
                    acc[0] = $mul(va, acc[0]);
                    acc[1] = $mul(va, acc[1]);
                }
                if mr == MR && nr == NR && cs == 1 {
                    // Full tile, unit column stride: vector loads/stores straight into C.
                    let vb = $set1(beta);
                    for (i, acc) in acc.iter().enumerate() {
                        for (h, &v) in acc.iter().enumerate() {
                            // SAFETY: row i < MR, columns h·L..h·L + L < NR of the tile.
                            unsafe {
                                let x = c.add(i * rs + h * L);
                                let v = if beta == 0.0 { v } else { $add(v, $mul(vb, $load(x))) };
                                $store(x, v);
                            }
                        }
                    }
                } else {
                    // Edge tile or strided C: through a scalar copy of the accumulators, with
                    // the same arithmetic (α·acc + β·c, unfused) as the vector path.
                    let mut flat = [0.0 as $t; MR * NR];
                    for (i, acc) in acc.iter().enumerate() {
                        // SAFETY: row i of `flat` has room for the 2·L = NR lanes.
                        unsafe {
                            $store(flat.as_mut_ptr().add(i * NR), acc[0]);
                            $store(flat.as_mut_ptr().add(i * NR + L), acc[1]);
                        }
                    }
                    // SAFETY: the caller's contract on C.
                    unsafe { store_scalar(&flat, NR, beta, c, rs, cs, mr, nr) };
                }
            }
        };
    }

    avx2_kernel!(
        Avx2F64,
        avx2_f64_tile,
        f64,
        8,
        4,
        __m256d,
        _mm256_setzero_pd,
        _mm256_loadu_pd,
        _mm256_storeu_pd,
        _mm256_set1_pd,
        _mm256_fmadd_pd,
        _mm256_mul_pd,
        _mm256_add_pd,
        72,
        4080,
        "avx2,fma"
    );
    avx2_kernel!(
        Avx2F32,
        avx2_f32_tile,
        f32,
        16,
        8,
        __m256,
        _mm256_setzero_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_mul_ps,
        _mm256_add_ps,
        144,
        4080,
        "avx2,fma"
    );
    avx2_kernel!(
        Avx512F64,
        avx512_f64_tile,
        f64,
        16,
        8,
        __m512d,
        _mm512_setzero_pd,
        _mm512_loadu_pd,
        _mm512_storeu_pd,
        _mm512_set1_pd,
        _mm512_fmadd_pd,
        _mm512_mul_pd,
        _mm512_add_pd,
        72,
        4080,
        "avx512f"
    );
    avx2_kernel!(
        Avx512F32,
        avx512_f32_tile,
        f32,
        32,
        16,
        __m512,
        _mm512_setzero_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_mul_ps,
        _mm512_add_ps,
        144,
        4064,
        "avx512f"
    );
}

/// Whether the AVX2 + FMA kernels can run (cached by the standard library after the first
/// query: one relaxed atomic load per call).
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Whether the AVX-512F kernel can run (cached like [`has_avx2_fma`]).
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx512f() -> bool {
    is_x86_feature_detected!("avx512f")
}

macro_rules! entry {
    ($name:ident, $t:ty, $avx2:ident $(, $avx512:ident)?) => {
        /// `C ← α·A·B + β·C` on the best kernel for this CPU.
        ///
        /// # Safety
        /// As for [`driver`].
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn $name(
            m: usize,
            k: usize,
            n: usize,
            alpha: $t,
            a: *const $t,
            sa: (usize, usize),
            b: *const $t,
            sb: (usize, usize),
            beta: $t,
            c: *mut $t,
            sc: (usize, usize),
        ) {
            $(
                #[cfg(target_arch = "x86_64")]
                if has_avx512f() {
                    // SAFETY: the caller's contract; AVX-512F detected just above.
                    return unsafe {
                        driver::<$t, $avx512>(m, k, n, alpha, a, sa, b, sb, beta, c, sc)
                    };
                }
            )?
            #[cfg(target_arch = "x86_64")]
            if has_avx2_fma() {
                // SAFETY: the caller's contract; AVX2 + FMA detected just above.
                return unsafe { driver::<$t, $avx2>(m, k, n, alpha, a, sa, b, sb, beta, c, sc) };
            }
            // SAFETY: the caller's contract.
            unsafe { driver::<$t, Portable>(m, k, n, alpha, a, sa, b, sb, beta, c, sc) }
        }
    };
}

entry!(dgemm, f64, Avx2F64, Avx512F64);
entry!(sgemm, f32, Avx2F32, Avx512F32);

#[cfg(test)]
mod tests {
    use super::{driver, Elem, MicroKernel, Portable};

    /// Small deterministic pseudo-random numbers in [−1, 1).
    fn fill(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    /// The stride pairs of an `r × c` operand: row-major, column-major, each with a padded
    /// leading dimension; returns (strides, buffer length).
    fn layouts(r: usize, c: usize) -> [((usize, usize), usize); 4] {
        let len = |s: (usize, usize)| (r - 1) * s.0 + (c - 1) * s.1 + 1;
        let rm = (c, 1);
        let cm = (1, r);
        let rmp = (c + 3, 1);
        let cmp = (1, r + 2);
        [(rm, len(rm)), (cm, len(cm)), (rmp, len(rmp)), (cmp, len(cmp))]
    }

    trait Cast: Elem + std::fmt::Debug {
        const EPS: f64;
        fn of(x: f64) -> Self;
        fn to(self) -> f64;
    }
    impl Cast for f64 {
        const EPS: f64 = f64::EPSILON;
        fn of(x: f64) -> Self {
            x
        }
        fn to(self) -> f64 {
            self
        }
    }
    impl Cast for f32 {
        const EPS: f64 = f32::EPSILON as f64;
        fn of(x: f64) -> Self {
            x as f32
        }
        fn to(self) -> f64 {
            self as f64
        }
    }

    /// Runs kernel `K` on every layout combination of `m × k · k × n` for a few (α, β) and
    /// checks each element against a naive triple loop in f64:
    /// `|c − ref| ≤ 2·(k + 2)·ε·(|α|·Σ_p |a_ip·b_pj| + |β·c_ij|)` (plus a denormal floor),
    /// the textbook bound `γ_k` of a k-term dot product with slack for the final scaling.
    fn check_shape<T: Cast, K: MicroKernel<T>>(m: usize, k: usize, n: usize) {
        check_layouts::<T, K>(m, k, n, 4, &[(1.0, 0.0), (1.0, 1.0), (-0.5, 2.0), (0.75, 0.0)]);
    }

    /// [`check_shape`] on the first `nl` layouts of each operand and the given (α, β).
    fn check_layouts<T: Cast, K: MicroKernel<T>>(
        m: usize,
        k: usize,
        n: usize,
        nl: usize,
        ab: &[(f64, f64)],
    ) {
        for (ai, &(sa, la)) in layouts(m, k).iter().take(nl).enumerate() {
            for (bi, &(sb, lb)) in layouts(k, n).iter().take(nl).enumerate() {
                for (ci, &(sc, lc)) in layouts(m, n).iter().take(nl).enumerate() {
                    for &(alpha, beta) in ab {
                        let seed =
                            (m * 1000 + k * 100 + n) as u64 * 64 + (ai * 16 + bi * 4 + ci) as u64;
                        let a64 = fill(la, seed);
                        let b64 = fill(lb, seed + 1);
                        let c64 = fill(lc, seed + 2);
                        let a: Vec<T> = a64.iter().map(|&x| T::of(x)).collect();
                        let b: Vec<T> = b64.iter().map(|&x| T::of(x)).collect();
                        let mut c: Vec<T> = c64.iter().map(|&x| T::of(x)).collect();
                        if beta == 0.0 {
                            // β = 0 must not read C: NaNs there must not propagate.
                            for i in 0..m {
                                for j in 0..n {
                                    c[i * sc.0 + j * sc.1] = T::of(f64::NAN);
                                }
                            }
                        }
                        let c0 = c.clone();
                        // SAFETY: the layouts' lengths cover every addressed element.
                        unsafe {
                            driver::<T, K>(
                                m,
                                k,
                                n,
                                T::of(alpha),
                                a.as_ptr(),
                                sa,
                                b.as_ptr(),
                                sb,
                                T::of(beta),
                                c.as_mut_ptr(),
                                sc,
                            )
                        };
                        let mut touched = vec![false; lc];
                        for i in 0..m {
                            for j in 0..n {
                                let idx = i * sc.0 + j * sc.1;
                                touched[idx] = true;
                                let (mut dot, mut mag) = (0.0, 0.0);
                                for p in 0..k {
                                    let x =
                                        a[i * sa.0 + p * sa.1].to() * b[p * sb.0 + j * sb.1].to();
                                    dot += x;
                                    mag += x.abs();
                                }
                                let old = if beta == 0.0 { 0.0 } else { c0[idx].to() };
                                let want = alpha * dot + beta * old;
                                let tol = 2.0
                                    * (k + 2) as f64
                                    * T::EPS
                                    * (alpha.abs() * mag + (beta * old).abs())
                                    + 1e-30;
                                let got = c[idx].to();
                                assert!(
                                    (got - want).abs() <= tol,
                                    "{m}×{k}×{n} sa {sa:?} sb {sb:?} sc {sc:?} α {alpha} β {beta}: \
                                     C[{i},{j}] = {got}, want {want} (tol {tol})"
                                );
                            }
                        }
                        // Elements outside the C view are left alone.
                        for (idx, t) in touched.iter().enumerate() {
                            if !t {
                                assert_eq!(c[idx].to().to_bits(), c0[idx].to().to_bits());
                            }
                        }
                    }
                }
            }
        }
    }

    const SIZES: [usize; 11] = [1, 2, 3, 5, 7, 8, 13, 17, 33, 64, 130];

    fn sweep<T: Cast, K: MicroKernel<T>>() {
        for &m in &SIZES {
            for &k in &[1, 2, 3, 9, 64] {
                for &n in &SIZES {
                    if m * k * n <= 130 * 64 * 33 {
                        check_shape::<T, K>(m, k, n);
                    }
                }
            }
        }
        // Depth beyond one KC block, and the MLP's shapes.
        check_shape::<T, K>(7, 600, 9);
        check_shape::<T, K>(128, 64, 2);
        check_shape::<T, K>(2, 128, 64);
        check_shape::<T, K>(64, 256, 3);
        check_shape::<T, K>(256, 64, 64);
    }

    #[test]
    fn portable_f64_matches_naive() {
        sweep::<f64, Portable>();
    }

    #[test]
    fn portable_f32_matches_naive() {
        sweep::<f32, Portable>();
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_f64_matches_naive() {
        if super::has_avx2_fma() {
            sweep::<f64, super::Avx2F64>();
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_f64_matches_naive() {
        if super::has_avx512f() {
            sweep::<f64, super::Avx512F64>();
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_f32_matches_naive() {
        if super::has_avx2_fma() {
            sweep::<f32, super::Avx2F32>();
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_f32_matches_naive() {
        if super::has_avx512f() {
            sweep::<f32, super::Avx512F32>();
        }
    }

    /// Large blocks in every dimension (several MC, NC and KC blocks).
    #[test]
    fn multi_block_shapes() {
        // m > MC, k > KC (β = 1 for the second depth block), n > NC; two layouts each.
        let (m, k, n, ab) = (150, 300, 4100, [(1.0, 0.0), (0.5, 2.0)]);
        check_layouts::<f64, Portable>(m, k, n, 2, &ab);
        #[cfg(target_arch = "x86_64")]
        if super::has_avx2_fma() {
            check_layouts::<f64, super::Avx2F64>(m, k, n, 2, &ab);
            if super::has_avx512f() {
                check_layouts::<f64, super::Avx512F64>(m, k, n, 2, &ab);
                check_layouts::<f32, super::Avx512F32>(m, k, n, 2, &ab);
            }
            check_layouts::<f32, super::Avx2F32>(m, k, n, 2, &ab);
        }
    }
}
