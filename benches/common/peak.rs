//! The machine's measured floating-point peak: independent fused multiply-adds on every
//! thread of the rayon pool at once, twelve 4-wide (AVX2) accumulators each, as a GEMM
//! micro-kernel keeps them. The guide's nominal figure (2 cores × AVX2 FMA ≈ 78 GFLOP/s in
//! f64) assumes a 2.45 GHz clock; the cores here run faster, and a GEMM can only approach
//! the measured figure, so the benches report against both.

/// f64 GFLOP/s of the whole pool (f32: twice this); `None` without AVX2 + FMA.
pub fn measured_peak_f64() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return None;
        }
        // Best of three, every thread at once (the machine is shared).
        let best = (0..3)
            .map(|_| rayon::broadcast(|_| thread_gflops()).iter().sum::<f64>())
            .fold(0.0, f64::max);
        Some(best)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

#[cfg(target_arch = "x86_64")]
fn thread_gflops() -> f64 {
    const ROUNDS: usize = 20_000_000;
    let start = std::time::Instant::now();
    // SAFETY: the caller checked AVX2 and FMA.
    let sink = unsafe { fma_rounds(ROUNDS) };
    let secs = start.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    // 12 accumulators × 4 lanes × 2 flops per round.
    (ROUNDS * 12 * 4 * 2) as f64 / secs / 1e9
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_rounds(rounds: usize) -> f64 {
    use std::arch::x86_64::{_mm256_fmadd_pd, _mm256_set1_pd, _mm256_storeu_pd};
    let mut acc = [_mm256_set1_pd(0.0); 12];
    let (a, b) = (_mm256_set1_pd(0.999_999_9), _mm256_set1_pd(1e-9));
    for _ in 0..rounds {
        for x in &mut acc {
            *x = _mm256_fmadd_pd(*x, a, b);
        }
    }
    let mut out = [0.0; 4];
    let mut sum = 0.0;
    for x in acc {
        // SAFETY: `out` holds four f64.
        unsafe { _mm256_storeu_pd(out.as_mut_ptr(), x) };
        sum += out[0];
    }
    sum
}
