#!/usr/bin/env python3
"""Train the default Cheems chat model on the teacher's conversations, and export it as a Hugging
Face-style checkpoint that `cheems quantize` converts.

    python3 tools/train/train.py --data conversations.jsonl --tokenizer TOKDIR --out run/ \
        --minutes 5 [--resume] [--seed 1234]
    python3 tools/train/train.py --export run/ckpt.pt --tokenizer TOKDIR --out model/   # export only
    python3 tools/train/train.py --init model/ --data ft.jsonl --tokenizer TOKDIR --out ft-run/ \
        --minutes 2 --lr 5e-4 --warmup 10                                           # fine-tune

The model is `CheemsForCausalLM` of tests/fixtures/cheems_ref.py, the same PyTorch code the parity
fixtures come from, so training and inference agree by construction (natural per-token CDMoE routing).
The schedule is time-based (warm-up, then cosine to 10% over the run's minutes) so a run of a given
length is reproducible up to GPU nondeterminism; `--resume` continues from run/ckpt.pt (model,
optimizer, step, schedule position) for `--minutes` more at the final learning rate tail.
Loss: next-token cross entropy on the assistant's tokens (the reply and its <|im_end|>) only.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
import cheems_ref  # noqa: E402
from cheems_ref import CheemsConfig, CheemsForCausalLM  # noqa: E402

# ChatML without a default system prompt; the end-of-turn token is <|im_end|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

MODEL_CONFIG = dict(
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=10,
    layer_types=["ssd", "ssd", "ssd", "ssd", "dma", "ssd", "ssd", "ssd", "ssd", "dma"],
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    keep_window_size=1024,
    ssm_num_heads=8,
    ssm_head_dim=64,
    ssm_state_size=64,
    ssm_n_groups=1,
    ssm_conv_kernel=4,
    ssm_chunk_size=128,
    ssm_rope=True,
    is_moe=True,
    num_experts=1024,
    num_experts_per_tok=8,
    rope_theta=10000.0,
    max_position_embeddings=4096,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)

_scan = cheems_ref.ssd_chunk_scan


def _scan_fp32(*args, **kw):
    # The chunked scan's exp/cumsum products must stay in f32 under bf16 autocast.
    with torch.autocast(device_type="cuda", enabled=False):
        return _scan(*args, **kw)


cheems_ref.ssd_chunk_scan = _scan_fp32


def load_tokenizer(tokdir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokdir))


def encode_conversations(tok, convs, max_len: int):
    """Token ids and labels (-100 outside assistant replies) of each conversation, rendered exactly as
    CHAT_TEMPLATE. Every segment of every conversation is encoded in one batch (the tokenizer's
    threads), which matters at a few hundred thousand conversations."""
    segs: list[str] = []
    for messages in convs:
        for m in messages:
            segs += [f"<|im_start|>{m['role']}\n", m["content"].strip() + "<|im_end|>", "\n"]
    enc = tok(segs, add_special_tokens=False)["input_ids"] if segs else []
    out, i = [], 0
    for messages in convs:
        ids: list[int] = []
        labels: list[int] = []
        for m in messages:
            head, body, tail = enc[i], enc[i + 1], enc[i + 2]
            i += 3
            ids += head + body + tail
            if m["role"] == "assistant":
                labels += [-100] * len(head) + body + [-100] * len(tail)
            else:
                labels += [-100] * (len(head) + len(body) + len(tail))
        out.append((ids[:max_len], labels[:max_len]))
    return out


def encode_conversation(tok, messages, max_len: int):
    return encode_conversations(tok, [messages], max_len)[0]


def load_data(path: Path, tok, max_len: int, split: str):
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    convs = [r["messages"] for r in rows if r["split"] == split]
    return [(ids, labels) for ids, labels in encode_conversations(tok, convs, max_len)
            if any(l != -100 for l in labels)]


def batches(data, tokens_per_batch: int, rng: random.Random, pad_id: int):
    """Length-bucketed batches: shuffle, sort within groups of 2048, cut by a padded-token budget."""
    idx = list(range(len(data)))
    rng.shuffle(idx)
    out = []
    for g in range(0, len(idx), 2048):
        group = sorted(idx[g: g + 2048], key=lambda i: len(data[i][0]))
        cur: list[int] = []
        for i in group:
            L = max([len(data[j][0]) for j in cur + [i]])
            if cur and L * (len(cur) + 1) > tokens_per_batch:
                out.append(cur)
                cur = []
            cur.append(i)
        if cur:
            out.append(cur)
    rng.shuffle(out)
    for b in out:
        T = max(len(data[i][0]) for i in b)
        T = (T + 63) // 64 * 64
        x = torch.full((len(b), T), pad_id, dtype=torch.long)
        y = torch.full((len(b), T), -100, dtype=torch.long)
        for r, i in enumerate(b):
            ids, labels = data[i]
            x[r, : len(ids)] = torch.tensor(ids)
            y[r, : len(labels)] = torch.tensor(labels)
        yield x, y


def loss_fn(model, x, y):
    h, _, _ = model.model(x)
    h = h[:, :-1]
    tgt = y[:, 1:]
    sel = tgt != -100
    logits = model.lm_head(h[sel].to(model.lm_head.weight.dtype)).float()
    return F.cross_entropy(logits, tgt[sel]), int(sel.sum())


@torch.no_grad()
def evaluate(model, data, pad_id, device, tokens_per_batch):
    model.eval()
    tot, n = 0.0, 0
    for x, y in batches(data, tokens_per_batch, random.Random(0), pad_id):
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            loss, k = loss_fn(model, x.to(device), y.to(device))
        tot += float(loss) * k
        n += k
    model.train()
    return tot / max(n, 1)


def build_model(tok, seed: int):
    torch.manual_seed(seed)
    cfg = CheemsConfig(
        vocab_size=len(tok),
        bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
        **MODEL_CONFIG,
    )
    return CheemsForCausalLM(cfg)


def export(model, tok, out: Path, dtype=torch.bfloat16, shard="15MB"):
    out.mkdir(parents=True, exist_ok=True)
    m = model.to(dtype)
    m.save_pretrained(str(out), max_shard_size=shard)
    tok.save_pretrained(str(out))
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    gen = {"bos_token_id": m.config.bos_token_id, "eos_token_id": [m.config.eos_token_id, 0],
           "pad_token_id": m.config.pad_token_id}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    # tokenizer_config.json: the eos token is the end of a turn
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["eos_token"] = "<|im_end|>"
    tc["bos_token"] = None
    tc.pop("chat_template", None)
    tc_path.write_text(json.dumps(tc, indent=2) + "\n")


def load_exported(model, folder: Path):
    """The weights of an `export`ed folder (its safetensors shards; the tied head has none)."""
    from safetensors.torch import load_file

    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if m != "lm_head.weight"]
    if missing or unexpected:
        raise SystemExit(f"{folder}: weights do not match the model: missing {missing}, unexpected {unexpected}")


@torch.no_grad()
def sample_replies(model, tok, prompts, device, max_new=80):
    model.eval()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    outs = []
    for p in prompts:
        text = f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n"
        ids = torch.tensor([tok.encode(text, add_special_tokens=False)], device=device)
        logits, state = model.prefill(ids)
        nxt = int(logits[0, -1].argmax())
        gen = []
        for _ in range(max_new):
            if nxt == end:
                break
            gen.append(nxt)
            logits, _ = model.step(torch.tensor([nxt], device=device), state)
            nxt = int(logits[0].argmax())
        outs.append(tok.decode(gen))
    model.train()
    return outs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--tokens-per-batch", type=int, default=65536)
    ap.add_argument("--max-len", type=int, default=768)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--until", type=float, default=0.0,
                    help="a wall-clock deadline (Unix seconds): training stops in time to save before it")
    ap.add_argument("--eval-every", type=float, default=20.0, help="seconds between held-out evaluations")
    ap.add_argument("--export", type=Path, help="export this checkpoint and exit")
    ap.add_argument("--tiny", action="store_true", help="a tiny model for a CPU smoke test")
    ap.add_argument("--init", type=Path, help="start from an exported checkpoint folder (fine-tuning)")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds of learning-rate warm-up")
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = load_tokenizer(a.tokenizer)
    if a.tiny:
        MODEL_CONFIG.update(hidden_size=64, intermediate_size=96, num_hidden_layers=2, layer_types=["ssd", "dma"],
                            ssm_num_heads=2, ssm_head_dim=32, ssm_state_size=16, num_experts=64, head_dim=16)
    model = build_model(tok, a.seed)
    if a.export:
        ck = torch.load(a.export, map_location="cpu")
        model.load_state_dict(ck["model"])
        export(model, tok, a.out)
        print(f"exported {a.export} to {a.out}")
        return
    if a.init:
        load_exported(model, a.init)
        print(f"initialised from {a.init}", flush=True)
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters on {device}", flush=True)
    pad_id = model.config.pad_token_id
    train = load_data(a.data, tok, a.max_len, "train")
    held = load_data(a.data, tok, a.max_len, "heldout")
    n_train_tok = sum(sum(l != -100 for l in y) for _, y in train)
    print(f"data: {len(train)} train conversations ({n_train_tok} reply tokens), {len(held)} held out", flush=True)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in n or "residual" in n or n.endswith((".A", "A_log", ".D", "dt_bias"))
         else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=device == "cuda")
    a.out.mkdir(parents=True, exist_ok=True)
    log_path = a.out / "train_log.jsonl"
    step, spent, epoch = 0, 0.0, 0
    budget = a.minutes * 60
    if a.until:
        budget = max(min(budget, a.until - time.time() - 30.0), 10.0)
        print(f"training for {budget:.0f}s (deadline)", flush=True)
    sched_total = budget
    if a.resume and (a.out / "ckpt.pt").exists():
        ck = torch.load(a.out / "ckpt.pt", map_location=device)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, spent, epoch = ck["step"], ck["spent"], ck["epoch"]
        sched_total = ck["sched_total"] + budget
        print(f"resumed at step {step} ({spent:.0f}s trained)", flush=True)

    def lr_at(t):
        warm = a.warmup
        if t < warm and step < 200:
            return a.lr * max(t / warm, 0.02)
        frac = min(t / sched_total, 1.0)
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    t_start = time.time()
    rng = random.Random(a.seed + epoch)
    logf = log_path.open("a")
    done = False
    last_eval = time.time()
    seen = 0
    best = {"loss": float("inf"), "step": 0, "state": None}
    while not done:
        for x, y in batches(train, a.tokens_per_batch, rng, pad_id):
            el = time.time() - t_start
            if el > budget:
                done = True
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(spent + el)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
                loss, k = loss_fn(model, x, y)
            loss_v = loss.detach()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            seen += int(x.numel())
            if step % 25 == 0 or step == 1:
                rec = {"step": step, "time": round(spent + el, 1), "epoch": epoch, "loss": round(float(loss_v), 4),
                       "lr": opt.param_groups[0]["lr"], "grad_norm": round(float(gn), 3), "tokens": k,
                       "tok_s": round(seen / max(time.time() - t_start, 1e-9))}
                if time.time() - last_eval > a.eval_every and held:
                    hl = evaluate(model, held, pad_id, device, a.tokens_per_batch)
                    rec["heldout_loss"] = round(hl, 4)
                    last_eval = time.time()
                    if hl < best["loss"]:
                        best.update(loss=hl, step=step, state={k: v.detach().clone() for k, v in
                                                                model.state_dict().items()})
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                print(json.dumps(rec), flush=True)
        else:
            epoch += 1
            rng = random.Random(a.seed + epoch)
    spent += time.time() - t_start
    hl = evaluate(model, held, pad_id, device, a.tokens_per_batch) if held else float("nan")
    rec = {"step": step, "time": round(spent, 1), "epoch": epoch, "heldout_loss": round(hl, 4), "final": True}
    logf.write(json.dumps(rec) + "\n")
    logf.close()
    print(json.dumps(rec), flush=True)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "spent": spent,
                "epoch": epoch, "sched_total": sched_total}, a.out / "ckpt.pt")
    # the exported model is the one with the lowest held-out loss (early stopping)
    if best["state"] is None or hl <= best["loss"]:
        best.update(loss=hl, step=step, state=model.state_dict())
    torch.save({"model": best["state"], "step": best["step"], "heldout_loss": best["loss"]}, a.out / "best.pt")
    print(json.dumps({"best_step": best["step"], "best_heldout_loss": round(best["loss"], 4)}), flush=True)
    model.load_state_dict(best["state"])
    for p, r in zip(["Hi!", "What is the capital of France?", "Write a short poem about the sea."],
                    sample_replies(model, tok, ["Hi!", "What is the capital of France?",
                                                "Write a short poem about the sea."], device)):
        print(f"> {p}\n{r}\n", flush=True)


if __name__ == "__main__":
    main()
