#!/usr/bin/env python3
"""Reference logits of the trained default model from PyTorch (tests/fixtures/cheems_ref.py), for the
Rust test tests/default_model.rs that runs the shipped file.

    python3 tools/train/make_reference.py CHECKPOINT_DIR tests/fixtures/default_model/reference.npz

Stores, for a fixed chat prompt: tokens [T], the logits of the first 4096 vocabulary entries at every
position [T, 4096] (f32), and the full-vocabulary argmax at every position [T] (the full [T, 49152]
would be several MB)."""
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
import cheems_ref  # noqa: E402
from cheems_ref import CheemsForCausalLM  # noqa: E402

PROMPT = ("<|im_start|>user\nWhat do plants need to grow?<|im_end|>\n<|im_start|>assistant\n"
          "Plants need sunlight, water and air.<|im_end|>\n<|im_start|>user\nThank you!<|im_end|>\n"
          "<|im_start|>assistant\n")


def main():
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    cheems_ref.register_auto_classes()
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(src / "tokenizer.json")).encode(PROMPT, add_special_tokens=False).ids
    m = CheemsForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
    with torch.no_grad():
        full = m(torch.tensor([ids])).logits[0].numpy()
        tbt, _ = m.forward_token_by_token(torch.tensor([ids]))
    tbt = tbt[0].numpy()
    print(f"{len(ids)} tokens; full vs token-by-token max |d| {np.abs(full - tbt).max():.3g}")
    np.savez(out, tokens=np.array(ids, dtype=np.int32), logits_head=tbt[:, :4096].astype(np.float32),
                        argmax=tbt.argmax(-1).astype(np.int32), max_abs=np.abs(tbt).max(-1).astype(np.float32))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
