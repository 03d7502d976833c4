#!/usr/bin/env python3
"""Summarises the per-block phase marks of the fused Mamba-2 decode kernel (`ssd_decode`).

    CHEEMS_CUDA_FUSED_TIMES=2 CHEEMS_CUDA_REPLAY=200 CHEEMS_CUDA_PHASES_OUT=ph.bin \\
        cheems bench model.gguf --device cuda -p 0 -n 16 -r 1
    python3 tools/cuda/phases.py ph.bin

The file holds the number of barriers and of blocks, then, for the last replay, u64 nanoseconds
of the global timer [barrier][block][8]: input ready, work done, arrival at the barrier,
departure from it, and thread 0's points 4-7 (see phase_mark in kernels.cu; 0 where a stage has
no such mark). Stage k runs from barrier k-1 to barrier k: 0 is the embedding, then per layer
in_proj, SSD and out_proj, then the head. All times are in microseconds, means over the layers."""
import sys

import numpy as np

path = sys.argv[1]
raw = np.fromfile(path, dtype="<u8")
n_bar, grid = int(raw[0]), int(raw[1])
t = raw[2:].astype(np.float64).reshape(n_bar, grid, 8) / 1e3
layers = (n_bar - 2) // 3
print(f"{n_bar} barriers, {grid} blocks, {layers} layers; step {t[-1, :, 3].max() - t[0, :, 3].min():.1f} us "
      f"from the embedding barrier to the head's end")
kinds = {"in_proj": [1 + 3 * l for l in range(layers)], "ssd": [2 + 3 * l for l in range(layers)],
         "out_proj": [3 + 3 * l for l in range(layers)], "head": [n_bar - 1]}
for name, ks in kinds.items():
    acc = {}

    def add(key, v):
        acc.setdefault(key, []).append(v)

    for k in ks:
        prev_dep = t[k - 1, :, 3]
        rel = prev_dep.min()
        m0, m1, arr, dep, f4, f5, f6, f7 = (t[k, :, j] for j in range(8))
        add("stage (first departure to first departure)", dep.min() - rel if name != "head" else arr.max() - rel)
        add("departure spread before it (mean, max over blocks)", (prev_dep.mean() - rel, prev_dep.max() - rel))
        if m0.min() > 0:
            add("input ready after departure (mean, max)", ((m0 - prev_dep).mean(), (m0 - prev_dep).max()))
            add("work after input (mean, max)", ((m1 - m0).mean(), (m1 - m0).max()))
        else:
            add("work after departure (mean, max)", ((m1 - prev_dep).mean(), (m1 - prev_dep).max()))
        add("arrival after work (mean, max)", ((arr - m1).mean(), (arr - m1).max()))
        # Thread 0's own points, after the departure, over the blocks that reached them (the
        # SSD step's idle blocks have none).
        for j, f in ((4, f4), (5, f5), (6, f6), (7, f7)):
            got = f > 0
            if got.any():
                dt = f[got] - prev_dep[got]
                add(f"thread 0 at point {j} after departure (mean, max)", (dt.mean(), dt.max()))
        add("last arrival after first departure", arr.max() - rel)
        add("arrival spread (mean, max after first arrival)", (arr.mean() - arr.min(), arr.max() - arr.min()))
        if name != "head":
            add("barrier: first departure after last arrival", dep.min() - arr.max())
        add("blocks among the 8 last to arrive (ids)", tuple(np.argsort(arr)[-8:]))
    print(f"\n== {name} (x{len(ks)})")
    for key, vals in acc.items():
        if key.startswith("blocks"):
            ids = np.concatenate([np.array(v) for v in vals])
            common = np.bincount(ids.astype(int), minlength=grid).argsort()[-8:][::-1]
            print(f"  {key}: most often {[int(c) for c in common]}")
            continue
        v = np.array(vals, dtype=float)
        if v.ndim == 1:
            print(f"  {key}: {v.mean():.2f}")
        else:
            print(f"  {key}: {v[:, 0].mean():.2f}, {v[:, 1].mean():.2f}")
