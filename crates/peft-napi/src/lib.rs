//! Thin Node-API handles over peft-core. No math here: each method converts its
//! arguments, runs the core off the JS thread, and converts the result or error.
// mimalloc returns freed memory to the OS; glibc's malloc kept per-thread arenas of freed
// activation buffers, doubling training's peak RSS (bench/: measured side by side).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod adalora;
mod checkpoint;
mod dylora;
mod error;
mod compose;
mod generate;
mod graph;
mod job;
mod mixed;
mod model;
mod optim;
mod peft;
mod sparse;
mod tensor;
mod tokenizer;

pub use generate::NativeAbort;
pub use model::NativeModel;
pub use sparse::NativeFisherScores;
pub use tensor::NativeTensor;
pub use tokenizer::{NativeStreamDecoder, NativeTokenizer};

/// Runs when the addon is loaded, before any candle thread exists. candle (0.11) runs its
/// element-wise ops on a "barrier pool" of CANDLE_NUM_THREADS − 1 spinning workers beside
/// the rayon threads that run the matmuls; on a small machine they compete for the same
/// cores and the caller spins waiting on a descheduled worker (a quarter of the CPU samples
/// of a LoRA training step in `perf`). One thread for those (memory-bound) ops measured
/// 20% less CPU per step and 10–27% less wall time on 2 cores (docs/benchmarks.md).
/// The matmuls still use RAYON_NUM_THREADS; an explicit CANDLE_NUM_THREADS wins.
#[napi_derive::module_init]
fn init() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
