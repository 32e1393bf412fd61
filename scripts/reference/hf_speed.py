#!/usr/bin/env python3
"""Speed of Hugging Face transformers on the GPU machine, the baseline of bench/gpu-model.ts.

Loads a checkpoint in its own dtype on the GPU (the default attention, SDPA) and measures,
after a warm-up: greedy generate() at batch 1 (DECODE_TOKENS new tokens from a short
prompt; tokens/s of the decode steps, prefill subtracted), and a forward over a
PREFILL_TOKENS-token prompt (tokens/s). Prints one JSON object.

Usage: hf_speed.py MODEL_DIR [DECODE_TOKENS] [PREFILL_TOKENS]
"""
import json
import sys
import time

import torch
import transformers


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    model_dir = sys.argv[1]
    decode_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    prefill_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").to("cuda").eval()
    vocab = model.config.vocab_size
    prompt = torch.tensor([[(7 + 131 * i * i) % vocab for i in range(16)]], device="cuda")
    long_prompt = torch.tensor([[(3 + 17 * i) % vocab for i in range(prefill_tokens)]], device="cuda")

    def generate(new_tokens: int):
        with torch.no_grad():
            model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=0)

    def prefill():
        with torch.no_grad():
            model(long_prompt, use_cache=True)

    generate(8)
    first_token = timed(lambda: generate(1), 3)
    full = timed(lambda: generate(decode_tokens + 1), 2)
    prefill_seconds = timed(prefill, 3)
    print(json.dumps({
        "dtype": str(model.dtype).replace("torch.", ""),
        "decodeTokensPerS": decode_tokens / (full - first_token),
        "prefillTokensPerS": prefill_tokens / prefill_seconds,
        "prefillTokens": prefill_tokens,
        "decodeTokens": decode_tokens,
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
    }))


if __name__ == "__main__":
    main()
