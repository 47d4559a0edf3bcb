//! The scalar trait of the fields and a bounds-checked strided GEMM over flat buffers.

/// Strided general matrix multiply `C ← α·A·B + β·C` for one scalar type.
///
/// `A` is `m × k`, `B` is `k × n`, `C` is `m × n`; each operand is a flat slice with a
/// `(row stride, column stride)` pair, so a transposed view of a row-major buffer is just
/// swapped strides and never a copy. Implemented for exactly `f32` and `f64` through the
/// `matrixmultiply` crate's `sgemm`/`dgemm` kernels (which pick AVX/FMA at run time).
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

#[inline]
fn check(len: usize, rows: usize, cols: usize, s: (usize, usize), what: &str) {
    if rows == 0 || cols == 0 {
        return;
    }
    let last = (rows - 1) * s.0 + (cols - 1) * s.1;
    assert!(last < len, "gemm: {what} ({rows}×{cols}, strides {s:?}) exceeds its buffer of {len}");
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
                    $f(
                        m,
                        k,
                        n,
                        alpha,
                        a.as_ptr(),
                        sa.0 as isize,
                        sa.1 as isize,
                        b.as_ptr(),
                        sb.0 as isize,
                        sb.1 as isize,
                        beta,
                        c.as_mut_ptr(),
                        sc.0 as isize,
                        sc.1 as isize,
                    )
                }
            }
        }
    };
}

impl_gemm!(f32, matrixmultiply::sgemm);
impl_gemm!(f64, matrixmultiply::dgemm);

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
}
