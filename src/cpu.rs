//! CPU threading defaults for candle.
//!
//! candle 0.11 runs large element-wise ops on a "barrier pool" whose workers busy-wait for
//! work, beside the rayon pool that runs matrix products. On small machines (the 2-core build
//! and CI machines) the spinning workers take the cores the matmul threads need: measured with
//! `rlap bench`, MLP attribution at batch 256 went from ~8,000 to ~49,000 samples/s and a
//! training epoch from ~2,300 to ~4,000 samples/s with the barrier pool disabled. This module
//! owns that one setting.

/// Disable candle's barrier-pool workers (`CANDLE_NUM_THREADS=1`; matrix products keep their
/// rayon threads) unless the user set `CANDLE_NUM_THREADS` already.
///
/// Call it first thing in `main`, before any tensor exists and before other threads start:
/// candle reads the variable once, and changing the environment while other threads run is
/// unsound on some platforms.
pub fn configure_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY-relevant precondition (documented above): single-threaded at this point.
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
