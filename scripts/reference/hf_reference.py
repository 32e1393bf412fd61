#!/usr/bin/env python3
"""Reference outputs from Hugging Face transformers, which nobody on this project wrote.

Run on the GPU machine (it has torch, transformers, tokenizers): for each synthetic model
directory given, it loads the checkpoint with transformers in float32 on the CPU (eager
attention: plain math, no fused kernels, no TF32), and writes a JSON fixture with
  - the logits of every position of a fixed token sequence (one forward, no cache),
  - 32 greedy tokens from a prompt, decoded step by step with the KV cache, with the gap
    between the top two logits at each step (to judge near-ties),
  - the ids the Rust `tokenizers` library gives for a test text (checks our JS tokenizer).
CI compares the CPU backend and tokenizer against these fixtures (test/reference/).

Usage: hf_reference.py OUT_DIR MODEL_DIR[:NAME] ...
"""
import hashlib
import json
import os
import sys

import tokenizers
import torch
import transformers

SEQUENCE_LENGTH = 12
PROMPT_LENGTH = 6
GREEDY_STEPS = 32
TOKENIZER_TEXT = "Hello, world! Serverless LLMs start cold — 42 times?\n\tdone."


def fixed_tokens(vocab_size: int, count: int) -> list[int]:
    # Spread over the vocabulary, deterministic, no special meaning.
    return [(7 + 131 * i * i + 17 * i) % vocab_size for i in range(count)]


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def reference_for(model_dir: str) -> dict:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    config = model.config
    vocab = config.vocab_size
    tokens = fixed_tokens(vocab, SEQUENCE_LENGTH)
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].float()

        prompt = tokens[:PROMPT_LENGTH]
        out = model(torch.tensor([prompt]), use_cache=True)
        past = out.past_key_values
        step_logits = out.logits[0, -1].float()
        greedy, gaps = [], []
        for _ in range(GREEDY_STEPS):
            top2 = torch.topk(step_logits, 2)
            next_id = int(top2.indices[0])
            greedy.append(next_id)
            gaps.append(float(top2.values[0] - top2.values[1]))
            out = model(torch.tensor([[next_id]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            step_logits = out.logits[0, -1].float()

    rust_tokenizer = tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    weight_files = sorted(f for f in os.listdir(model_dir) if f.endswith(".safetensors"))
    return {
        "architecture": config.architectures[0],
        "weights": {f: sha256_of(os.path.join(model_dir, f)) for f in weight_files},
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "tokens": tokens,
        "logits": [[round(float(v), 6) for v in row] for row in logits],
        "greedy": {"prompt": prompt, "tokens": greedy, "top2_gaps": [round(g, 6) for g in gaps]},
        "tokenizer": {
            "text": TOKENIZER_TEXT,
            "ids": rust_tokenizer.encode(TOKENIZER_TEXT, add_special_tokens=False).ids,
        },
    }


def main() -> None:
    out_dir, specs = sys.argv[1], sys.argv[2:]
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    for spec in specs:
        model_dir, _, name = spec.partition(":")
        name = name or os.path.basename(model_dir.rstrip("/"))
        fixture = reference_for(model_dir)
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(fixture, f, separators=(",", ":"))
        print(f"{name}: {fixture['architecture']}, greedy {fixture['greedy']['tokens'][:8]}...")


if __name__ == "__main__":
    main()
