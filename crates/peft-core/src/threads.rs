//! One thread pool for all of the compute: rayon's global pool, sized once at start-up.
//! Our kernels (`ops::qdot`, the quantized tiles), gemm (through `Parallelism::Rayon`) and
//! candle's matmuls all run on it. candle sizes gemm's parallelism with its own
//! `get_num_threads()`, which reads `RAYON_NUM_THREADS` and otherwise counts *physical*
//! cores while rayon counts logical ones; setting the variable makes both the same number, so
//! no gemm asks for more threads than the pool has. candle's element-wise "barrier pool"
//! (`CANDLE_NUM_THREADS`) is a second set of spinning threads; it is kept to the calling
//! thread unless the user asks otherwise (see `peft-napi`'s `init` and docs/benchmarks.md).
//! A deeper fix, candle's element-wise ops on the rayon pool, needs a change inside candle.

/// A positive thread count from environment variable `name`, if set and valid.
fn count_from(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|s| s.trim().parse::<usize>().ok()).filter(|&n| n > 0)
}

/// Sizes the global pool from `PEFT_NODE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else the
/// cores this process may use, by setting `RAYON_NUM_THREADS`, which rayon reads when it
/// builds its pool at the first parallel call; returns that size. Call before any parallel
/// work. The pool is not built here: the addon calls this while it is being loaded, and
/// threads started then hung the process (the dynamic loader's lock).
pub fn init_pool() -> usize {
    let n = count_from("PEFT_NODE_NUM_THREADS")
        .or_else(|| count_from("RAYON_NUM_THREADS"))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    n
}

/// Threads in the compute pool.
pub fn pool_size() -> usize {
    rayon::current_num_threads()
}

/// Runs `f` on a thread of the pool while the caller waits. A parallel loop started from a
/// pool thread splits its work with the other threads and starts at once, the rest of the
/// work stays on that thread; started from any other thread (the libuv pool's, which runs the
/// addon's jobs), every loop, however small, is sent to the pool while the caller sleeps
/// until it is done, a sleep and a wake-up per loop. A decode step runs a few hundred loops.
/// Take any lock `f` needs before calling this: a pool thread that blocks on a lock whose
/// holder waits for the pool would never be released.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}
