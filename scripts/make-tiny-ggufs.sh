#!/usr/bin/env bash
# Converts the shared tiny fixture models to GGUF with llama.cpp's own converter
# (convert_hf_to_gguf.py), not ours: the files in __test__/data/tiny-gguf/ are an independent
# check of our GGUF reader (__test__/gguf-arch.spec.ts).
#
#   bash scripts/make-tiny-ggufs.sh [OUT_DIR]   (default __test__/data/tiny-gguf; work in $WORK, default /tmp/tiny-gguf-work)
#
# Pinned versions (what made the committed files):
#   llama.cpp 0c1e57098bba43ac29e6e3b677cdceebdd22334f, vendored in the sdist of llama-cpp-python 0.3.36
#     (sha256 832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e), with its gguf-py 0.19.0
#   Python 3.11, torch 2.11.0 (PyPI's manylinux wheel, run on CPU; the converter's requirement pins 2.11.0),
#   transformers 4.57.6, numpy 2.2.6, sentencepiece 0.2.3, safetensors 0.8.0, protobuf 4.25.9
#
# Inputs changed, nowhere else:
#   * All fixtures: their byte-level BPE tokenizer is unknown to the converter's pre-tokenizer hash
#     table (chkhsh aba13d48...). scripts/tiny_gguf_convert.py runs the converter unchanged but
#     writes tokenizer.ggml.pre = "default" in that one case (the fixtures' pre-tokenizer is
#     ByteLevel with GPT-2's regex; llama.cpp calls that "gpt-2", which our loader refuses, and
#     "default" loads in both; the tests feed token ids, never text).
#   * phi3: the converter's Phi-3 vocabulary reads tokenizer.model (SentencePiece) unless
#     tokenizer_config.json says "tokenizer_class": "GPT2Tokenizer". A copy of the model folder gets
#     that class and "unk_token": null (else GPT2TokenizerFast adds a default <|endoftext|> as id
#     320, past the vocabulary of 320, and the converter's assert fails). Weights and config as shared.
#     The copy keeps the folder name `model` (see below).
#
# What the converter does not store (so llama.cpp, and our loader, which copies llama.cpp's
# defaults, run these files differently from transformers on the safetensors):
#   * mistral is written as general.architecture = llama without sliding_window (full attention);
#   * gemma3 keeps sliding_window 12 but not layer_types: llama.cpp hard-codes the pattern 6
#     (layers 0-4 local), so all 3 tiny layers are local with the local RoPE base 10000, where
#     transformers makes layer 1 global (window off, base 1e6).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(mkdir -p "${1:-$ROOT/__test__/data/tiny-gguf}" && cd "${1:-$ROOT/__test__/data/tiny-gguf}" && pwd)"
WORK="${WORK:-/tmp/tiny-gguf-work}"
FIXTURES="${FIXTURES:-$ROOT/../shared/fixtures}"
LCP=0.3.36
mkdir -p "$WORK"
cd "$WORK"

if [ ! -d "llama_cpp_python-$LCP/vendor/llama.cpp/conversion" ]; then
  pip download --no-binary :all: --no-deps "llama-cpp-python==$LCP" -d .
  echo "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e  llama_cpp_python-$LCP.tar.gz" | sha256sum -c -
  tar xzf "llama_cpp_python-$LCP.tar.gz" \
    "llama_cpp_python-$LCP/vendor/llama.cpp/convert_hf_to_gguf.py" \
    "llama_cpp_python-$LCP/vendor/llama.cpp/conversion" \
    "llama_cpp_python-$LCP/vendor/llama.cpp/gguf-py"
fi
LC="$WORK/llama_cpp_python-$LCP/vendor/llama.cpp"

if [ ! -x venv/bin/python ]; then
  python3 -m venv venv
  venv/bin/pip install torch==2.11.0 numpy==2.2.6 sentencepiece==0.2.3 transformers==4.57.6 \
    protobuf==4.25.9 safetensors==0.8.0
  venv/bin/pip install --no-deps "$LC/gguf-py"
fi

convert() { # model_dir out_name outtype
  venv/bin/python "$ROOT/scripts/tiny_gguf_convert.py" "$LC" "$1" --outtype "$3" --outfile "$OUT/$2" >"$WORK/$2.log" 2>&1 \
    || { tail -20 "$WORK/$2.log"; exit 1; }
  echo "$OUT/$2 $(stat -c %s "$OUT/$2") bytes"
}

for arch in qwen2 qwen3 mistral gemma3; do
  convert "$FIXTURES/hf-peft-tiny-arch/$arch/model" "$arch.f32.gguf" f32
done
# The copy's folder is named `model` like the others: general.name comes from it, and llama.cpp
# looks up </s>, <unk>, <s> and <|endoftext|> (absent here) in any vocabulary whose general.name
# contains "phi3" ("error loading model vocabulary: _Map_base::at").
rm -rf phi3-copy
mkdir phi3-copy
cp -r "$FIXTURES/hf-peft-tiny-arch/phi3/model" phi3-copy/model
chmod -R u+w phi3-copy
venv/bin/python - <<'EOF'
import json
p = "phi3-copy/model/tokenizer_config.json"
c = json.load(open(p))
c["tokenizer_class"] = "GPT2Tokenizer"
c["unk_token"] = None
json.dump(c, open(p, "w"), indent=2)
EOF
convert phi3-copy/model phi3.f32.gguf f32
convert "$FIXTURES/hf-peft-tiny-arch/qwen2/model" qwen2.q8_0.gguf q8_0
# LLaMA (551 KB, not committed: the spec tests it when present)
if [ -z "${SKIP_LLAMA:-}" ]; then
  mkdir -p "$ROOT/.cache/tiny-gguf"
  OUT="$ROOT/.cache/tiny-gguf" convert "$FIXTURES/hf-peft-tiny-llama/model" llama.f32.gguf f32
fi
