//! Zero allocations inside `integrate` once the workspace is sized: a counting global
//! allocator (per thread, so the test harness's own threads do not interfere) checks that a
//! second solve on a reused `Integrator` allocates nothing, for every method, with and
//! without dense output, forward and backward, for `integrate_at`, `integrate_events` and a
//! reused `DenseSolution`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ops::ControlFlow;

use odeflow_solvers::problems::{arenstorf, ExpDecay};
use odeflow_solvers::{
    Crossing, DenseSolution, EventSpec, Events, FnObserver, Integrator, NoObserver, SolveOptions,
    StepView,
};

struct Counting;

thread_local! {
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        COUNT.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        COUNT.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = COUNT.with(|c| c.get());
    let r = f();
    (r, COUNT.with(|c| c.get()) - before)
}

#[test]
fn second_solve_allocates_nothing() {
    let (mut ar, y0, period) = arenstorf();
    // A batch-shaped state: 1024 numbers.
    let mut batch = ExpDecay { dim: 1024, lambda: 0.7 };
    let yb0 = vec![1.0; 1024];
    for m in odeflow_solvers::Method::ALL {
        let opts =
            if m.is_adaptive() { SolveOptions::tol(1e-8, 1e-8) } else { SolveOptions::fixed(0.01) };
        let mut integ = Integrator::new(m, opts).unwrap();
        let mut y = y0;
        integ.integrate(&mut ar, 0.0, period, &mut y, &mut NoObserver).unwrap();
        // Second solve, same dimension: no allocation at all.
        let mut y = y0;
        let (r, n) = allocations(|| integ.integrate(&mut ar, 0.0, period, &mut y, &mut NoObserver));
        let stats = r.unwrap();
        assert!(stats.n_accepted > 10);
        assert_eq!(n, 0, "{m}: {n} allocations in a second solve");
        // With an observer that uses dense output (DOP853's extra stages, Hermite's f(t1)).
        let mut mid = [0.0; 4];
        let mut obs = FnObserver(|s: &StepView<'_, f64>| {
            s.interpolate(s.t_start() + 0.5 * s.h(), &mut mid).unwrap();
            ControlFlow::Continue(())
        });
        let mut y = y0;
        let (r, n) = allocations(|| integ.integrate(&mut ar, 0.0, period, &mut y, &mut obs));
        r.unwrap();
        assert_eq!(n, 0, "{m}: {n} allocations with dense output");
        // Backward.
        let (r, n) = allocations(|| integ.integrate(&mut ar, period, 0.0, &mut y, &mut NoObserver));
        r.unwrap();
        assert_eq!(n, 0, "{m}: {n} allocations backward");
        // integrate_at with caller buffers.
        let times: Vec<f64> = (1..=50).map(|i| period * i as f64 / 50.0).collect();
        let mut out = vec![0.0; 4 * times.len()];
        let mut y = y0;
        let (r, n) = allocations(|| integ.integrate_at(&mut ar, 0.0, &times, &mut y, &mut out));
        r.unwrap();
        assert_eq!(n, 0, "{m}: {n} allocations in integrate_at");
        // Events: the first solve sizes the buffers and grows the record of crossings; a
        // second one with as many crossings allocates nothing.
        let specs = vec![EventSpec::record(Crossing::Either), EventSpec::record(Crossing::Rising)];
        let mut events = Events::new(specs, |_t, y: &[f64], g: &mut [f64]| {
            g[0] = y[1];
            g[1] = y[0];
        });
        let mut y = y0;
        integ.integrate_events(&mut ar, 0.0, period, &mut y, &mut events, &mut NoObserver).unwrap();
        let crossings = events.hits().len();
        assert!(crossings >= 3, "{m}: {crossings} crossings");
        let mut y = y0;
        let (r, n) = allocations(|| {
            integ.integrate_events(&mut ar, 0.0, period, &mut y, &mut events, &mut NoObserver)
        });
        r.unwrap();
        assert_eq!(events.hits().len(), crossings, "{m}");
        assert_eq!(n, 0, "{m}: {n} allocations in integrate_events");
        // A DenseSolution cleared and filled again by a solve of as many steps.
        let mut sol = DenseSolution::new();
        let mut y = y0;
        integ.integrate(&mut ar, 0.0, period, &mut y, &mut sol).unwrap();
        sol.clear();
        let mut y = y0;
        let (r, n) = allocations(|| integ.integrate(&mut ar, 0.0, period, &mut y, &mut sol));
        r.unwrap();
        assert_eq!(n, 0, "{m}: {n} allocations recording a DenseSolution");
        // A larger state grows the workspace once; the next solve of that size is free.
        let mut yb = yb0.clone();
        integ.integrate(&mut batch, 0.0, 1.0, &mut yb, &mut NoObserver).unwrap();
        let mut yb = yb0.clone();
        let (r, n) =
            allocations(|| integ.integrate(&mut batch, 0.0, 1.0, &mut yb, &mut NoObserver));
        r.unwrap();
        assert_eq!(n, 0, "{m}: {n} allocations on the 1024-state");
    }
    // The counter does count: a Vec allocation is seen.
    let (_, n) = allocations(|| std::hint::black_box(vec![1u8; 16]));
    assert_eq!(n, 1);
}
