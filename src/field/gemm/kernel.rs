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

    /// `self·a + b` rounded once (one instruction where the caller enables FMA).
    fn mul_add(self, a: Self, b: Self) -> Self;
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

            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                <$t>::mul_add(self, a, b)
            }

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

/// A register-blocked micro-kernel: one `MR × NR` tile of `C` from `A` read in place through
/// its strides and an `NR`-wide panel of `B` (packed, or in place when its rows are
/// contiguous).
pub(super) trait MicroKernel<T: Elem> {
    /// Rows of the register tile (the width of a packed `A` panel).
    const MR: usize;
    /// Columns of the register tile (the width of a packed `B` panel).
    const NR: usize;
    /// Rows of `A` taken at a time (a multiple of `MR`; the block stays in L2).
    const MC: usize;
    /// Depth taken at a time (a `KC × NR` panel of `B` stays in L1).
    const KC: usize;
    /// Columns of `B` packed at a time (a multiple of `NR`).
    const NC: usize;

    /// `C[..mr, ..nr] ← α·(A·B̃) + β·C[..mr, ..nr]`, `C` not read when `β = 0`.
    ///
    /// Element `(i, p)` of `A` is read at `a + i·rsa + p·csa`: the caller's operand itself
    /// (the direct route) or a packed panel (`rsa = 1`, `csa = MR`). Rows `mr..MR` of the
    /// register tile repeat row `mr − 1` and are never stored. Per depth step the kernel
    /// broadcasts `A[i, p]` for each row and accumulates `A[i, p]·B̃[p, j]` in the same order
    /// whichever strides it was given, so both routes give the same bits. Element `(p, j)` of
    /// the `B` panel is read at `bp + p·ldb + j`: a packed panel (`ldb = NR`) or the caller's
    /// operand in place (`ldb` its row stride), again the same bits.
    ///
    /// # Safety
    /// `kc ≥ 1`; every `a + i·rsa + p·csa` for `i < mr`, `p < kc` is readable; every
    /// `bp + p·ldb + j` for `p < kc`, `j < NR` is readable; `1 ≤ mr ≤ MR`, `1 ≤ nr ≤ NR`;
    /// every `c + i·rs + j·cs` for `i < mr`, `j < nr` is valid for reads and writes and
    /// aliases neither input.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        kc: usize,
        alpha: T,
        a: *const T,
        rsa: usize,
        csa: usize,
        bp: *const T,
        ldb: usize,
        beta: T,
        c: *mut T,
        rs: usize,
        cs: usize,
        mr: usize,
        nr: usize,
    );

    /// A narrow product (see [`SMALL_N`]): `C[..m, ..n] ← α·A·B + β·C` with `A` contiguous
    /// along the depth (element `(i, p)` at `a + i·rsa + p`) and `B` given transposed
    /// (`bt`: row `j` at `j·ldbt`, its `k` elements then zeros up to `ldbt`), as dot
    /// products over the depth ([`small_n_body`]).
    ///
    /// # Safety
    /// `m, k ≥ 1`, `1 ≤ n ≤ SMALL_N`; every `a + i·rsa + p` (`i < m`, `p < k`) is readable;
    /// `ldbt ≥ k` is a multiple of [`SMALL_N_PAD`] and `bt` holds `n·ldbt` elements; every
    /// `c + i·sc.0 + j·sc.1` (`i < m`, `j < n`) is valid for reads and writes and aliases
    /// neither input.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    unsafe fn small_n(
        m: usize,
        k: usize,
        n: usize,
        alpha: T,
        a: *const T,
        rsa: usize,
        bt: &[T],
        ldbt: usize,
        beta: T,
        c: *mut T,
        sc: (usize, usize),
    ) where
        Self: Sized,
    {
        // SAFETY: forwarded from the caller.
        unsafe { small_n_body::<T, 4, false>(m, k, n, alpha, a, rsa, bt, ldbt, beta, c, sc) }
    }

    /// Packs `B[.., ..nc]` (depth `kc`) into `NR`-wide panels, exactly as [`pack`] does; a
    /// kernel may override it with a vectorized routine that writes the same panels.
    ///
    /// # Safety
    /// As for [`pack`], with `width = nc`, `sw = sb.1`, `sk = sb.0`.
    #[inline]
    unsafe fn pack_b(kc: usize, nc: usize, b: *const T, sb: (usize, usize), out: &mut [T])
    where
        Self: Sized,
    {
        // SAFETY: forwarded from the caller.
        unsafe { pack_b::<T, Self>(kc, nc, b, sb, out) }
    }
}

/// The `MR` row pointers of an `A` tile (`a + i·rsa`), rows `mr..MR` clamped to row `mr − 1`
/// so that every pointer addresses a row of the tile.
///
/// # Safety
/// `1 ≤ mr ≤ MR`; `a + i·rsa` lies in `A`'s allocation for every `i < mr`.
#[inline(always)]
unsafe fn row_ptrs<T, const MR: usize>(a: *const T, rsa: usize, mr: usize) -> [*const T; MR] {
    // SAFETY: min(i, mr − 1) < mr: an in-bounds row (the caller's contract).
    std::array::from_fn(|i| unsafe { a.add(i.min(mr - 1) * rsa) })
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

/// The widest product (`n` columns, fewer than a register tile's) run as dot products over
/// the depth when `A` is contiguous along it, instead of transposed into a tile kernel
/// (whatever `m`: the choice, and so the summation order of each element, depends on `n`
/// and the layout only). The case in view is the output layer of a 2-D flow (`n = d = 2`,
/// depth 64), whose transposed route packed the whole `k × m` activation block into panels
/// for a product of only `2·k·m` flops: as dot products the toy net's f + exact divergence
/// ran 4.6% faster and its augmented VJP 2.7% (single thread; skipping that GEMM altogether
/// saved 6.5% of the former).
pub(super) const SMALL_N: usize = 4;

/// The row length of the transposed `B` of a narrow product is padded to a multiple of this
/// (the widest dot kernel's lanes, 16 `f32` on AVX-512), so a depth tail reads zeros.
const SMALL_N_PAD: usize = 16;

/// [`MicroKernel::small_n`] with `W` lanes per depth step (one vector register where the
/// caller enables SIMD) and `R = 4` rows of `A` per pass: `4·N` accumulators of `W` lanes;
/// per `W` depth steps, 4 loads of `A`, `N` of `Bᵀ` and `4·N` lane-wise multiply-adds
/// (fused with `FUSED`); a depth tail `k mod W` as one more block, zero-padded (lanes
/// `0..k mod W` in order); then each accumulator is summed over its lanes pairwise (lane `q`
/// with `q + W/2`, …). The order depends on the shape only.
///
/// # Safety
/// As for [`MicroKernel::small_n`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn small_n_body<T: Elem, const W: usize, const FUSED: bool>(
    m: usize,
    k: usize,
    n: usize,
    alpha: T,
    a: *const T,
    rsa: usize,
    bt: &[T],
    ldbt: usize,
    beta: T,
    c: *mut T,
    sc: (usize, usize),
) {
    // SAFETY (all): forwarded from the caller; the const-N copies see N = n.
    unsafe {
        match n {
            1 => small_n_rows::<T, W, 1, FUSED>(m, k, alpha, a, rsa, bt, ldbt, beta, c, sc),
            2 => small_n_rows::<T, W, 2, FUSED>(m, k, alpha, a, rsa, bt, ldbt, beta, c, sc),
            3 => small_n_rows::<T, W, 3, FUSED>(m, k, alpha, a, rsa, bt, ldbt, beta, c, sc),
            _ => small_n_rows::<T, W, 4, FUSED>(m, k, alpha, a, rsa, bt, ldbt, beta, c, sc),
        }
    }
}

/// Rows per pass of the narrow-product dot kernel.
const R: usize = 4;

/// `x·y + acc`, fused (one rounding) with `FUSED`.
#[inline(always)]
fn madd<T: Elem, const FUSED: bool>(x: T, y: T, acc: T) -> T {
    if FUSED {
        x.mul_add(y, acc)
    } else {
        acc + x * y
    }
}

/// One block of `W` depth steps `p..p + W` of [`small_n_rows`]: `acc[r][j] += A[r] ⊙ Bᵀ[j]`
/// lane by lane.
#[inline(always)]
fn dot_step<T: Elem, const W: usize, const N: usize, const FUSED: bool>(
    acc: &mut [[[T; W]; N]; R],
    av: &[[T; W]; R],
    bt: &[T],
    kp: usize,
    p: usize,
) {
    for (j, accj) in (0..N).map(|j| (j, &bt[j * kp + p..j * kp + p + W])) {
        for r in 0..R {
            for q in 0..W {
                acc[r][j][q] = madd::<T, FUSED>(av[r][q], accj[q], acc[r][j][q]);
            }
        }
    }
}

/// [`small_n_body`] for `N = n` columns.
///
/// # Safety
/// As for [`MicroKernel::small_n`], with `n = N`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn small_n_rows<T: Elem, const W: usize, const N: usize, const FUSED: bool>(
    m: usize,
    k: usize,
    alpha: T,
    a: *const T,
    rsa: usize,
    bt: &[T],
    ldbt: usize,
    beta: T,
    c: *mut T,
    sc: (usize, usize),
) {
    let kp = ldbt;
    let kw = k - k % W;
    // Every index into the accumulators is a constant (all R rows computed, partial passes
    // repeating the last row; the depth tail as one zero-padded block), so they stay in
    // registers. (Helpers are `inline(always)` functions, not closures: a closure left out
    // of line loses the caller's target features and its `mul_add` becomes a libm call.)
    for i0 in (0..m).step_by(R) {
        let rows = R.min(m - i0);
        // SAFETY: rows i0 + min(r, rows − 1) < m of A (partial passes repeat the last row).
        let ar: [*const T; R] =
            std::array::from_fn(|r| unsafe { a.add((i0 + r.min(rows - 1)) * rsa) });
        let mut acc = [[[T::ZERO; W]; N]; R];
        for p in (0..kw).step_by(W) {
            // SAFETY: p + q < kw ≤ k: in row ar[r] of A.
            let av: [[T; W]; R] =
                std::array::from_fn(|r| std::array::from_fn(|q| unsafe { *ar[r].add(p + q) }));
            dot_step::<T, W, N, FUSED>(&mut acc, &av, bt, kp, p);
        }
        if kw < k {
            // SAFETY: only p = kw + q < k is read (the rest of the block is zero, as in bt).
            let av: [[T; W]; R] = std::array::from_fn(|r| {
                std::array::from_fn(|q| {
                    if kw + q < k {
                        unsafe { *ar[r].add(kw + q) }
                    } else {
                        T::ZERO
                    }
                })
            });
            dot_step::<T, W, N, FUSED>(&mut acc, &av, bt, kp, kw);
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            for (j, lanes) in acc.iter_mut().enumerate() {
                let mut w = W;
                while w > 1 {
                    w /= 2;
                    for q in 0..w {
                        lanes[q] = lanes[q] + lanes[q + w];
                    }
                }
                if r < rows {
                    // SAFETY: element (i0 + r, j) of C, i0 + r < m and j < N (the contract).
                    let x = unsafe { &mut *c.add((i0 + r) * sc.0 + j * sc.1) };
                    *x = if beta == T::ZERO {
                        alpha * lanes[0]
                    } else {
                        alpha * lanes[0] + beta * *x
                    };
                }
            }
        }
    }
}

/// How the driver hands `A` to the micro-kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// [`Route::Direct`] or [`Route::Packed`], chosen from the shape and strides.
    Auto,
    /// The kernel reads `A` in place through its strides.
    Direct,
    /// Each `MC × KC` block of `A` is first packed into `MR`-row panels.
    Packed,
}

/// `C ← α·A·B + β·C` on kernel `K`: the five loops around the micro-kernel.
///
/// # Safety
/// `m, k, n ≥ 1`; every element addressed by `(m, k, n)` and the strides lies in its operand
/// (`A`, `B` readable, `C` readable and writable) and `C` aliases neither input.
#[allow(clippy::too_many_arguments)]
#[inline]
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
    // SAFETY: the caller's contract.
    unsafe {
        driver_route::<T, K>(Route::Auto, Route::Auto, m, k, n, alpha, a, sa, b, sb, beta, c, sc)
    }
}

/// [`driver`] with the routes of `A` and `B` given (`B`'s [`Route::Direct`] is taken only
/// where `B` can be read in place, see [`b_in_place`]; it is packed otherwise).
///
/// # Safety
/// As for [`driver`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn driver_route<T: Elem, K: MicroKernel<T>>(
    route: Route,
    b_route: Route,
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
    // A very narrow C with A contiguous along the depth: dot products (see SMALL_N). The
    // choice must not depend on m: the MLP computes a layer's primal rows alone or with
    // tangent rows appended and relies on the same bits for them.
    if n <= SMALL_N && n < K::NR && sa.1 == 1 {
        // Bᵀ, each row zero-padded to a multiple of the widest dot kernel (16 lanes).
        let kp = k.next_multiple_of(SMALL_N_PAD);
        return T::with_pack(n * kp, |bt| {
            for (j, row) in bt.chunks_exact_mut(kp).enumerate() {
                for (p, x) in row.iter_mut().enumerate() {
                    // SAFETY: element (p, j) of B, p < k and j < n.
                    *x = if p < k { unsafe { *b.add(p * sb.0 + j * sb.1) } } else { T::ZERO };
                }
            }
            // SAFETY: the caller's contract; bt holds Bᵀ (n rows of k, kp apart).
            unsafe { K::small_n(m, k, n, alpha, a, sa.0, bt, kp, beta, c, sc) }
        });
    }
    // A narrow C (n below one register tile, m larger) is computed as Cᵀ = Bᵀ·Aᵀ, so that the
    // wide dimension fills the tile's columns. The choice depends on the shape only.
    let (m, n, a, sa, b, sb, sc) = if n < K::NR && m > n {
        (n, m, b, (sb.1, sb.0), a, (sa.1, sa.0), (sc.1, sc.0))
    } else {
        (m, n, a, sa, b, sb, sc)
    };
    let route = if route == Route::Auto { a_route::<T, K>(n, sa) } else { route };
    let packed = route == Route::Packed;
    let b_direct = b_route != Route::Packed && b_in_place::<T, K>(n, sb);
    let kc_max = k.min(K::KC);
    let mc_max = if packed { m.next_multiple_of(K::MR).min(K::MC) } else { 0 };
    let nc_max = if b_direct { 0 } else { n.next_multiple_of(K::NR).min(K::NC) };
    T::with_pack(kc_max * (mc_max + nc_max), |buf| {
        let (abuf, bbuf) = buf.split_at_mut(kc_max * mc_max);
        for jc in (0..n).step_by(K::NC) {
            let nc = K::NC.min(n - jc);
            for pc in (0..k).step_by(K::KC) {
                let kc = K::KC.min(k - pc);
                // Later depth blocks accumulate onto the first one's result.
                let beta = if pc == 0 { beta } else { T::ONE };
                // SAFETY: rows pc..pc + kc and columns jc..jc + nc of B are in bounds.
                let bblk = unsafe { b.add(pc * sb.0 + jc * sb.1) };
                // The B block as the kernel reads it: panel q at bpan + q·pstep, depth steps
                // ldb apart (in place: NR consecutive columns of B's rows).
                let (bpan, pstep, ldb) = if b_direct {
                    (bblk, K::NR, sb.0)
                } else {
                    // SAFETY: bbuf holds ⌈nc / NR⌉·NR·kc ≤ nc_max·kc_max elements.
                    unsafe { K::pack_b(kc, nc, bblk, sb, bbuf) };
                    (bbuf.as_ptr(), kc * K::NR, K::NR)
                };
                for ic in (0..m).step_by(K::MC) {
                    let mc = K::MC.min(m - ic);
                    // SAFETY: rows ic..ic + mc and columns pc..pc + kc of A are in bounds.
                    let ablk = unsafe { a.add(ic * sa.0 + pc * sa.1) };
                    // The A block as the kernel reads it: its first element and strides.
                    let (ablk, rsa, csa) = if packed {
                        // SAFETY: as for B, with ⌈mc / MR⌉·MR·kc ≤ mc_max·kc_max elements.
                        unsafe { pack_a::<T, K>(kc, mc, ablk, sa, abuf) };
                        (abuf.as_ptr(), 1, K::MR)
                    } else {
                        (ablk, sa.0, sa.1)
                    };
                    // Packed panels are MR·kc apart, rows of A in place MR·rsa.
                    let a_panel = if packed { kc } else { rsa };
                    for jr in (0..nc).step_by(K::NR) {
                        let nr = K::NR.min(nc - jr);
                        for ir in (0..mc).step_by(K::MR) {
                            let mr = K::MR.min(mc - ir);
                            // SAFETY: rows ir..ir + mr (depth 0..kc) of the A block are
                            // readable at ablk + ir·a_panel through (rsa, csa), in place or
                            // packed; panel jr / NR of the B block is readable at
                            // bpan + (jr / NR)·pstep, NR per depth step ldb apart (packed, or
                            // in place where every panel is full); the mr × nr tile of C at
                            // (ic + ir, jc + jr) is in bounds and disjoint from A, B and the
                            // buffers.
                            unsafe {
                                K::tile(
                                    kc,
                                    alpha,
                                    ablk.add(ir * a_panel),
                                    rsa,
                                    csa,
                                    bpan.add(jr / K::NR * pstep),
                                    ldb,
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

/// Whether the kernel reads `B` (strides `sb`, `n` columns, after the narrow transposition)
/// in place instead of packing it: its rows must be contiguous (`sb.1 = 1`), every `NR`
/// panel full (`n` a multiple of `NR`: no zero padding to read past the edge) and the rows
/// at most [`B_IN_PLACE_MAX_STRIDE`] bytes apart. Then each panel is `NR` consecutive
/// elements of each of `B`'s rows, which the kernel loads as it would a packed panel.
#[inline]
fn b_in_place<T: Elem, K: MicroKernel<T>>(n: usize, sb: (usize, usize)) -> bool {
    sb.1 == 1 && n.is_multiple_of(K::NR) && sb.0 * size_of::<T>() <= B_IN_PLACE_MAX_STRIDE
}

/// The widest row stride (bytes) at which `B` is read in place. A panel read in place walks
/// `KC` rows this far apart, so a wide stride crowds them into a few L1 sets (2 KB apart:
/// every row in the same two of 64 sets): W4's backward pass (256-wide layers) ran 1–3%
/// slower with them in place. The toy net's 64-wide `f64` rows (512 bytes) spread over 16
/// sets; there the copy saved was about 3% of a W1 gradient (the weight-gradient and
/// input-gradient GEMMs).
const B_IN_PLACE_MAX_STRIDE: usize = 512;

/// The route of `A` for an `n`-column product with `A`'s strides `sa` (after the
/// narrow transposition), from the number of `B` panels each `A` block is read for.
///
/// Read in place, `A` costs nothing up front but each tile walks `MR` strided streams; packed,
/// it costs one strided copy per block and then single contiguous streams. With unit depth
/// stride (row-major `A`, the MLP's forward and input-gradient GEMMs) the streams are cheap
/// and the copy only pays for very wide products; with a wider depth stride every depth step
/// of a tile touches its own cache lines (with a power-of-two leading dimension all in a few
/// L1 sets), which costs once `A` is reread often. The thresholds come from timing both
/// routes with the AVX-512 and AVX2 kernels (`m, k` = 64 to 384, `n` = 2 to 4100): at
/// `n = 64` (4 to 8 panels) in place was about 10% (`f64`) and 18% (`f32`) faster, at
/// `n = 256` a few percent; packing won by 10–17% for AVX2 `f64` with a depth-strided `A`
/// from 32 panels on, and by up to 10% for a row-major `A` from about 128 panels on;
/// elsewhere the two were within a few percent.
#[inline]
fn a_route<T: Elem, K: MicroKernel<T>>(n: usize, sa: (usize, usize)) -> Route {
    let panels = n.min(K::NC).div_ceil(K::NR);
    if panels >= if sa.1 == 1 { 128 } else { 32 } {
        Route::Packed
    } else {
        Route::Direct
    }
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
        a: *const T,
        rsa: usize,
        csa: usize,
        bp: *const T,
        ldb: usize,
        beta: T,
        c: *mut T,
        rs: usize,
        cs: usize,
        mr: usize,
        nr: usize,
    ) {
        // SAFETY: every row of A is in bounds (the caller's contract).
        let rows = unsafe { row_ptrs::<T, 4>(a, rsa, mr) };
        let mut acc = [[T::ZERO; 8]; 4];
        for p in 0..kc {
            // SAFETY: p < kc: the panel's 8 elements of depth p are readable (the contract).
            let bk = unsafe { std::slice::from_raw_parts(bp.add(p * ldb), 8) };
            // SAFETY: p < kc, rows in bounds: element (i, p) of A.
            let ak: [T; 4] = std::array::from_fn(|i| unsafe { *rows[i].add(p * csa) });
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
    use super::{row_ptrs, store_scalar, MicroKernel};
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

    /// The element types with a `4 × 4` in-register transposition.
    trait Transpose4: super::Elem {
        /// Writes the `4 × 4` block `src[r·ss + q]` (`r, q < 4`) transposed to
        /// `dst[q·ds + r]`.
        ///
        /// # Safety
        /// AVX2 is available; the 16 source elements are readable, the 16 destination
        /// elements writable, and the two do not overlap.
        unsafe fn t4(src: *const Self, ss: usize, dst: *mut Self, ds: usize);
    }

    impl Transpose4 for f64 {
        #[inline]
        unsafe fn t4(src: *const f64, ss: usize, dst: *mut f64, ds: usize) {
            // SAFETY: the caller's contract.
            unsafe { t4_f64(src, ss, dst, ds) }
        }
    }

    impl Transpose4 for f32 {
        #[inline]
        unsafe fn t4(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
            // SAFETY: the caller's contract.
            unsafe { t4_f32(src, ss, dst, ds) }
        }
    }

    /// [`Transpose4::t4`] for `f64`: four `ymm` rows, two rounds of shuffles.
    ///
    /// # Safety
    /// As for [`Transpose4::t4`].
    #[target_feature(enable = "avx2")]
    unsafe fn t4_f64(src: *const f64, ss: usize, dst: *mut f64, ds: usize) {
        // SAFETY: rows r < 4 of 4 elements at src + r·ss, columns at dst + q·ds (the contract).
        unsafe {
            let r0 = _mm256_loadu_pd(src);
            let r1 = _mm256_loadu_pd(src.add(ss));
            let r2 = _mm256_loadu_pd(src.add(2 * ss));
            let r3 = _mm256_loadu_pd(src.add(3 * ss));
            let t0 = _mm256_unpacklo_pd(r0, r1); // r0[0] r1[0] r0[2] r1[2]
            let t1 = _mm256_unpackhi_pd(r0, r1); // r0[1] r1[1] r0[3] r1[3]
            let t2 = _mm256_unpacklo_pd(r2, r3);
            let t3 = _mm256_unpackhi_pd(r2, r3);
            _mm256_storeu_pd(dst, _mm256_permute2f128_pd::<0x20>(t0, t2));
            _mm256_storeu_pd(dst.add(ds), _mm256_permute2f128_pd::<0x20>(t1, t3));
            _mm256_storeu_pd(dst.add(2 * ds), _mm256_permute2f128_pd::<0x31>(t0, t2));
            _mm256_storeu_pd(dst.add(3 * ds), _mm256_permute2f128_pd::<0x31>(t1, t3));
        }
    }

    /// [`Transpose4::t4`] for `f32`: four `xmm` rows, two rounds of shuffles.
    ///
    /// # Safety
    /// As for [`Transpose4::t4`].
    #[target_feature(enable = "avx2")]
    unsafe fn t4_f32(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        // SAFETY: rows r < 4 of 4 elements at src + r·ss, columns at dst + q·ds (the contract).
        unsafe {
            let r0 = _mm_loadu_ps(src);
            let r1 = _mm_loadu_ps(src.add(ss));
            let r2 = _mm_loadu_ps(src.add(2 * ss));
            let r3 = _mm_loadu_ps(src.add(3 * ss));
            let t0 = _mm_unpacklo_ps(r0, r1); // r0[0] r1[0] r0[1] r1[1]
            let t1 = _mm_unpacklo_ps(r2, r3);
            let t2 = _mm_unpackhi_ps(r0, r1); // r0[2] r1[2] r0[3] r1[3]
            let t3 = _mm_unpackhi_ps(r2, r3);
            _mm_storeu_ps(dst, _mm_movelh_ps(t0, t1));
            _mm_storeu_ps(dst.add(ds), _mm_movehl_ps(t1, t0));
            _mm_storeu_ps(dst.add(2 * ds), _mm_movelh_ps(t2, t3));
            _mm_storeu_ps(dst.add(3 * ds), _mm_movehl_ps(t3, t2));
        }
    }

    /// [`pack`](super::pack) compiled for AVX2, with the transposing case (`sk = 1`: `B`
    /// contiguous along the depth, e.g. a row-major weight matrix viewed transposed) done in
    /// `4 × 4` register blocks for the full panels. Writes the same panels as `pack`.
    ///
    /// # Safety
    /// AVX2 is available; otherwise as for [`pack`](super::pack).
    #[target_feature(enable = "avx2")]
    unsafe fn pack_avx2<T: Transpose4, const W: usize>(
        kc: usize,
        width: usize,
        src: *const T,
        sw: usize,
        sk: usize,
        out: &mut [T],
    ) {
        if sk != 1 || sw == 1 || !W.is_multiple_of(4) {
            // SAFETY: forwarded from the caller.
            return unsafe { super::pack::<T, W>(kc, width, src, sw, sk, out) };
        }
        let panels = width.div_ceil(W);
        let kc4 = kc - kc % 4;
        for (q, panel) in out[..panels * W * kc].chunks_exact_mut(W * kc).enumerate() {
            let w0 = q * W;
            // SAFETY: element (w, p) at src + w·sw + p for w < width, p < kc (the contract).
            let s = unsafe { src.add(w0 * sw) };
            if width - w0 < W {
                // The last, partial panel: the zero-padding path of `pack`.
                // SAFETY: rows w0..width of the block, the panel's W·kc elements.
                unsafe { super::pack::<T, W>(kc, width - w0, s, sw, 1, panel) };
                continue;
            }
            let d = panel.as_mut_ptr();
            for p0 in (0..kc4).step_by(4) {
                for i0 in (0..W).step_by(4) {
                    // SAFETY: rows w0 + i0 + r < width and depths p0 + q < kc4 ≤ kc are
                    // readable; panel elements (p0 + q)·W + i0 + r < kc·W; the panel is
                    // caller-owned memory, disjoint from B.
                    unsafe { T::t4(s.add(i0 * sw + p0), sw, d.add(p0 * W + i0), W) };
                }
            }
            for p in kc4..kc {
                for (i, x) in panel[p * W..(p + 1) * W].iter_mut().enumerate() {
                    // SAFETY: row w0 + i < width, depth p < kc.
                    *x = unsafe { *s.add(i * sw + p) };
                }
            }
        }
    }

    macro_rules! avx2_kernel {
        ($name:ident, $imp:ident, $dot:ident, $t:ty, $nr:expr, $lanes:expr, $v:ty, $zero:ident,
         $load:ident, $store:ident, $set1:ident, $fma:ident, $mul:ident, $add:ident, $mc:expr,
         $nc:expr, $feat:literal) => {
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
                    a: *const $t,
                    rsa: usize,
                    csa: usize,
                    bp: *const $t,
                    ldb: usize,
                    beta: $t,
                    c: *mut $t,
                    rs: usize,
                    cs: usize,
                    mr: usize,
                    nr: usize,
                ) {
                    // SAFETY: the kernels are only selected after their target features were
                    // detected (see `dgemm`/`sgemm`); the rest is the caller's contract.
                    unsafe { $imp(kc, alpha, a, rsa, csa, bp, ldb, beta, c, rs, cs, mr, nr) }
                }

                #[inline]
                unsafe fn pack_b(
                    kc: usize,
                    nc: usize,
                    b: *const $t,
                    sb: (usize, usize),
                    out: &mut [$t],
                ) {
                    // SAFETY: the kernel's target features imply AVX2 and were detected
                    // before it was selected; the rest is the caller's contract.
                    unsafe { pack_avx2::<$t, $nr>(kc, nc, b, sb.1, sb.0, out) }
                }

                #[inline]
                unsafe fn small_n(
                    m: usize,
                    k: usize,
                    n: usize,
                    alpha: $t,
                    a: *const $t,
                    rsa: usize,
                    bt: &[$t],
                    ldbt: usize,
                    beta: $t,
                    c: *mut $t,
                    sc: (usize, usize),
                ) {
                    // SAFETY: as for `tile`.
                    unsafe { $dot(m, k, n, alpha, a, rsa, bt, ldbt, beta, c, sc) }
                }
            }

            /// [`MicroKernel::small_n`] one vector register wide, with fused multiply-adds.
            ///
            /// # Safety
            #[doc = concat!("The target features `", $feat, "` are available; otherwise as")]
            /// [`MicroKernel::small_n`].
            #[target_feature(enable = $feat)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn $dot(
                m: usize,
                k: usize,
                n: usize,
                alpha: $t,
                a: *const $t,
                rsa: usize,
                bt: &[$t],
                ldbt: usize,
                beta: $t,
                c: *mut $t,
                sc: (usize, usize),
            ) {
                // SAFETY: the caller's contract.
                unsafe {
                    super::small_n_body::<$t, $lanes, true>(
                        m, k, n, alpha, a, rsa, bt, ldbt, beta, c, sc,
                    )
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
                a: *const $t,
                rsa: usize,
                csa: usize,
                bp: *const $t,
                ldb: usize,
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
                // SAFETY: 1 ≤ mr ≤ MR and rows i < mr of A are in bounds (the contract).
                let rows = unsafe { row_ptrs::<$t, MR>(a, rsa, mr) };
                let mut acc: [[$v; 2]; MR] = [[$zero(); 2]; MR];
                for p in 0..kc {
                    // SAFETY: p < kc, so the NR elements at bp + p·ldb are readable, and
                    // rows[i] + p·csa is element (min(i, mr − 1), p) of A.
                    unsafe {
                        let b0 = $load(bp.add(p * ldb));
                        let b1 = $load(bp.add(p * ldb + L));
                        let off = p * csa;
                        for (i, acc) in acc.iter_mut().enumerate() {
                            let ai = $set1(*rows[i].add(off));
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
        avx2_f64_dot,
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
        avx2_f32_dot,
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
        avx512_f64_dot,
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
        avx512_f32_dot,
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
    use super::{driver, driver_route, Elem, MicroKernel, Portable, Route, SMALL_N};

    /// Runs the generic check `$f::<T, K>()` for both element types on every kernel this CPU
    /// can run.
    macro_rules! on_every_kernel {
        ($f:ident) => {{
            $f::<f64, Portable>();
            $f::<f32, Portable>();
            #[cfg(target_arch = "x86_64")]
            if super::has_avx2_fma() {
                $f::<f64, super::Avx2F64>();
                $f::<f32, super::Avx2F32>();
                if super::has_avx512f() {
                    $f::<f64, super::Avx512F64>();
                    $f::<f32, super::Avx512F32>();
                }
            }
        }};
    }

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
        // Narrow products as dot products (n ≤ SMALL_N): every n, depth tails of every
        // kernel width, partial row passes.
        for &(m, k, n) in &[(130, 37, 4), (9, 5, 4), (384, 64, 2), (6, 17, 3), (5, 33, 1)] {
            check_shape::<T, K>(m, k, n);
        }
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

    /// Runs kernel `K` on `m × k · k × n` through both routes of `A` and of `B` (read in
    /// place, packed) for every layout combination and a few (α, β), and checks that `C`
    /// comes out bit-identical, untouched elements included.
    fn routes_agree<T: Cast, K: MicroKernel<T>>(m: usize, k: usize, n: usize) {
        for (ai, &(sa, la)) in layouts(m, k).iter().enumerate() {
            for (bi, &(sb, lb)) in layouts(k, n).iter().enumerate() {
                for (ci, &(sc, lc)) in layouts(m, n).iter().enumerate() {
                    for &(alpha, beta) in &[(1.0, 0.0), (-0.5, 2.0), (0.75, 1.0)] {
                        let seed =
                            (m * 1000 + k * 100 + n) as u64 * 64 + (ai * 16 + bi * 4 + ci) as u64;
                        let a: Vec<T> = fill(la, seed).into_iter().map(T::of).collect();
                        let b: Vec<T> = fill(lb, seed + 1).into_iter().map(T::of).collect();
                        let c0: Vec<T> = fill(lc, seed + 2).into_iter().map(T::of).collect();
                        let run = |route, b_route| {
                            let mut c = c0.clone();
                            // SAFETY: the layouts' lengths cover every addressed element.
                            unsafe {
                                driver_route::<T, K>(
                                    route,
                                    b_route,
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
                            c.iter().map(|x| x.to().to_bits()).collect::<Vec<_>>()
                        };
                        let want = run(Route::Packed, Route::Packed);
                        for routes in [
                            (Route::Direct, Route::Packed),
                            (Route::Packed, Route::Direct),
                            (Route::Direct, Route::Direct),
                        ] {
                            assert_eq!(
                                run(routes.0, routes.1),
                                want,
                                "{m}×{k}×{n} sa {sa:?} sb {sb:?} sc {sc:?} α {alpha} β {beta} \
                                 routes {routes:?}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Both routes on edge tiles (m, n off the tile grid), narrow products (computed
    /// transposed), several MC and KC blocks and the MLP's shapes.
    fn routes_sweep<T: Cast, K: MicroKernel<T>>() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (5, 3, 7),
            (7, 9, 33),
            (13, 2, 17),
            (130, 64, 2),
            (2, 64, 130),
            (128, 2, 64),
            (150, 300, 65),
            (256, 64, 64),
            (64, 384, 64),
            (150, 300, 64),
            (128, 64, 2),
            (7, 5, 32),
        ] {
            routes_agree::<T, K>(m, k, n);
        }
    }

    /// A narrow product's rows do not depend on how many rows it has (the MLP computes a
    /// layer's primal rows alone or with tangent rows appended): the first rows of a taller
    /// product are bit-identical to the shorter one's, for every narrow width and m ≤ n too.
    fn narrow_rows_agree<T: Cast, K: MicroKernel<T>>() {
        for n in 1..=SMALL_N + 1 {
            for k in [1, 7, 64, 70] {
                let a: Vec<T> =
                    fill(130 * k, (n * 100 + k) as u64).into_iter().map(T::of).collect();
                let b: Vec<T> =
                    fill(k * n, (n * 100 + k + 1) as u64).into_iter().map(T::of).collect();
                let run = |m: usize| {
                    let mut c = vec![T::ZERO; m * n];
                    // SAFETY: A is m × k (m ≤ 130) row-major, B k × n, C m × n row-major.
                    unsafe {
                        driver::<T, K>(
                            m,
                            k,
                            n,
                            T::ONE,
                            a.as_ptr(),
                            (k, 1),
                            b.as_ptr(),
                            (n, 1),
                            T::ZERO,
                            c.as_mut_ptr(),
                            (n, 1),
                        )
                    };
                    c.iter().map(|x| x.to().to_bits()).collect::<Vec<_>>()
                };
                let tall = run(130);
                for m in [1, 2, 3, 4, 5, 64] {
                    assert_eq!(run(m), tall[..m * n], "n {n} k {k} m {m}");
                }
            }
        }
    }

    #[test]
    fn narrow_rows_independent_of_m() {
        on_every_kernel!(narrow_rows_agree);
    }

    #[test]
    fn routes_bit_identical() {
        on_every_kernel!(routes_sweep);
    }

    /// The kernel's `pack_b` writes exactly the panels of the scalar `pack` (full and
    /// partial panels, depths off the 4-step grid, every stride pattern).
    fn pack_b_agrees<T: Cast, K: MicroKernel<T>>() {
        for &kc in &[1, 2, 3, 4, 5, 8, 63, 64, 256] {
            for &nc in &[1, 3, K::NR - 1, K::NR, K::NR + 5, 3 * K::NR, 130] {
                for (li, &(sb, lb)) in layouts(kc, nc).iter().enumerate() {
                    let b: Vec<T> =
                        fill(lb, (kc * 1000 + nc * 4 + li) as u64).into_iter().map(T::of).collect();
                    let len = nc.div_ceil(K::NR) * K::NR * kc;
                    let (mut want, mut got) = (vec![T::of(7.0); len], vec![T::of(9.0); len]);
                    // SAFETY: the layout's length covers B; the outputs hold every panel.
                    unsafe {
                        super::pack_b::<T, K>(kc, nc, b.as_ptr(), sb, &mut want);
                        K::pack_b(kc, nc, b.as_ptr(), sb, &mut got);
                    }
                    let bits = |v: &[T]| v.iter().map(|x| x.to().to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&want), bits(&got), "kc {kc} nc {nc} sb {sb:?}");
                }
            }
        }
    }

    #[test]
    fn pack_b_routes_agree() {
        on_every_kernel!(pack_b_agrees);
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
