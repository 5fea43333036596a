//! A tokenizer from GGUF metadata (`tokenizer.ggml.*`), rebuilt as the Hugging Face tokenizer
//! the file was converted from:
//! - `gpt2`: byte-level BPE from the tokens (by index) and merges; the pre-tokenizer follows
//!   `tokenizer.ggml.pre` (`smollm`: SmolLM's digits split + ByteLevel, llama-3 family: the
//!   llama-3 split regex + ByteLevel with `ignore_merges`, `default`/`gpt2`/none: GPT-2 ByteLevel);
//! - `llama`: SentencePiece BPE with byte fallback, merges derived from the scores the way
//!   transformers does (`generate_merges`), Metaspace (`prepend_scheme: first`).
//!
//! Control tokens (type 3) become special added tokens, user-defined ones (4) plain added tokens.
use std::collections::HashMap;
use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::config::TokenizerConfig;
use crate::error::{Error, Result};

const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// The split regex of the llama-3 `tokenizer.json` (and of transformers' GGUF loader).
pub(super) const LLAMA3_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_PRE: &[&str] = &["llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3", "pixtral", "dbrx"];

pub(crate) fn build(spec: &super::GgufTokenizerSpec, file: &Path) -> Result<(tokenizers::Tokenizer, TokenizerConfig)> {
    let fail = |message: String| Error::Tokenizer { file: file.into(), message };
    let n = spec.tokens.len();
    if n == 0 {
        return Err(fail("GGUF has no `tokenizer.ggml.tokens`".into()));
    }
    if !spec.token_types.is_empty() && spec.token_types.len() != n {
        return Err(fail(format!("{} token types for {n} tokens", spec.token_types.len())));
    }
    let pre = spec.pre.as_deref();
    let (mut tokenizer, names, default_bos) = match spec.model.as_str() {
        "gpt2" => {
            let (tokenizer, names) = byte_level(spec, pre).map_err(fail)?;
            (tokenizer, names, pre.is_some_and(|p| LLAMA3_PRE.contains(&p)))
        }
        "llama" => (sentencepiece(spec).map_err(fail)?, spec.tokens.clone(), true),
        other => {
            return Err(Error::Unsupported(format!(
                "{}: GGUF tokenizer model `{other}` is not supported (supported: gpt2, llama)",
                file.display()
            )))
        }
    };
    let token_type = |i: usize| spec.token_types.get(i).copied().unwrap_or(1);
    let control: Vec<AddedToken> = (0..n)
        .filter(|&i| token_type(i) == CONTROL && !names[i].is_empty())
        .map(|i| AddedToken::from(names[i].clone(), true).normalized(false))
        .collect();
    tokenizer.add_special_tokens(&control);
    let user: Vec<AddedToken> = (0..n)
        .filter(|&i| token_type(i) == USER_DEFINED && !names[i].is_empty())
        .map(|i| AddedToken::from(names[i].clone(), false).normalized(false))
        .collect();
    tokenizer.add_tokens(&user);

    let name = |key: &str, id: Option<u32>| -> Result<Option<String>> {
        match id {
            None => Ok(None),
            Some(id) => names
                .get(id as usize)
                .map(|t| Some(t.clone()))
                .ok_or_else(|| fail(format!("`tokenizer.ggml.{key}` is {id}, past the {n} tokens"))),
        }
    };
    let config = TokenizerConfig {
        bos_token: name("bos_token_id", spec.bos_token_id)?,
        eos_token: name("eos_token_id", spec.eos_token_id)?,
        pad_token: name("padding_token_id", spec.pad_token_id)?,
        unk_token: name("unknown_token_id", spec.unknown_token_id)?,
        add_bos_token: Some(spec.add_bos_token.unwrap_or(default_bos)),
        add_eos_token: Some(spec.add_eos_token.unwrap_or(false)),
        chat_template: spec.chat_template.clone().map(Ok),
        chat_template_origin: format!("{} (tokenizer.chat_template)", file.display()),
    };
    Ok((tokenizer, config))
}

/// GPT-2's byte -> printable char table (`bytes_to_unicode`).
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            b as char
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\u{FFFD}')
        };
    }
    table
}

/// Byte-level BPE. Tokens using characters outside the byte alphabet are respelled byte by byte
/// (as transformers does), and the returned names are the vocabulary's spellings.
fn byte_level(spec: &super::GgufTokenizerSpec, pre: Option<&str>) -> std::result::Result<(tokenizers::Tokenizer, Vec<String>), String> {
    let table = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
    let names: Vec<String> = spec
        .tokens
        .iter()
        .map(|t| if t.chars().all(|c| alphabet.contains(&c)) { t.clone() } else { t.bytes().map(|b| table[b as usize]).collect() })
        .collect();
    let llama3 = pre.is_some_and(|p| LLAMA3_PRE.contains(&p));
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        // llama.cpp names GPT-2's split `gpt-2` (LLAMA_VOCAB_PRE_TYPE_GPT2); older files say `gpt2`.
        None | Some("default") | Some("gpt2") | Some("gpt-2") => byte_level_pre(true).into(),
        Some("smollm") => Sequence::new(vec![Digits::new(true).into(), byte_level_pre(true).into()]).into(),
        Some(_) if llama3 => {
            let split = Split::new(SplitPattern::Regex(LLAMA3_SPLIT.into()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| format!("llama-3 split regex: {e}"))?;
            Sequence::new(vec![split.into(), byte_level_pre(false).into()]).into()
        }
        Some(other) => {
            return Err(format!(
                "unsupported `tokenizer.ggml.pre` `{other}` for a gpt2 tokenizer \
                 (supported: default, gpt2, gpt-2, smollm, {})",
                LLAMA3_PRE.join(", ")
            ))
        }
    };
    let vocab: Vocab = names.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges = split_merges(&spec.merges)?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(llama3)
        .build()
        .map_err(|e| format!("cannot build the BPE model: {e}"))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    Ok((tokenizer, names))
}

fn byte_level_pre(use_regex: bool) -> ByteLevel {
    ByteLevel::new(false, true, use_regex)
}

fn split_merges(merges: &[String]) -> std::result::Result<Vec<(String, String)>, String> {
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => Ok((a.to_string(), b.to_string())),
            _ => Err(format!("merge {i} ({m:?}) is not two tokens separated by one space")),
        })
        .collect()
}

/// SentencePiece BPE as transformers 5 builds it from a GGUF (`LlamaTokenizer`).
fn sentencepiece(spec: &super::GgufTokenizerSpec) -> std::result::Result<tokenizers::Tokenizer, String> {
    let vocab: Vocab = spec.tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges = if spec.merges.is_empty() {
        if spec.scores.len() != spec.tokens.len() {
            return Err(format!("{} scores for {} tokens (needed to derive merges)", spec.scores.len(), spec.tokens.len()));
        }
        generate_merges(&spec.tokens, &spec.scores, &vocab)
    } else {
        split_merges(&spec.merges)?
    };
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).fuse_unk(true).byte_fallback(true);
    if let Some(unk) = spec.unknown_token_id.and_then(|id| spec.tokens.get(id as usize)) {
        builder = builder.unk_token(unk.clone());
    }
    let bpe = builder.build().map_err(|e| format!("cannot build the BPE model: {e}"))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    // Gemma's files say `add_space_prefix = false`: spaces become "▁" but none is prepended,
    // and decoding strips none.
    let prefix = spec.add_space_prefix != Some(false);
    let scheme = if prefix { PrependScheme::First } else { PrependScheme::Never };
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)));
    let replace = Replace::new("▁", " ").map_err(|e| e.to_string())?;
    let mut decoders: Vec<DecoderWrapper> = vec![replace.into(), ByteFallback::new().into(), Fuse::new().into()];
    if prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// transformers' `generate_merges(vocab, vocab_scores)`: every split of every token into two
/// tokens, ordered by the token's score (descending), then by the lengths of the left and right
/// pieces (descending, in characters); ties keep the token order and, within a token, the order
/// of the pieces' ids. A repeated token string counts once, with its last id and score.
fn generate_merges(tokens: &[String], scores: &[f32], vocab: &Vocab) -> Vec<(String, String)> {
    let mut order: Vec<&str> = Vec::new();
    let mut score_of: HashMap<&str, f32> = HashMap::new();
    for (t, &s) in tokens.iter().zip(scores) {
        if score_of.insert(t.as_str(), s).is_none() {
            order.push(t.as_str());
        }
    }
    let mut merges: Vec<(&str, &str, f32, usize, usize)> = Vec::new();
    for token in order {
        let score = score_of[token];
        let mut local: Vec<(&str, &str, u32, u32)> = Vec::new();
        for (i, _) in token.char_indices().skip(1) {
            let (l, r) = token.split_at(i);
            if let (Some(&a), Some(&b)) = (vocab.get(l), vocab.get(r)) {
                local.push((l, r, a, b));
            }
        }
        local.sort_by_key(|&(_, _, a, b)| (a, b));
        merges.extend(local.into_iter().map(|(l, r, ..)| (l, r, score, l.chars().count(), r.chars().count())));
    }
    // Python's sorted(reverse=True) is stable: equal keys keep their order.
    merges.sort_by(|x, y| y.2.total_cmp(&x.2).then(y.3.cmp(&x.3)).then(y.4.cmp(&x.4)));
    merges.into_iter().map(|(l, r, ..)| (l.to_string(), r.to_string())).collect()
}
