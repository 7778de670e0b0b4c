//! CPU threading for candle: one pool, sized once, that the compute runs inside.
//!
//! candle 0.11 runs large element-wise ops on a "barrier pool" whose workers busy-wait for
//! work, beside the rayon pool that runs matrix products. On small machines (the 2-core build
//! and CI machines) the spinning workers take the cores the matmul threads need: measured with
//! `rlap bench`, MLP attribution at batch 256 went from ~8,000 to ~49,000 samples/s and a
//! training epoch from ~2,300 to ~4,000 samples/s with the barrier pool disabled.
//!
//! The matrix products use rayon's global pool with as many threads as candle's
//! `get_num_threads()` says, which, with `RAYON_NUM_THREADS` unset, parses `/proc/cpuinfo` on
//! every matmul (~45 µs each) and counts the host's physical cores, not the CPUs a container
//! may use. [`configure_threads`] sizes the pool once. [`compute`] runs a piece of numeric
//! work on a worker of that pool, so the thread that drives the work is one of the GEMM
//! threads instead of a third thread that waits while the pool's idle workers spin beside it
//! (on 2 cores one of them took the driving thread's core between products).
//!
//! This module owns those settings; `benches/torch_peer.py` (`make bench-peer`) measures them
//! against PyTorch on the same machine.

/// Threads for candle's matrix products: the CPUs this process may run on
/// (`std::thread::available_parallelism`, which follows affinity masks and cgroup quotas),
/// capped at the physical core count (SMT siblings share the FMA units GEMM saturates).
fn default_threads() -> usize {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    available.min(num_cpus::get_physical().max(1)).max(1)
}

/// Disable candle's barrier-pool workers (`CANDLE_NUM_THREADS=1`) and size the matrix-product
/// pool once (`RAYON_NUM_THREADS`, see [`default_threads`]), each unless the user set it.
///
/// Call it first thing in `main`, before any tensor exists and before other threads start:
/// candle and rayon read the variables from the environment, and changing the environment
/// while other threads run is unsound on some platforms.
pub fn configure_threads() {
    // SAFETY-relevant precondition (documented above): single-threaded at this point.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", default_threads().to_string());
    }
}

/// Run `work` on a worker thread of rayon's global pool (the pool candle's matrix products
/// use) and return its result; a call from inside the pool runs in place.
///
/// The calling thread blocks (it does not spin) until `work` is done. Use it around a whole
/// unit of numeric work (a training run, an attribution pass, one scored batch), not around
/// single tensor ops: each call is one hand-off between threads.
pub fn compute<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        work()
    } else {
        rayon::scope(|_| work())
    }
}

/// A thread pool of its own, as large as the shared one, for work that must not mix with
/// the shared pool's (a daemon cycle beside the scorer): a rayon worker that waits inside a
/// parallel operation runs other queued jobs of its pool meanwhile, whatever their size.
/// Work run through `pool.install` uses this pool for its matrix products and for
/// [`compute`] (which then runs in place).
///
/// # Errors
/// The operating system refused a thread.
pub fn private_pool(name: &str) -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    let name = name.to_string();
    rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .thread_name(move |i| format!("{name}-{i}"))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_runs_on_a_pool_worker_and_returns_its_result() {
        assert_eq!(rayon::current_thread_index(), None);
        let (inside, v) = compute(|| (rayon::current_thread_index().is_some(), 41 + 1));
        assert!(inside);
        assert_eq!(v, 42);
        // Nested calls run in place.
        assert_eq!(compute(|| compute(|| 7)), 7);
    }

    #[test]
    fn default_threads_is_at_least_one_and_at_most_the_available_cpus() {
        let n = default_threads();
        let available = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(n >= 1 && n <= available, "{n} of {available}");
    }
}
