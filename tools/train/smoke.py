#!/usr/bin/env python3
"""Before spending GPU time on a run: check the reference model against its fixture on this machine's
transformers/torch, then time training steps of the real configuration on made-up conversations.

    python3 tools/train/smoke.py --tokenizer TOKDIR [--seconds 40]
"""
import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
from cheems_ref import CheemsForCausalLM  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--seconds", type=float, default=40)
    a = ap.parse_args()
    print("transformers", transformers.__version__, "torch", torch.__version__, flush=True)
    d = ROOT / "tests/fixtures/models/cheems"
    ref = np.load(d / "reference.npz")
    m = CheemsForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    t = torch.tensor(ref["tokens"][None].astype(np.int64))
    with torch.no_grad():
        full = m(t).logits[0].numpy()
    err = float(np.abs(full - ref["logits"]).max())
    print(f"fixture parity: max |dlogit| {err:.3g}", flush=True)
    if err > 1e-3:
        sys.exit("reference model disagrees with its fixture on this machine")
    rng = random.Random(0)
    words = "the a cat dog sun moon water tree happy small big run jump see is was and to of in".split()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "fake.jsonl"
        with data.open("w") as f:
            for i in range(4000):
                q = " ".join(rng.choice(words) for _ in range(rng.randint(4, 20)))
                r = " ".join(rng.choice(words) for _ in range(rng.randint(20, 200)))
                f.write(json.dumps({"id": i, "split": "train" if i % 50 else "heldout", "sample": 0,
                                    "messages": [{"role": "user", "content": q},
                                                 {"role": "assistant", "content": r}]}) + "\n")
        subprocess.run([sys.executable, str(ROOT / "tools/train/train.py"), "--data", str(data), "--tokenizer",
                        a.tokenizer, "--out", str(Path(tmp) / "run"), "--minutes", str(a.seconds / 60)], check=True)
    if torch.cuda.is_available():
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (this process)")


if __name__ == "__main__":
    main()
