//! Damaged and hostile files: each must give an error that names the file, never a panic or
//! a huge allocation. Cases patch the bytes of a valid file the writer made.
use super::{tmp, write_fixture};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use peft_core::io::gguf::load_gguf;
use peft_core::Error;

fn valid() -> Vec<u8> {
    let (path, _, _) = write_fixture("corrupt-base.gguf", GgmlDType::F32);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(path).unwrap();
    bytes
}

/// The byte after a length-prefixed string `s` (a metadata key or tensor name) in the header.
fn after(bytes: &[u8], s: &str) -> usize {
    let mut needle = (s.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(s.as_bytes());
    bytes.windows(needle.len()).position(|w| w == needle).unwrap_or_else(|| panic!("`{s}` not in file")) + needle.len()
}

fn patch(bytes: &[u8], at: usize, with: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at..at + with.len()].copy_from_slice(with);
    b
}

/// Loads `bytes` from a file called `name` and returns the error, which must name the file.
fn load_err(name: &str, bytes: &[u8]) -> Error {
    let path = tmp(name);
    std::fs::write(&path, bytes).unwrap();
    let result = load_gguf(&path, DType::F32, &Device::Cpu);
    std::fs::remove_file(&path).unwrap();
    let err = match result {
        Ok(_) => panic!("{name}: a damaged file loaded without error"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{name}: error does not name the file: {msg}");
    err
}

fn message(name: &str, bytes: &[u8], expect: &str) {
    let msg = load_err(name, bytes).to_string();
    assert!(msg.contains(expect), "{name}: expected `{expect}` in: {msg}");
}

#[test]
fn truncated_files() {
    let b = valid();
    let data_start = after(&b, "output.weight") + 4 + 16 + 4 + 8;
    for cut in [0, 3, 7, 15, 23, 40, 200, data_start / 2, data_start - 1, data_start + 10, b.len() / 2, b.len() - 1] {
        load_err(&format!("trunc-{cut}.gguf"), &b[..cut]);
    }
}

#[test]
fn bad_magic_and_version() {
    let b = valid();
    message("magic.gguf", &patch(&b, 0, b"GGML"), "not a GGUF file");
    message("v1.gguf", &patch(&b, 4, &1u32.to_le_bytes()), "version 1");
    message("big-endian.gguf", &patch(&b, 4, &3u32.to_be_bytes()), "big-endian");
}

#[test]
fn header_counts_past_the_file() {
    let b = valid();
    let n_tensors = u64::from_le_bytes(b[8..16].try_into().unwrap());
    let n_kv = u64::from_le_bytes(b[16..24].try_into().unwrap());
    message("huge-tensors.gguf", &patch(&b, 8, &(u64::MAX / 2).to_le_bytes()), "header claims");
    message("huge-kv.gguf", &patch(&b, 16, &(1u64 << 40).to_le_bytes()), "header claims");
    load_err("more-tensors.gguf", &patch(&b, 8, &(n_tensors + 1).to_le_bytes()));
    load_err("more-kv.gguf", &patch(&b, 16, &(n_kv + 1).to_le_bytes()));
}

#[test]
fn absurd_lengths_in_metadata() {
    let b = valid();
    // The first key's length, a token array's count, and one token's length.
    message("key-len.gguf", &patch(&b, 24, &(u64::MAX - 3).to_le_bytes()), "only");
    let tokens = after(&b, "tokenizer.ggml.tokens");
    message("array-len.gguf", &patch(&b, tokens + 8, &(1u64 << 60).to_le_bytes()), "cannot fit");
    message("array-len-overflow.gguf", &patch(&b, tokens + 8, &u64::MAX.to_le_bytes()), "cannot fit");
    message("token-len.gguf", &patch(&b, tokens + 16, &(1u64 << 50).to_le_bytes()), "only");
    message("nested-array.gguf", &patch(&b, tokens + 4, &9u32.to_le_bytes()), "nested");
    message("value-type.gguf", &patch(&b, after(&b, "general.type"), &99u32.to_le_bytes()), "unknown value type 99");
    let type_pos = after(&b, "llama.embedding_length");
    message("wrong-type.gguf", &patch(&b, type_pos, &6u32.to_le_bytes()), "expected a non-negative integer, found a float");
}

#[test]
fn bad_tensor_entries() {
    let b = valid();
    let info = after(&b, "output.weight"); // n_dims u32, 2 dims u64, type u32, offset u64
    message("offset.gguf", &patch(&b, info + 24, &(1u64 << 40).to_le_bytes()), "past the end of the file");
    message("offset-overflow.gguf", &patch(&b, info + 24, &(u64::MAX - 31).to_le_bytes()), "past the end of the file");
    message("misaligned.gguf", &patch(&b, info + 24, &1u64.to_le_bytes()), "alignment");
    message("type-iq.gguf", &patch(&b, info + 20, &16u32.to_le_bytes()), "IQ2_XXS");
    message("type-unknown.gguf", &patch(&b, info + 20, &99u32.to_le_bytes()), "unknown type 99");
    message("n-dims.gguf", &patch(&b, info, &7u32.to_le_bytes()), "7 dimensions");
    message("dims-overflow.gguf", &patch(&b, info + 4, &u64::MAX.to_le_bytes()), "impossible");
    message("q4k-rows.gguf", &patch(&b, info + 20, &12u32.to_le_bytes()), "impossible");
    message("name.gguf", &patch(&b, after(&b, "token_embd.weight") - 17, b"token_embX.weight"), "not part of a llama model");
    message("dup.gguf", &patch(&b, after(&b, "blk.0.attn_k.weight") - 19, b"blk.0.attn_q.weight"), "appears twice");
}

#[test]
fn unsupported_models() {
    let b = valid();
    let arch = after(&b, "general.architecture") + 4 + 8;
    message("arch.gguf", &patch(&b, arch, b"gemma"), "architecture `gemma` is not supported");
    let err = load_err("rope-freqs.gguf", &patch(&b, after(&b, "token_embd.weight") - 17, b"rope_freqs.weight"));
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
}

#[test]
fn shapes_that_contradict_the_metadata() {
    let b = valid();
    let value = |key: &str| after(&b, key) + 4;
    let err = load_err("hidden.gguf", &patch(&b, value("llama.embedding_length"), &32u32.to_le_bytes()));
    assert!(matches!(err, Error::WeightShape { .. }), "{err}");
    let err = load_err("ffn.gguf", &patch(&b, value("llama.feed_forward_length"), &128u32.to_le_bytes()));
    assert!(matches!(err, Error::WeightShape { .. }), "{err}");
    let err = load_err("layers-3.gguf", &patch(&b, value("llama.block_count"), &3u32.to_le_bytes()));
    assert!(matches!(&err, Error::MissingWeight { name, .. } if name.starts_with("blk.2.")), "{err}");
    message("layers-1.gguf", &patch(&b, value("llama.block_count"), &1u32.to_le_bytes()), "layer 1");
    message("layers-huge.gguf", &patch(&b, value("llama.block_count"), &u32::MAX.to_le_bytes()), "");
    message("kv-heads.gguf", &patch(&b, value("llama.attention.head_count_kv"), &3u32.to_le_bytes()), "does not divide");
    message("zero.gguf", &patch(&b, value("llama.attention.head_count"), &0u32.to_le_bytes()), "expected 1 to 2^31");
    message("vocab.gguf", &patch(&b, value("llama.vocab_size"), &100u32.to_le_bytes()), "tokens but a vocabulary of 100");
    message("bos.gguf", &patch(&b, value("tokenizer.ggml.bos_token_id"), &5000u32.to_le_bytes()), "past the 384 tokens");
}

/// Every header byte overwritten in turn with four values: each load either fails with an
/// error naming the file or succeeds; none may panic or abort.
#[cfg(unix)]
#[test]
fn header_byte_fuzz_never_panics() {
    use std::os::unix::fs::FileExt;
    let b = valid();
    let header = after(&b, "output.weight") + 4 + 16 + 4 + 8;
    let path = tmp("fuzz.gguf");
    std::fs::write(&path, &b).unwrap();
    // Patch one byte in place and restore it: rewriting the whole file each time is 20x slower.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let mut failures = 0;
    for at in 0..header {
        for v in [0x00u8, 0xff, 0x7f, b[at] ^ 0x01] {
            if b[at] == v {
                continue;
            }
            file.write_all_at(&[v], at as u64).unwrap();
            if let Err(e) = load_gguf(&path, DType::F32, &Device::Cpu) {
                assert!(e.to_string().contains(&path.display().to_string()), "byte {at} = {v:#x}: {e}");
                failures += 1;
            }
            file.write_all_at(&b[at..at + 1], at as u64).unwrap();
        }
    }
    std::fs::remove_file(&path).unwrap();
    assert!(failures > 0);
}

#[test]
fn tensors_sharing_data_are_refused_naming_both() {
    let b = valid();
    // output.weight's data moved onto token_embd.weight's (the first tensor, at offset 0).
    let info = after(&b, "output.weight");
    let msg = load_err("overlap.gguf", &patch(&b, info + 24, &0u64.to_le_bytes())).to_string();
    assert!(msg.contains("share data") && msg.contains("`output.weight`") && msg.contains("`token_embd.weight`"), "{msg}");
}

#[test]
fn sliding_window_zero_is_none_and_past_2_31_is_an_error() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../__test__/data/tiny-gguf");
    let b = std::fs::read(dir.join("gemma3.f32.gguf")).unwrap();
    let value = after(&b, "gemma3.attention.sliding_window") + 4; // u32 type tag, then the value
    message("window-huge.gguf", &patch(&b, value, &u32::MAX.to_le_bytes()), "`gemma3.attention.sliding_window` is 4294967295");
    let path = tmp("window-zero.gguf");
    std::fs::write(&path, patch(&b, value, &0u32.to_le_bytes())).unwrap();
    let loaded = load_gguf(&path, DType::F32, &Device::Cpu);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(loaded.unwrap().config.arch.sliding_window, None);
}
