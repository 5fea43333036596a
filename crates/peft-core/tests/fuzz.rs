//! Fuzzing every parser of a user's file, for a fixed budget per target (`PEFT_FUZZ_SECS`,
//! default 30 s in `npm test`; 600 s by hand: `PEFT_FUZZ_SECS=600 cargo test --release -p
//! peft-core --test fuzz`). Zero panics, zero hangs, and no single allocation past
//! `ALLOC_LIMIT`: this binary's allocator refuses it, which aborts the run.
use std::alloc::{GlobalAlloc, Layout, System};

#[path = "fuzz/harness.rs"]
mod harness;
#[path = "fuzz/targets.rs"]
mod targets;

use harness::{fuzz, Target};
use targets::*;

/// Far above anything the tiny fixtures need (their largest tensor is 100 KB, a chat
/// template's output is capped at 16 MiB): a size taken from a file without a bound hits it.
const ALLOC_LIMIT: usize = 256 << 20;

struct Bounded;

fn refuse(size: usize) -> *mut u8 {
    use std::io::Write;
    // No formatting machinery that could allocate: the digits by hand.
    let mut digits = [0u8; 20];
    let (mut n, mut i) = (size, digits.len());
    while n > 0 || i == digits.len() {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(b"\nfuzz: an allocation of ");
    let _ = err.write_all(&digits[i..]);
    let _ = err.write_all(b" bytes is past the fuzz bound: a size from a file was not checked (the input is the target's *-current.bin)\n");
    std::ptr::null_mut()
}

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() > ALLOC_LIMIT {
            refuse(l.size())
        } else {
            System.alloc(l)
        }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if l.size() > ALLOC_LIMIT {
            refuse(l.size())
        } else {
            System.alloc_zeroed(l)
        }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > ALLOC_LIMIT {
            refuse(new)
        } else {
            System.realloc(p, l, new)
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
}

#[global_allocator]
static ALLOC: Bounded = Bounded;

fn check(t: Target) {
    let stats = fuzz(&t);
    assert!(stats.execs > 0, "fuzz {}: no input ran", t.name);
}

#[test]
fn fuzz_checkpoint_folder() {
    check(checkpoint(&run_checkpoint));
}

#[test]
fn fuzz_config_json() {
    check(Target { name: "config", seeds: config_seeds(), dict: DICTS.0, focus: whole, run: &run_config });
}

#[test]
fn fuzz_gguf() {
    check(Target { name: "gguf", seeds: gguf_seeds(), dict: &[], focus: gguf_header, run: &run_gguf });
}

#[test]
fn fuzz_adapter_folder() {
    let seeds = adapter_seeds();
    let s = seeds.clone();
    let run = move |input: &[u8]| run_adapter(&s, input);
    check(Target {
        name: "adapter",
        seeds,
        dict: DICTS.0,
        focus: |b| 1 + safetensors_header(&b[1.min(b.len())..]).min(b.len()),
        run: &run,
    });
}

#[test]
fn fuzz_tokenizer_json() {
    let seed = std::fs::read(fixture().join("hf-peft-tiny-llama/model/tokenizer.json")).unwrap();
    check(Target { name: "tokenizer", seeds: vec![seed], dict: DICTS.0, focus: whole, run: &run_tokenizer });
}

#[test]
fn fuzz_chat_template() {
    check(Target { name: "template", seeds: template_seeds(), dict: DICTS.1, focus: whole, run: &run_template });
}

/// What the fuzzers found, pinned: each input failed (abort or panic) before its fix.
#[test]
fn found_by_fuzzing() {
    let config = std::fs::read_to_string(fixture().join("hf-peft-tiny-llama/model/config.json")).unwrap();
    // num_hidden_layers 2^32 - 1 allocated a per-layer table of 4 GB before any check.
    for layers in ["4294967295", "9007199254740993", "1025"] {
        let bad = config.replace("\"num_hidden_layers\": 2", &format!("\"num_hidden_layers\": {layers}"));
        assert_ne!(bad, config);
        let err = run_config(bad.as_bytes()).expect_err("too many layers must be refused");
        assert!(err.contains("num_hidden_layers") && err.contains("at most 1024"), "{err}");
    }
    let ok = config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1024");
    run_config(ok.as_bytes()).expect("1024 layers is a valid config");
}
