//! Shared harness of the side-by-side comparison with `ode_solvers` 0.6.2: used by
//! `benches/vs_ode_solvers.rs` (criterion timings) and `examples/work_precision.rs` (the
//! printed table). Both crates call the same right-hand-side code from
//! `odeflow_solvers::problems`; `ode_solvers` runs with `Sparse` output (its `Dense` mode
//! extrapolates the final value), a stack `SVector` on the small problems and a heap
//! `DVector` on the batch, with Hairer's default controller constants (as ours).
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System as SysAlloc};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use ode_solvers::{DVector, Dop853, Dopri5, OutputType, SVector, System};
use odeflow_solvers::problems::{Arenstorf, Lorenz, MlpBatch};
use odeflow_solvers::{Integrator, Method, NoObserver, OdeSystem, SolveOptions, Stats};

/// Counts allocations (install with `#[global_allocator]` in the binary).
pub struct CountingAlloc;

/// Number of allocations so far (all threads).
pub static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { SysAlloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { SysAlloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { SysAlloc.realloc(ptr, layout, new_size) }
    }
}

/// The three workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Arenstorf orbit over one period (4 states).
    Arenstorf,
    /// Lorenz on [0, 5] from (1, 1, 1) (3 states).
    Lorenz,
    /// 512 two-dimensional states through a fixed random 2→64→2 MLP (gain 2) on [0, 3]
    /// (1024 states).
    Mlp,
}

impl Problem {
    /// All workloads.
    pub const ALL: [Problem; 3] = [Problem::Arenstorf, Problem::Lorenz, Problem::Mlp];

    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Problem::Arenstorf => "arenstorf",
            Problem::Lorenz => "lorenz",
            Problem::Mlp => "mlp512",
        }
    }

    /// Final time.
    pub fn t1(self) -> f64 {
        match self {
            Problem::Arenstorf => Arenstorf::PERIOD,
            Problem::Lorenz => 5.0,
            Problem::Mlp => 3.0,
        }
    }

    /// Initial state.
    pub fn y0(self) -> Vec<f64> {
        match self {
            Problem::Arenstorf => Arenstorf::Y0.to_vec(),
            Problem::Lorenz => Lorenz::Y0.to_vec(),
            Problem::Mlp => mlp().initial_state(7),
        }
    }
}

/// The fixed MLP field.
pub fn mlp() -> MlpBatch {
    MlpBatch::with_gain(512, 64, 1234, 2.0)
}

/// The solvers compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Solver {
    /// This crate.
    Odeflow,
    /// `ode_solvers` 0.6.2.
    OdeSolvers,
}

/// One solve's outcome.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Final state.
    pub y: Vec<f64>,
    /// Right-hand-side evaluations.
    pub n_rhs: usize,
    /// Attempted steps (accepted + rejected).
    pub n_steps: usize,
}

/// Adapts a problem to `ode_solvers::System` (the same RHS code).
pub struct Peer<P>(pub P);

impl<const N: usize> System<f64, SVector<f64, N>> for Peer<Arenstorf> {
    fn system(&self, t: f64, y: &SVector<f64, N>, dy: &mut SVector<f64, N>) {
        Arenstorf.rhs(t, y.as_slice(), dy.as_mut_slice());
    }
}

impl<const N: usize> System<f64, SVector<f64, N>> for Peer<Lorenz> {
    fn system(&self, t: f64, y: &SVector<f64, N>, dy: &mut SVector<f64, N>) {
        Lorenz.rhs(t, y.as_slice(), dy.as_mut_slice());
    }
}

impl System<f64, DVector<f64>> for Peer<&MlpBatch> {
    fn system(&self, _t: f64, y: &DVector<f64>, dy: &mut DVector<f64>) {
        self.0.eval(y.as_slice(), dy.as_mut_slice());
    }
}

macro_rules! peer_run {
    ($method:expr, $f:expr, $y0:expr, $t1:expr, $tol:expr) => {{
        let (t1, tol) = ($t1, $tol);
        match $method {
            Method::Dopri5 => {
                let mut s = Dopri5::from_param(
                    $f,
                    0.0,
                    t1,
                    t1,
                    $y0,
                    tol,
                    tol,
                    0.9,
                    0.04,
                    0.2,
                    10.0,
                    t1,
                    0.0,
                    1_000_000,
                    1000,
                    OutputType::Sparse,
                );
                let st = s.integrate().expect("ode_solvers dopri5");
                (s.y_out().last().unwrap().as_slice().to_vec(), st)
            }
            Method::Dop853 => {
                let mut s = Dop853::from_param(
                    $f,
                    0.0,
                    t1,
                    t1,
                    $y0,
                    tol,
                    tol,
                    0.9,
                    0.0,
                    0.333,
                    6.0,
                    t1,
                    0.0,
                    1_000_000,
                    1000,
                    OutputType::Sparse,
                );
                let st = s.integrate().expect("ode_solvers dop853");
                (s.y_out().last().unwrap().as_slice().to_vec(), st)
            }
            m => panic!("ode_solvers has no {m}"),
        }
    }};
}

/// The MLP field with the time spent inside each right-hand-side call accumulated (used for
/// the batch, whose 0.4 ms evaluations make "total − NFE × RHS time" too noisy: a 1% jitter
/// of the RHS is larger than the solver's whole overhead).
pub struct TimedMlp<'a> {
    /// The field.
    pub field: &'a MlpBatch,
    /// Accumulated seconds inside the right-hand side.
    pub secs: std::cell::Cell<f64>,
}

impl OdeSystem<f64> for TimedMlp<'_> {
    fn dim(&self) -> usize {
        2 * self.field.batch
    }
    fn rhs(&mut self, _t: f64, y: &[f64], dy: &mut [f64]) {
        let t = Instant::now();
        self.field.eval(y, dy);
        self.secs.set(self.secs.get() + t.elapsed().as_secs_f64());
    }
}

impl System<f64, DVector<f64>> for Peer<&TimedMlp<'_>> {
    fn system(&self, _t: f64, y: &DVector<f64>, dy: &mut DVector<f64>) {
        let t = Instant::now();
        self.0.field.eval(y.as_slice(), dy.as_mut_slice());
        self.0.secs.set(self.0.secs.get() + t.elapsed().as_secs_f64());
    }
}

/// Solver overhead per step on the MLP batch, measured in situ: min over `reps` solves of
/// (total time − time inside the RHS) / steps, in nanoseconds.
pub fn mlp_overhead_ns(
    method: Method,
    tol: f64,
    solver: Solver,
    field: &MlpBatch,
    reps: usize,
) -> f64 {
    let t1 = Problem::Mlp.t1();
    let y0 = Problem::Mlp.y0();
    let mut best = f64::INFINITY;
    let mut integ = Integrator::new(method, SolveOptions::tol(tol, tol)).unwrap();
    for _ in 0..reps {
        let timed = TimedMlp { field, secs: std::cell::Cell::new(0.0) };
        let start = Instant::now();
        let steps = match solver {
            Solver::Odeflow => {
                let mut y = y0.clone();
                let mut sys = TimedMlp { field, secs: std::cell::Cell::new(0.0) };
                let st = integ.integrate(&mut sys, 0.0, t1, &mut y, &mut NoObserver).unwrap();
                timed.secs.set(sys.secs.get());
                st.n_steps()
            }
            Solver::OdeSolvers => {
                let yv = DVector::from_vec(y0.clone());
                let (_, st) = peer_run!(method, Peer(&timed), yv, t1, tol);
                (st.accepted_steps + st.rejected_steps) as usize
            }
        };
        let total = start.elapsed().as_secs_f64();
        best = best.min((total - timed.secs.get()) / steps as f64 * 1e9);
    }
    best
}

/// One `ode_solvers` solve.
pub fn run_peer(method: Method, problem: Problem, tol: f64, field: &MlpBatch) -> Outcome {
    let t1 = problem.t1();
    let (y, st) = match problem {
        Problem::Arenstorf => {
            let y0 = SVector::<f64, 4>::from_column_slice(&Arenstorf::Y0);
            peer_run!(method, Peer(Arenstorf), y0, t1, tol)
        }
        Problem::Lorenz => {
            let y0 = SVector::<f64, 3>::from_column_slice(&Lorenz::Y0);
            peer_run!(method, Peer(Lorenz), y0, t1, tol)
        }
        Problem::Mlp => {
            let y0 = DVector::from_vec(problem.y0());
            peer_run!(method, Peer(field), y0, t1, tol)
        }
    };
    Outcome {
        y,
        n_rhs: st.num_eval as usize,
        n_steps: (st.accepted_steps + st.rejected_steps) as usize,
    }
}

/// A reusable solver of ours for one workload (the workspace is sized on first use).
pub struct Ours {
    integ: Integrator<f64>,
    y: Vec<f64>,
    y0: Vec<f64>,
}

impl Ours {
    /// An integrator for `method` at rtol = atol = `tol`.
    pub fn new(method: Method, tol: f64) -> Self {
        Ours {
            integ: Integrator::new(method, SolveOptions::tol(tol, tol)).unwrap(),
            y: Vec::new(),
            y0: Problem::Mlp.y0(),
        }
    }

    /// One solve of `problem` (the state buffer is reused).
    pub fn run(&mut self, problem: Problem, field: &mut MlpBatch) -> Stats {
        self.y.clear();
        match problem {
            Problem::Arenstorf => self.y.extend_from_slice(&Arenstorf::Y0),
            Problem::Lorenz => self.y.extend_from_slice(&Lorenz::Y0),
            Problem::Mlp => self.y.extend_from_slice(&self.y0),
        }
        let t1 = problem.t1();
        let r = match problem {
            Problem::Arenstorf => {
                self.integ.integrate(&mut Arenstorf, 0.0, t1, &mut self.y, &mut NoObserver)
            }
            Problem::Lorenz => {
                self.integ.integrate(&mut Lorenz, 0.0, t1, &mut self.y, &mut NoObserver)
            }
            Problem::Mlp => self.integ.integrate(field, 0.0, t1, &mut self.y, &mut NoObserver),
        };
        r.expect("odeflow solve")
    }

    /// The state after the last solve.
    pub fn y(&self) -> &[f64] {
        &self.y
    }
}

/// Tight reference solution (our DOP853 at 1e-13; the Arenstorf orbit is periodic so its
/// reference is y0).
pub fn reference(problem: Problem, field: &mut MlpBatch) -> Vec<f64> {
    if problem == Problem::Arenstorf {
        return Arenstorf::Y0.to_vec();
    }
    let mut o = Ours::new(Method::Dop853, 1e-13);
    o.run(problem, field);
    o.y().to_vec()
}

/// Seconds per call of the right-hand side alone (min of 5 batches), averaged over the
/// initial and the final state (the MLP's tanh costs depend a little on its arguments).
pub fn rhs_seconds(problem: Problem, field: &mut MlpBatch, y_end: &[f64]) -> f64 {
    0.5 * (rhs_seconds_at(problem, field, &problem.y0()) + rhs_seconds_at(problem, field, y_end))
}

fn rhs_seconds_at(problem: Problem, field: &mut MlpBatch, y: &[f64]) -> f64 {
    let mut dy = vec![0.0; y.len()];
    let reps = if problem == Problem::Mlp { 200 } else { 2_000_000 };
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        for i in 0..reps {
            let yy = black_box(y);
            match problem {
                Problem::Arenstorf => Arenstorf.rhs(i as f64, yy, &mut dy),
                Problem::Lorenz => Lorenz.rhs(i as f64, yy, &mut dy),
                Problem::Mlp => field.rhs(0.0, yy, &mut dy),
            }
            black_box(&mut dy);
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    best
}

/// Max-norm difference.
pub fn max_err(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// One row of the work-precision table.
#[derive(Clone, Debug)]
pub struct Row {
    /// Workload.
    pub problem: Problem,
    /// Method.
    pub method: Method,
    /// rtol = atol.
    pub tol: f64,
    /// Solver.
    pub solver: Solver,
    /// Right-hand-side evaluations.
    pub n_rhs: usize,
    /// Attempted steps.
    pub n_steps: usize,
    /// Max-norm error of the final state against the reference.
    pub err: f64,
    /// Seconds per solve (min over repetitions).
    pub secs: f64,
    /// Solver's own time per step in nanoseconds: (total − NFE × RHS time) / steps, the RHS
    /// timed alone; for the MLP batch, (total − time measured inside the RHS calls) / steps.
    pub overhead_ns_per_step: f64,
    /// Allocations per attempted step (in a second, warm solve).
    pub allocs_per_step: f64,
}

/// Min wall time of `reps` runs of `f`.
fn time_min(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

/// Builds the full table (both solvers, Dopri5 and DOP853, three tolerances, three problems).
pub fn table(tols: &[f64]) -> Vec<Row> {
    let mut field = mlp();
    let mut rows = Vec::new();
    for problem in Problem::ALL {
        let reference = reference(problem, &mut field);
        let t_rhs = rhs_seconds(problem, &mut field, &reference);
        println!("{}: one RHS call takes {:.1} ns", problem.name(), t_rhs * 1e9);
        let reps = if problem == Problem::Mlp { 3 } else { 30 };
        for method in [Method::Dopri5, Method::Dop853] {
            for &tol in tols {
                // Ours: warm the workspace, then count allocations and time.
                let mut ours = Ours::new(method, tol);
                let st = ours.run(problem, &mut field);
                let a0 = ALLOCS.load(Ordering::Relaxed);
                let st2 = ours.run(problem, &mut field);
                let allocs = ALLOCS.load(Ordering::Relaxed) - a0;
                assert_eq!(st, st2);
                let err = max_err(ours.y(), &reference);
                let secs = time_min(reps, || {
                    black_box(ours.run(problem, &mut field));
                });
                let steps = st.n_steps();
                let overhead = if problem == Problem::Mlp {
                    mlp_overhead_ns(method, tol, Solver::Odeflow, &field, reps)
                } else {
                    (secs - st.n_rhs as f64 * t_rhs) / steps as f64 * 1e9
                };
                rows.push(Row {
                    problem,
                    method,
                    tol,
                    solver: Solver::Odeflow,
                    n_rhs: st.n_rhs,
                    n_steps: steps,
                    err,
                    secs,
                    overhead_ns_per_step: overhead,
                    allocs_per_step: allocs as f64 / steps as f64,
                });
                // ode_solvers.
                let out = run_peer(method, problem, tol, &field);
                let a0 = ALLOCS.load(Ordering::Relaxed);
                let out2 = run_peer(method, problem, tol, &field);
                let allocs = ALLOCS.load(Ordering::Relaxed) - a0;
                assert_eq!(out.n_rhs, out2.n_rhs);
                let err = max_err(&out.y, &reference);
                let secs = time_min(reps, || {
                    black_box(run_peer(method, problem, tol, &field));
                });
                rows.push(Row {
                    problem,
                    method,
                    tol,
                    solver: Solver::OdeSolvers,
                    n_rhs: out.n_rhs,
                    n_steps: out.n_steps,
                    err,
                    secs,
                    overhead_ns_per_step: if problem == Problem::Mlp {
                        mlp_overhead_ns(method, tol, Solver::OdeSolvers, &field, reps)
                    } else {
                        (secs - out.n_rhs as f64 * t_rhs) / out.n_steps as f64 * 1e9
                    },
                    allocs_per_step: allocs as f64 / out.n_steps as f64,
                });
            }
        }
    }
    rows
}

/// Prints the table as Markdown.
pub fn print_table(rows: &[Row]) {
    println!(
        "| problem | method | tol | solver | NFE | steps | error | time | solver ns/step | allocs/step |"
    );
    println!("|---|---|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let time = if r.secs < 1e-3 {
            format!("{:.1} µs", r.secs * 1e6)
        } else {
            format!("{:.2} ms", r.secs * 1e3)
        };
        println!(
            "| {} | {} | {:.0e} | {} | {} | {} | {:.2e} | {} | {:.0} | {:.2} |",
            r.problem.name(),
            r.method,
            r.tol,
            match r.solver {
                Solver::Odeflow => "odeflow",
                Solver::OdeSolvers => "ode_solvers",
            },
            r.n_rhs,
            r.n_steps,
            r.err,
            time,
            r.overhead_ns_per_step,
            r.allocs_per_step
        );
    }
}
