#!/usr/bin/env python3
"""Runs llama.cpp's own convert_hf_to_gguf.py unchanged, with one override.

Usage: tiny_gguf_convert.py <llama.cpp dir> <converter args...>

The fixture tokenizers are tiny byte-level BPE vocabularies (HF tokenizers, GPT-2's ByteLevel
pre-tokenizer with its regex). The converter identifies a BPE pre-tokenizer by hashing the ids of a
fixed test string; no real model has these ids, so it raises NotImplementedError("BPE pre-tokenizer
was not recognized"). This wrapper makes exactly that case return the pre-tokenizer named by
TINY_GGUF_PRE (default "default": llama.cpp loads it with its default BPE split, and our loader
reads it as GPT-2's ByteLevel split, the fixtures' own; the exact name "gpt-2" loads in llama.cpp
but our loader refuses it, and our "gpt2" is refused by llama.cpp); every recognised hash, every other
function and every tensor transform is llama.cpp's.
"""
import logging
import os
import runpy
import sys

llama_cpp_dir = os.path.abspath(sys.argv[1])
sys.path.insert(0, llama_cpp_dir)
sys.path.insert(1, os.path.join(llama_cpp_dir, "gguf-py"))

import conversion.base as base  # noqa: E402

PRE = os.environ.get("TINY_GGUF_PRE", "default")
_original = base.TextModel.get_vocab_base_pre


def get_vocab_base_pre(self, tokenizer):
    try:
        return _original(self, tokenizer)
    except NotImplementedError:
        logging.getLogger("tiny-gguf").warning("unrecognised BPE pre-tokenizer hash: writing tokenizer.ggml.pre = %r", PRE)
        return PRE


base.TextModel.get_vocab_base_pre = get_vocab_base_pre

converter = os.path.join(llama_cpp_dir, "convert_hf_to_gguf.py")
sys.argv = [converter] + sys.argv[2:]
runpy.run_path(converter, run_name="__main__")
