#!/usr/bin/env python3
"""Loss curve of a training run: python3 tools/train/plot_loss.py RUN/train_log.jsonl OUT.png"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
tr = [(r["step"], r["loss"]) for r in rows if "loss" in r]
he = [(r["step"], r["heldout_loss"]) for r in rows if "heldout_loss" in r]
best = min(he, key=lambda x: x[1])
fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
ax.plot(*zip(*tr), label="train (reply tokens)", lw=1.5)
ax.plot(*zip(*he), "o-", label="held-out conversations", lw=1.5, ms=3)
ax.axvline(best[0], color="gray", ls="--", lw=1)
ax.annotate(f"exported: step {best[0]}, held-out loss {best[1]:.2f}", (best[0], best[1]),
            xytext=(best[0] * 0.45, best[1] + 2.5), arrowprops=dict(arrowstyle="->", color="gray"), fontsize=9)
ax.set_xlabel("step (about 45k padded tokens each)")
ax.set_ylabel("cross entropy (nats/token)")
ax.set_title("cheems-default: a 27.7M Cheems on SmolLM2 conversations")
ax.set_ylim(0, 11)
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(sys.argv[2])
print(f"wrote {sys.argv[2]}")
