//! How long mimalloc keeps freed pages before returning them to the OS, and when it returns
//! them at once.
//!
//! mimalloc's default returns freed pages 10 ms after they are freed (100 ms for its arenas).
//! A training step frees and reallocates hundreds of MB of activations every few seconds, so
//! nearly every buffer landed on fresh pages that the kernel had to fault in and zero (2 MiB at
//! a time under transparent huge pages): `perf` put 37% of a SmolLM2 LoRA step's CPU samples in
//! the kernel's `clear_page_erms`. Keeping freed pages for 30 s (its arenas: 300 s) made that
//! step 1.6–1.7× faster, as PyTorch's caching allocator keeps its blocks (docs/benchmarks.md).
//!
//! Kept pages cost memory: the peak RSS of that step rose 5%, and that of a Llama-3.2-1B step
//! with gradient checkpointing 12% (1956 → 2193 MiB). Gradient checkpointing is how a user says
//! memory matters more than speed, so while any model has it on, freed pages go back after
//! mimalloc's 10 ms as before. An explicit `MIMALLOC_PURGE_DELAY` always wins.
use std::ffi::{c_int, c_long};
use std::sync::atomic::{AtomicUsize, Ordering};

// mimalloc's C API, statically linked by libmimalloc-sys 0.1.49 (mimalloc v3).
extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
    fn mi_collect(force: bool);
}
/// `mi_option_purge_delay` in v3's `mi_option_e` (include/mimalloc.h).
const MI_OPTION_PURGE_DELAY: c_int = 15;
/// Milliseconds before freed pages go back: while training without checkpointing, and
/// mimalloc's own default (while a model checkpoints).
const KEEP_MS: c_long = 30_000;
const LEAN_MS: c_long = 10;

/// Models with gradient checkpointing on.
static CHECKPOINTING: AtomicUsize = AtomicUsize::new(0);

fn apply(checkpointing: usize) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, if checkpointing > 0 { LEAN_MS } else { KEEP_MS }) }
    }
}

/// At load: keep freed pages.
pub fn init() {
    apply(CHECKPOINTING.load(Ordering::SeqCst));
}

/// A model turned gradient checkpointing from `was` to `now` (or was disposed: `now` false).
pub fn checkpointing_changed(was: bool, now: bool) {
    let n = match (was, now) {
        (false, true) => CHECKPOINTING.fetch_add(1, Ordering::SeqCst) + 1,
        (true, false) => CHECKPOINTING.fetch_sub(1, Ordering::SeqCst).saturating_sub(1),
        _ => return,
    };
    apply(n);
    if now {
        release_freed_memory(); // what was kept until now goes back before the lean run starts
    }
}

/// Returns the memory freed so far to the OS now instead of after the delay (a disposed
/// model's weights should not wait for it).
pub fn release_freed_memory() {
    unsafe { mi_collect(true) }
}
