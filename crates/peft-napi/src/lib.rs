//! Thin Node-API handles over peft-core. No math here: each method converts its
//! arguments, runs the core off the JS thread, and converts the result or error.
// mimalloc returns freed memory to the OS; glibc's malloc kept per-thread arenas of freed
// activation buffers, doubling training's peak RSS (bench/: measured side by side).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod adalora;
mod alloc;
mod batch;
mod cancel;
mod checkpoint;
mod compose;
mod dylora;
mod error;
mod generate;
mod graph;
mod job;
mod model;
mod optim;
mod peft;
mod plan;
mod procedures;
mod sparse;
mod tensor;
mod tokenizer;
// Survey methods, part A (issue 16).
mod multitask;
// Survey methods, Laplace-LoRA (issue 16).
mod laplace;

pub use generate::NativeAbort;
pub use model::NativeModel;
pub use sparse::NativeFisherScores;
pub use tensor::NativeTensor;
pub use tokenizer::{NativeStreamDecoder, NativeTokenizer};

/// Runs when the addon is loaded, before any candle thread exists: one compute pool of
/// `PEFT_NODE_NUM_THREADS` threads (default: the cores available; `peft_core::threads`).
/// candle (0.11) runs its element-wise ops on a "barrier pool" of CANDLE_NUM_THREADS − 1
/// spinning workers beside the rayon threads that run the matmuls; on a small machine they
/// compete for the same cores and the caller spins waiting on a descheduled worker (a quarter
/// of the CPU samples of a LoRA training step in `perf`). One thread for those (memory-bound)
/// ops measured 20% less CPU per step and 10–27% less wall time on 2 cores
/// (docs/benchmarks.md), so CANDLE_NUM_THREADS defaults to 1; an explicit value wins.
#[napi_derive::module_init]
fn init() {
    keep_mimalloc_main_thread_state();
    alloc::init();
    peft_core::threads::init_pool();
}

/// The size of the compute pool (`PEFT_NODE_NUM_THREADS`, default: the cores available).
#[napi_derive::napi]
pub fn num_threads() -> u32 {
    peft_core::threads::pool_size() as u32
}

/// mimalloc (v3, libmimalloc-sys 0.1.49) takes the thread that loads the library for the
/// process's main thread and keeps that thread's heap in static storage. When a Worker loads the
/// addon first, that thread's exit runs mimalloc's thread-exit hook (a pthread-key destructor),
/// which tears the static heap down; the next thread glibc starts on the cached stack has the same
/// thread id, is taken for the main thread again, and used the torn-down heap: SIGSEGV in
/// `mi_thread_init` (issue 15: Workers one after another). A thread-local guard on the loading
/// thread clears the key just before the key destructors run (glibc runs thread_local destructors
/// first), so the static heap stays intact for whichever thread inherits the id, as mimalloc
/// itself leaves the main thread alone on Windows. mimalloc v2 has no such bug but kept training's
/// peak RSS at 7.5 GB instead of 4.6 GB (docs/benchmarks.md), so v3 stays.
fn keep_mimalloc_main_thread_state() {
    #[cfg(all(unix, not(target_vendor = "apple")))]
    {
        extern "C" {
            // mimalloc's own prim API (statically linked): sets this thread's value of the
            // pthread key whose destructor runs mimalloc's thread-exit cleanup.
            fn _mi_prim_thread_associate_default_theap(theap: *mut std::ffi::c_void);
        }
        struct Dissociate;
        impl Drop for Dissociate {
            fn drop(&mut self) {
                unsafe { _mi_prim_thread_associate_default_theap(std::ptr::null_mut()) }
            }
        }
        thread_local!(static GUARD: Dissociate = const { Dissociate });
        // Only the first load runs on mimalloc's loading thread; later loads are other threads.
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| GUARD.with(|_| ()));
    }
}
