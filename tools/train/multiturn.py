#!/usr/bin/env python3
"""Multi-turn conversations for fine-tuning, made from the teacher's single-turn ones.

    python3 tools/train/multiturn.py --data conv.jsonl --out ft.jsonl [--singles 16000] [--multi 12000] [--seed 5]

The teacher answered each prompt on its own (plus generic follow-ups such as "Tell me more."), so a
student trained on that alone never sees a second question on another subject, and answers it as it
answered the first (v3: asked "What color is the sky?" after "What is the capital of France?", it
said Paris again). Here 2 or 3 conversations of the same split are joined one after the other: each
answer is still the teacher's own answer to its question, and the loss falls on every assistant turn,
so the student learns to answer the last question asked. Mixed with single-turn conversations (the
existing follow-up conversations included) so that one-question chats stay as they were.
Splits are kept: train rows are made only from train conversations, held-out rows only from held-out
ones.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--singles", type=int, default=16000, help="single-question training conversations")
    ap.add_argument("--multi", type=int, default=12000, help="joined training conversations")
    ap.add_argument("--heldout-multi", type=int, default=200)
    ap.add_argument("--seed", type=int, default=5)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    rows = [json.loads(line) for line in a.data.read_text().splitlines() if line.strip()]
    out = []
    for split, n_single, n_multi in (("train", a.singles, a.multi), ("heldout", None, a.heldout_multi)):
        pool = [r for r in rows if r["split"] == split]
        one = [r for r in pool if len(r["messages"]) == 2]
        follow = [r for r in pool if len(r["messages"]) > 2]
        singles = pool if n_single is None else rng.sample(one, min(n_single, len(one))) + follow
        out += [{"split": split, "messages": r["messages"]} for r in singles]
        for _ in range(n_multi):
            k = 2 if rng.random() < 0.6 else 3
            parts = rng.sample(one, k)
            out.append({"split": split, "messages": [m for r in parts for m in r["messages"]]})
    rng.shuffle(out)
    with a.out.open("w") as f:
        for r in out:
            f.write(json.dumps(r) + "\n")
    counts = {s: sum(r["split"] == s for r in out) for s in ("train", "heldout")}
    print(f"{len(out)} conversations: {counts}")


if __name__ == "__main__":
    main()
