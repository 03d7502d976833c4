#!/usr/bin/env python3
"""Decode speed of Hugging Face transformers on the GPU, for the shapes `cheems bench` measures.

Each model is built from its config with random weights (the speed does not depend on the
values), in bf16, batch 1, on cuda:0. Decode tokens/s: `model.generate` from a one-token prompt,
greedy, exactly N new tokens (min_new_tokens = max_new_tokens = N), after a warm-up run; the
best of R repetitions and the median are printed. `cheems` (the hybrid) has no transformers
class: it runs the PyTorch reference `tests/fixtures/cheems_ref.py` (the fixtures' reference),
token by token through its `step` path with argmax sampling.

usage: python3 tools/cuda/hf_baseline.py [--n 128] [--reps 3] [--json OUT]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import (DogeConfig, DogeForCausalLM, LlamaConfig, LlamaForCausalLM,
                          Mamba2Config, Mamba2ForCausalLM)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))


def llama_110m():
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=32768, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048,
        tie_word_embeddings=False, bos_token_id=0, eos_token_id=1, pad_token_id=2))


def mamba2_130m():
    return Mamba2ForCausalLM(Mamba2Config(
        vocab_size=50288, hidden_size=768, num_hidden_layers=24, num_heads=24, head_dim=64,
        state_size=128, n_groups=1, expand=2, conv_kernel=4, chunk_size=256,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=1, pad_token_id=2))


def doge_60m():
    return DogeForCausalLM(DogeConfig(
        vocab_size=32768, hidden_size=512, intermediate_size=1024, num_hidden_layers=16,
        num_attention_heads=4, num_key_value_heads=2, head_dim=128, keep_window_size=2048,
        max_position_embeddings=2048, tie_word_embeddings=True,
        rope_parameters={"rope_type": "dynamic", "factor": 4.0,
                         "original_max_position_embeddings": 2048, "rope_theta": 10000.0},
        bos_token_id=0, eos_token_id=1, pad_token_id=2))


def cheems_model(kind):
    from cheems_ref import CheemsConfig, CheemsForCausalLM
    if kind == "default":  # models/cheems-default.gguf (cheems info)
        cfg = CheemsConfig(
            vocab_size=49152, hidden_size=256, intermediate_size=768, num_hidden_layers=10,
            layer_types=["ssd"] * 4 + ["dma"] + ["ssd"] * 4 + ["dma"], num_attention_heads=4,
            num_key_value_heads=2, head_dim=64, keep_window_size=1024, ssm_num_heads=8,
            ssm_head_dim=64, ssm_state_size=64, ssm_n_groups=1, ssm_conv_kernel=4,
            ssm_chunk_size=128, rms_norm_eps=1e-6, is_moe=True, num_experts=1024,
            num_experts_per_tok=8, max_position_embeddings=4096, tie_word_embeddings=True)
    else:  # synth cheems-120m
        cfg = CheemsConfig(
            vocab_size=32768, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
            layer_types=["dma" if i % 4 == 3 else "ssd" for i in range(12)],
            num_attention_heads=12, num_key_value_heads=4, head_dim=64, keep_window_size=2048,
            ssm_num_heads=24, ssm_head_dim=64, ssm_state_size=128, ssm_n_groups=1,
            ssm_conv_kernel=4, max_position_embeddings=2048, tie_word_embeddings=True)
    return CheemsForCausalLM(cfg)


def time_generate(model, n, reps):
    ids = torch.tensor([[5]], device="cuda")
    kw = dict(do_sample=False, pad_token_id=2, eos_token_id=None)
    model.generate(ids, max_new_tokens=8, min_new_tokens=8, **kw)
    runs = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        torch.cuda.synchronize()
        got = out.shape[1] - 1
        runs.append(got / (time.perf_counter() - t0))
    return runs


@torch.no_grad()
def time_steps(model, n, reps):
    def once(k):
        state = model.init_state(1)
        tok = torch.tensor([5], device="cuda")
        for _ in range(k):
            lg, _ = model.step(tok, state)
            tok = lg.argmax(-1)
        torch.cuda.synchronize()
    once(8)
    runs = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        once(n)
        runs.append(n / (time.perf_counter() - t0))
    return runs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.manual_seed(0)
    results = {"torch": torch.__version__, "transformers": transformers.__version__,
               "gpu": torch.cuda.get_device_name(0), "n": a.n, "models": {}}
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {results['gpu']}")
    # The memory-bandwidth ceiling: a device-to-device copy, bytes read plus written.
    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    bw = 10 * 2 * src.numel() / (time.perf_counter() - t0)
    results["copy_bytes_per_s"] = bw
    print(f"device copy: {bw / 1e12:.2f} TB/s (read + write)")
    del src, dst
    torch.cuda.empty_cache()
    cases = [("llama-110m", llama_110m, "generate"), ("mamba2-130m", mamba2_130m, "generate"),
             ("doge-60m", doge_60m, "generate"),
             ("cheems-default", lambda: cheems_model("default"), "step"),
             ("cheems-120m", lambda: cheems_model("120m"), "step")]
    for name, make, how in cases:
        model = None
        try:
            model = make().to(device="cuda", dtype=torch.bfloat16).eval()
            params = sum(p.numel() for p in model.parameters())
            runs = (time_generate if how == "generate" else time_steps)(model, a.n, a.reps)
            r = {"params": params, "how": how, "tok_s_median": statistics.median(runs),
                 "tok_s_best": max(runs), "runs": runs}
            print(f"{name:16} {params / 1e6:7.1f} M  {how:8}  decode {statistics.median(runs):8.1f} tok/s "
                  f"(best {max(runs):.1f})", flush=True)
        except Exception as e:  # report and go on with the other shapes
            r = {"error": f"{type(e).__name__}: {e}"}
            print(f"{name:16} FAILED: {r['error']}", flush=True)
        results["models"][name] = r
        del model
        torch.cuda.empty_cache()
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
