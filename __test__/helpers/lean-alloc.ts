// Imported first by specs that measure resident memory for leaks. The addon keeps freed
// pages for 30 s to spare the kernel from zeroing them again (crates/peft-napi/src/alloc.rs);
// the pages held then depend on timing, not on what is still alive, and lifted a 40-cycle
// soak's RSS by 5.3% in a loaded CI run with no leak. mimalloc's own 10 ms delay, set before
// the addon loads, makes RSS follow live memory again; an explicit MIMALLOC_PURGE_DELAY wins.
process.env.MIMALLOC_PURGE_DELAY ??= '10'
