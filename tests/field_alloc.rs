//! Hot calls of the batched MLP allocate nothing once warm: `eval`, `eval_div` (exact and
//! Hutchinson), `vjp_aug` and `vjp_aug_jac` after one warm-up call (which grows the GEMM's
//! per-thread packing buffers), counted by a global allocator.
//!
//! Sequential chunks (`parallel: false`) are counted on the calling thread and must allocate
//! zero times. With `parallel: true` every thread's allocations are counted (one test in this
//! file, so the harness runs nothing alongside it) and the total is reported and bounded:
//! rayon's own bookkeeping (its injector queue's blocks, a worker's first GEMM growing that
//! worker's buffer) is outside this crate.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use odeflow::field::{AugmentedVjp, Divergence, JacobianTerm, Mlp, MlpConfig, Real, VectorField};

struct Counting;

thread_local! {
    static THREAD_ALLOCS: Cell<usize> = const { Cell::new(0) };
}
static ALL_ALLOCS: AtomicUsize = AtomicUsize::new(0);

fn count() {
    ALL_ALLOCS.fetch_add(1, Ordering::Relaxed);
    // `try_with`: allocations while a thread's locals are torn down are still counted globally.
    let _ = THREAD_ALLOCS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards to the system allocator; the counters allocate nothing.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations on this thread, and on all threads, while `f` runs.
fn allocations(f: impl FnOnce()) -> (usize, usize) {
    let (t0, a0) = (THREAD_ALLOCS.with(Cell::get), ALL_ALLOCS.load(Ordering::SeqCst));
    f();
    (THREAD_ALLOCS.with(Cell::get) - t0, ALL_ALLOCS.load(Ordering::SeqCst) - a0)
}

const BATCH: usize = 300; // two full chunks of 128 and a ragged one

fn cfg(dim: usize, hidden: Vec<usize>, parallel: bool) -> MlpConfig {
    MlpConfig { dim, hidden, seed: 7, parallel, ..Default::default() }
}

fn lcg(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// Per call kind: (name, allocations on this thread, on all threads) over `reps` calls after a
/// warm-up call each.
fn measure<T: Real>(cfg: &MlpConfig, reps: usize) -> Vec<(String, usize, usize)> {
    let mlp = Mlp::<T>::new(cfg).unwrap();
    let d = cfg.dim;
    let v = |n, s| lcg(n, s).into_iter().map(T::from_f64c).collect::<Vec<T>>();
    let z = v(BATCH * d, 1);
    let eps: Vec<T> =
        lcg(BATCH * d, 2).into_iter().map(|x| if x > 0.0 { T::one() } else { -T::one() }).collect();
    let a = v(BATCH * d, 3);
    let c = v(BATCH, 4);
    let mut ws = mlp.workspace(BATCH);
    let (mut f, mut q, mut jsq) =
        (vec![T::zero(); BATCH * d], vec![T::zero(); BATCH], vec![T::zero(); BATCH]);
    let (mut zc, mut th) = (vec![T::zero(); BATCH * d], vec![T::zero(); mlp.n_params()]);
    let t = T::from_f64c(0.3);
    let mut out = Vec::new();
    let mut run = |name: &str, call: &mut dyn FnMut()| {
        call(); // warm-up: grows the packing buffers of the threads involved
        let (mine, all) = allocations(|| {
            for _ in 0..reps {
                call();
            }
        });
        out.push((format!("{name} {}", std::any::type_name::<T>()), mine, all));
    };
    run("eval", &mut || mlp.eval(t, &z, &mut f, &mut ws).unwrap());
    run("eval_div exact", &mut || {
        mlp.eval_div(t, &z, Divergence::Exact, &mut f, &mut q, Some(&mut jsq), &mut ws).unwrap()
    });
    run("eval_div hutchinson", &mut || {
        mlp.eval_div(t, &z, Divergence::Hutchinson(&eps), &mut f, &mut q, Some(&mut jsq), &mut ws)
            .unwrap()
    });
    for (name, div) in
        [("vjp_aug exact", Divergence::Exact), ("vjp_aug hutchinson", Divergence::Hutchinson(&eps))]
    {
        run(name, &mut || {
            let out =
                AugmentedVjp { f: &mut f, q: &mut q, z_cot: &mut zc, theta_cot: Some(&mut th) };
            mlp.vjp_aug(t, &z, div, &a, &c, out, &mut ws).unwrap();
        });
    }
    for (name, div) in [
        ("vjp_aug_jac exact", Divergence::Exact),
        ("vjp_aug_jac hutchinson", Divergence::Hutchinson(&eps)),
    ] {
        run(name, &mut || {
            let out =
                AugmentedVjp { f: &mut f, q: &mut q, z_cot: &mut zc, theta_cot: Some(&mut th) };
            let jac = JacobianTerm { w: &c, jac_sq: &mut jsq };
            mlp.vjp_aug_jac(t, &z, div, &a, &c, jac, out, &mut ws).unwrap();
        });
    }
    out
}

#[test]
fn mlp_hot_calls_allocate_nothing() {
    // The toy net's shapes (k, n ∈ {2, 3, 64}) and a wider one (d = 3, 256 hidden).
    let nets = [(2, vec![64, 64, 64]), (3, vec![256, 256])];
    for (d, hidden) in &nets {
        let c = cfg(*d, hidden.clone(), false);
        for (name, mine, all) in measure::<f64>(&c, 5).into_iter().chain(measure::<f32>(&c, 5)) {
            println!(
                "sequential d = {d}: {name}: {mine} allocations in 5 calls ({all} on all threads)"
            );
            assert_eq!(mine, 0, "sequential d = {d}: {name} allocated {mine} times in 5 calls");
        }
    }
    // Parallel chunks: every thread counts. Reported; bounded loosely, since a worker's first
    // GEMM grows its buffer and rayon's queues allocate a block now and then.
    let c = cfg(2, vec![64, 64, 64], true);
    for (name, mine, all) in measure::<f64>(&c, 20).into_iter().chain(measure::<f32>(&c, 20)) {
        println!("parallel: {name}: {all} allocations in 20 calls ({mine} on the calling thread)");
        assert!(all <= 20, "parallel: {name} allocated {all} times in 20 calls");
    }
}
