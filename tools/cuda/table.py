#!/usr/bin/env python3
"""The README's CUDA table from a device run: `cheems bench --json` lines (bench.jsonl), the
transformers baseline (hf.json) and `cheems info --tensors` of each benchmarked file.

Bytes per decoded token are counted on the device copy of the weights: every matrix once (K-quant
tensors as the Q8_0 they are uploaded as), the embedding table only when it is also the output
head, the experts' rows a token's routing chooses (k of E), plus the SSD states read and written
(f32). The bandwidth limit is the measured device copy rate (hf.json) over those bytes.

usage: python3 tools/cuda/table.py bench.jsonl hf.json INFO_DIR
       (INFO_DIR holds info-<shape>-<type>.txt from `cheems info FILE --tensors`)
"""
import json
import re
import sys
from pathlib import Path

KQ = {"Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K"}


def bytes_per_token(info: str) -> int:
    meta = dict(re.findall(r"^\s+(\S+)\s+(\S+)$", info, re.M))
    rows = re.findall(r"^\s+(\S+)\s+(\S+)\s+\[([\d, ]+)\]\s+(\d+)\s+\d+$", info, re.M)
    names = {r[0] for r in rows}
    tied = "output.weight" not in names
    experts = int(meta.get("expert_count", 0) or 0)
    used = int(meta.get("expert_used_count", 0) or 0)
    total = 0
    for name, ty, dims, nbytes in rows:
        n = 1
        for d in dims.split(","):
            n *= int(d)
        b = n // 32 * 34 if ty in KQ else int(nbytes)
        if name == "token_embd.weight" and not tied:
            continue
        if "experts" in name or "down_embed" in name or "up_embed" in name:
            b = b * used // max(experts, 1)
        total += b
    # SSD states, f32, read and written: heads x head_dim x d_state per SSD layer.
    if "ssm.state_size" in meta:
        n_ssd = info.count("ssm_in.weight")
        d_inner, d_state = int(meta["ssm.inner_size"]), int(meta["ssm.state_size"])
        total += n_ssd * d_inner * d_state * 4 * 2
    return total


def main():
    bench = [json.loads(l) for l in Path(sys.argv[1]).read_text().splitlines() if l.strip()]
    hf = json.loads(Path(sys.argv[2]).read_text())
    info_dir = Path(sys.argv[3])
    bw = hf["copy_bytes_per_s"]
    print(f"GPU: {hf['gpu']}; device copy {bw / 1e12:.2f} TB/s; torch {hf['torch']}, "
          f"transformers {hf['transformers']}\n")
    print("| model | type | bytes/token | pp512 tok/s | tg128 tok/s | transformers bf16 tg tok/s | x transformers | bandwidth limit tok/s | fraction of limit |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for b in bench:
        f = Path(b["model"]).name
        m = re.match(r"(.+)-(f16|q8_0|q4_0)\.gguf$", f)
        shape, ty = (m.group(1), m.group(2)) if m else ("cheems-default", "q8_0")
        info = (info_dir / f"info-{shape}-{ty}.txt").read_text()
        bpt = bytes_per_token(info)
        limit = bw / bpt
        h = hf["models"].get(shape, {})
        hf_tg = h.get("tok_s_median")
        x = f"{b['tg_tok_s'] / hf_tg:.1f}x" if hf_tg else "–"
        print(f"| {shape} | {ty.upper()} | {bpt / 2**20:.1f} MiB | {b['pp_tok_s']:.0f} | {b['tg_tok_s']:.0f} | "
              f"{hf_tg:.0f} | {x} | {limit:.0f} | {b['tg_tok_s'] / limit:.2f} |" if hf_tg else
              f"| {shape} | {ty.upper()} | {bpt / 2**20:.1f} MiB | {b['pp_tok_s']:.0f} | {b['tg_tok_s']:.0f} | – | – | {limit:.0f} | {b['tg_tok_s'] / limit:.2f} |")


if __name__ == "__main__":
    main()
