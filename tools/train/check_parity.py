#!/usr/bin/env python3
"""Compare cheems' logits for a converted checkpoint with the PyTorch reference (cheems_ref.py).

    python3 tools/train/check_parity.py MODEL_DIR FILE.gguf [--cheems target/release/cheems] [--tol 1e-4]

Runs `cheems logits` on a rendered chat prompt and prints max |Δlogit| / max |logit|; exits non-zero
when it is above the tolerance (scaled by the largest logit)."""
import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
import cheems_ref  # noqa: E402
from cheems_ref import CheemsForCausalLM  # noqa: E402

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--cheems", default=str(ROOT / "target" / "release" / "cheems"))
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    cheems_ref.register_auto_classes()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(a.model_dir))
    ids = tok.encode(PROMPT, add_special_tokens=False)
    m = CheemsForCausalLM.from_pretrained(str(a.model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = m(torch.tensor([ids])).logits[0].numpy()
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "l.npy"
        subprocess.run([a.cheems, "logits", str(a.gguf), "--tokens", ",".join(map(str, ids)), "--out", str(out)],
                       check=True, capture_output=True)
        ours = np.load(out)
    err = float(np.abs(ours - ref).max())
    scale = float(np.abs(ref).max())
    print(f"{len(ids)} tokens: max |dlogit| {err:.3g}, max |logit| {scale:.3g}, ratio {err / scale:.3g}")
    sys.exit(0 if err <= a.tol * max(scale, 1.0) else 1)


if __name__ == "__main__":
    main()
