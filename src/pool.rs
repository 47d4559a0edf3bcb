//! Runs a solve on a worker thread of the rayon pool.
//!
//! A field call splits its batch chunks over the pool ([`Mlp`](crate::field::Mlp)). Called
//! from a thread outside the pool (a program's main thread), every such split is a cold
//! entry: the caller queues the job, wakes a worker and sleeps on a lock until the job is
//! done, then is woken again, twice across the operating system's scheduler per field
//! call. Called from a worker, a split is a work-stealing `join` (the caller runs one half,
//! the other worker steals the rest). A solve makes tens to hundreds of field calls, so it
//! hops onto the pool once and makes them all from there. Measured on FFJORD's toy net (W1,
//! f64, 2 cores; one gradient = forward solve + backsolve adjoint, 29 field calls;
//! `perf stat` over 60 gradients, 5 alternated pairs): context switches per gradient about
//! 100 → 25, CPU time 1–3% lower; wall time unchanged within the machine's noise (medians
//! 19.44 ms both), as the pool's idle worker is woken quickly on an otherwise idle machine.
//!
//! Results do not change: the chunks and their reduction order are the same on any thread.

/// Runs `op` on a worker of the current rayon pool (the global one from outside any pool)
/// and returns its result; runs it in place when already on a worker.
pub(crate) fn on_pool<R: Send>(op: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        op()
    } else {
        rayon::scope(|_| op())
    }
}
