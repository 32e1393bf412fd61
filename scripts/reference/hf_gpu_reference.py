#!/usr/bin/env python3
"""Live references for the CUDA backend, from Hugging Face transformers on the same GPU.

For each checkpoint it runs transformers twice on the GPU with eager attention: in the
checkpoint's own dtype (bf16 or fp16, as a user of transformers would) and upcast to
float32 (TF32 off) as the closest thing to exact. It writes, per case:
  NAME.json          tokens, greedy tokens of the half-precision run with top-2 gaps,
                     and the half-precision run's own error against float32
  NAME.half.f32      logits of every position (tokens x vocab, float32 little-endian)
  NAME.exact.f32     the float32 run's logits, same layout
test/gpu/cuda-correctness.test.ts compares the CUDA backend's logits with both.

Usage: hf_gpu_reference.py OUT_DIR MODEL_DIR:NAME ...
"""
import json
import os
import sys

import torch
import transformers

SEQUENCE_LENGTH = 12
PROMPT_LENGTH = 6
GREEDY_STEPS = 32


def fixed_tokens(vocab_size: int, count: int) -> list[int]:
    return [(7 + 131 * i * i + 17 * i) % vocab_size for i in range(count)]


def load(model_dir: str, dtype):
    return transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, attn_implementation="eager"
    ).to("cuda").eval()


def all_logits(model, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens], device="cuda")).logits[0].float().cpu()


def greedy(model, prompt: list[int]) -> tuple[list[int], list[float]]:
    tokens, gaps = [], []
    with torch.no_grad():
        out = model(torch.tensor([prompt], device="cuda"), use_cache=True)
        for _ in range(GREEDY_STEPS):
            top2 = torch.topk(out.logits[0, -1].float(), 2)
            next_id = int(top2.indices[0])
            tokens.append(next_id)
            gaps.append(float(top2.values[0] - top2.values[1]))
            out = model(torch.tensor([[next_id]], device="cuda"), past_key_values=out.past_key_values, use_cache=True)
    return tokens, gaps


def main() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out_dir, specs = sys.argv[1], sys.argv[2:]
    os.makedirs(out_dir, exist_ok=True)
    for spec in specs:
        model_dir, _, name = spec.partition(":")
        half = load(model_dir, "auto")
        vocab = half.config.vocab_size
        tokens = fixed_tokens(vocab, SEQUENCE_LENGTH)
        half_logits = all_logits(half, tokens)
        greedy_tokens, gaps = greedy(half, tokens[:PROMPT_LENGTH])
        dtype = str(half.dtype).replace("torch.", "")
        del half
        exact = load(model_dir, torch.float32)
        exact_logits = all_logits(exact, tokens)
        del exact
        torch.cuda.empty_cache()
        half_logits.numpy().astype("<f4").tofile(os.path.join(out_dir, f"{name}.half.f32"))
        exact_logits.numpy().astype("<f4").tofile(os.path.join(out_dir, f"{name}.exact.f32"))
        half_error = float((half_logits - exact_logits).abs().max())
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(
                {
                    "dtype": dtype,
                    "vocab": vocab,
                    "tokens": tokens,
                    "halfMaxError": half_error,
                    "greedy": {"prompt": tokens[:PROMPT_LENGTH], "tokens": greedy_tokens, "top2Gaps": gaps},
                    "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
                },
                f,
            )
        print(f"{name}: {dtype}, transformers' own max |half - fp32| {half_error:.3g}, greedy {greedy_tokens[:6]}...")


if __name__ == "__main__":
    main()
