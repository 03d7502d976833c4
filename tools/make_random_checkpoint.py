#!/usr/bin/env python3
"""Write a random-weight Hugging Face checkpoint folder of a benchmark shape (for measurements, not committed).

    python tools/make_random_checkpoint.py --shape mamba2-130m --out /tmp/mamba2-130m [--dtype f32|bf16]
        [--shard-mb 0] [--seed 0]

Shapes (/work/shared/bench/targets.md):
  mamba2-130m    Mamba2ForCausalLM: d_model 768, 24 layers, d_state 128, headdim 64, expand 2, n_groups 1,
                 conv 4, vocab 50288, tied embeddings
  llama-110m     LlamaForCausalLM: hidden 768, 12 layers, 12 heads, 12 kv heads, intermediate 2048,
                 vocab 32768, untied
  doge-60m       DogeForCausalLM: hidden 512, intermediate 1024, 16 layers, 4 heads, 2 kv heads, head_dim 128,
                 vocab 32768, tied
  doge-120m-moe  as doge-60m with is_moe, 4096 experts, 32 per token

Needs only numpy (no torch, no safetensors package: the safetensors container is written directly). Tensors
are generated and written one chunk at a time, so memory stays small. Values are scaled like the test fixtures
(std 1/sqrt(fan_in), norm weights near 1, Mamba-2 A_log/dt_bias/D like its init, Doge A < 0) so activations
stay finite; the numbers mean nothing. The tokenizer files are copied from the test fixtures
(tests/fixtures/models/{mamba2,llama,doge}); their vocabulary (520 ids) is smaller than the model's, which is
fine for speed and memory measurements. Without those fixtures a byte-level tokenizer (256 bytes + specials, no
merges) is written instead.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "models"
CHUNK_ELEMS = 4 * 1024 * 1024  # generate at most 16 MiB of f32 at a time


# --------------------------------------------------------------------------------------------------
# Tensor specs: (name, shape, init) with init = (kind, *args)
# --------------------------------------------------------------------------------------------------
def normal(std):
    return ("normal", std)


def uniform(lo, hi):
    return ("uniform", lo, hi)


def fan_in(shape):
    return normal(1.0 / math.sqrt(shape[-1]))


def mamba2_130m():
    H, L, N, P, expand, G, W, V = 768, 24, 128, 64, 2, 1, 4, 50288
    d_inner = expand * H
    nh = d_inner // P
    conv_dim = d_inner + 2 * G * N
    specs = [("backbone.embeddings.weight", (V, H), normal(3.0 / math.sqrt(H)))]
    for i in range(L):
        p = f"backbone.layers.{i}."
        specs += [
            (p + "norm.weight", (H,), uniform(0.8, 1.2)),
            (p + "mixer.in_proj.weight", (2 * d_inner + 2 * G * N + nh, H), normal(1.0 / math.sqrt(H))),
            (p + "mixer.conv1d.weight", (conv_dim, 1, W), normal(0.5)),
            (p + "mixer.conv1d.bias", (conv_dim,), normal(0.1)),
            (p + "mixer.dt_bias", (nh,), ("dt_bias", 1e-3, 0.1)),
            (p + "mixer.A_log", (nh,), ("log_uniform_A", 1.0, 16.0)),
            (p + "mixer.D", (nh,), uniform(0.5, 1.5)),
            (p + "mixer.norm.weight", (d_inner,), uniform(0.8, 1.2)),
            (p + "mixer.out_proj.weight", (H, d_inner), normal(1.0 / math.sqrt(d_inner))),
        ]
    specs.append(("backbone.norm_f.weight", (H,), uniform(0.8, 1.2)))
    config = {
        "architectures": ["Mamba2ForCausalLM"],
        "model_type": "mamba2",
        "vocab_size": V,
        "hidden_size": H,
        "num_hidden_layers": L,
        "state_size": N,
        "head_dim": P,
        "num_heads": nh,
        "expand": expand,
        "n_groups": G,
        "conv_kernel": W,
        "chunk_size": 256,
        "layer_norm_epsilon": 1e-5,
        "residual_in_fp32": True,
        "use_bias": False,
        "use_conv_bias": True,
        "hidden_act": "silu",
        "time_step_rank": math.ceil(H / 16),
        "time_step_min": 0.001,
        "time_step_max": 0.1,
        "time_step_floor": 1e-4,
        "rescale_prenorm_residual": False,
        "initializer_range": 0.1,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "pad_token_id": 1,
    }
    return specs, config, "mamba2"


def llama_110m():
    H, L, Hq, Hkv, I, V = 768, 12, 12, 12, 2048, 32768
    D = H // Hq
    specs = [("model.embed_tokens.weight", (V, H), normal(3.0 / math.sqrt(H)))]
    for i in range(L):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (H,), uniform(0.8, 1.2)),
            (p + "self_attn.q_proj.weight", (Hq * D, H), None),
            (p + "self_attn.k_proj.weight", (Hkv * D, H), None),
            (p + "self_attn.v_proj.weight", (Hkv * D, H), None),
            (p + "self_attn.o_proj.weight", (H, Hq * D), None),
            (p + "post_attention_layernorm.weight", (H,), uniform(0.8, 1.2)),
            (p + "mlp.gate_proj.weight", (I, H), None),
            (p + "mlp.up_proj.weight", (I, H), None),
            (p + "mlp.down_proj.weight", (H, I), None),
        ]
    specs += [("model.norm.weight", (H,), uniform(0.8, 1.2)),
              ("lm_head.weight", (V, H), normal(3.0 / math.sqrt(H)))]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": V,
        "hidden_size": H,
        "intermediate_size": I,
        "num_hidden_layers": L,
        "num_attention_heads": Hq,
        "num_key_value_heads": Hkv,
        "head_dim": D,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 2,
    }
    return specs, config, "llama"


def doge(moe: bool):
    H, I, L, Hq, Hkv, D, V = 512, 1024, 16, 4, 2, 128, 32768
    E, K = 4096, 32
    nk = math.isqrt(E)
    specs = [("model.embed_tokens.weight", (V, H), normal(3.0 / math.sqrt(H)))]
    for i in range(L):
        p = f"model.layers.{i}."
        specs += [
            (p + "input_layernorm.weight", (H,), uniform(0.8, 1.2)),
            (p + "self_attn.q_proj.weight", (Hq * D, H), None),
            (p + "self_attn.k_proj.weight", (Hkv * D, H), None),
            (p + "self_attn.v_proj.weight", (Hkv * D, H), None),
            (p + "self_attn.q_norm.weight", (D,), uniform(0.8, 1.2)),
            (p + "self_attn.k_norm.weight", (D,), uniform(0.8, 1.2)),
            (p + "self_attn.dt_proj.weight", (Hkv, Hkv * D), None),
            (p + "self_attn.A", (Hkv,), uniform(-2.0, -0.5)),
            (p + "self_attn.o_proj.weight", (H, Hq * D), None),
            (p + "input_residual", (H,), uniform(0.8, 1.2)),
            (p + "post_attention_layernorm.weight", (H,), uniform(0.8, 1.2)),
            (p + "mlp.gate_proj.weight", (I, H), None),
            (p + "mlp.up_proj.weight", (I, H), None),
            (p + "mlp.down_proj.weight", (H, I), None),
        ]
        if moe:
            specs += [
                (p + "mlp.router_gate.weight", (2 * nk, H), None),
                (p + "mlp.down_embed.weight", (E, H), normal(1.0 / math.sqrt(H))),
                (p + "mlp.up_embed.weight", (E, H), normal(1.0 / math.sqrt(K))),
            ]
        specs.append((p + "post_attention_residual", (H,), uniform(0.8, 1.2)))
    specs.append(("model.norm.weight", (H,), uniform(0.8, 1.2)))
    config = {
        "architectures": ["DogeForCausalLM"],
        "model_type": "doge",
        "vocab_size": V,
        "hidden_size": H,
        "intermediate_size": I,
        "num_hidden_layers": L,
        "num_attention_heads": Hq,
        "num_key_value_heads": Hkv,
        "hidden_act": "silu",
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "attention_bias": False,
        "mlp_bias": False,
        "max_position_embeddings": 2048,
        "rope_parameters": {"rope_type": "dynamic", "factor": 4.0, "original_max_position_embeddings": 2048,
                            "rope_theta": 10000.0},
        "rms_norm_eps": 1e-6,
        "sliding_window": None,
        "keep_window_size": 2048,
        "is_moe": moe,
        "num_experts": E if moe else 16384,
        "num_experts_per_tok": K if moe else 64,
        "norm_topk_prob": False,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.001,
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 2,
    }
    return specs, config, "doge"


SHAPES = {
    "mamba2-130m": mamba2_130m,
    "llama-110m": llama_110m,
    "doge-60m": lambda: doge(False),
    "doge-120m-moe": lambda: doge(True),
}


# --------------------------------------------------------------------------------------------------
# Value generation and the safetensors container
# --------------------------------------------------------------------------------------------------
def gen_chunk(rng: np.random.Generator, init, shape, n: int) -> np.ndarray:
    init = init or fan_in(shape)
    kind = init[0]
    if kind == "normal":
        return rng.standard_normal(n, dtype=np.float32) * np.float32(init[1])
    if kind == "uniform":
        return rng.uniform(init[1], init[2], n).astype(np.float32)
    if kind == "log_uniform_A":
        return np.log(rng.uniform(init[1], init[2], n)).astype(np.float32)
    if kind == "dt_bias":
        dt = np.exp(rng.uniform(math.log(init[1]), math.log(init[2]), n))
        return (dt + np.log(-np.expm1(-dt))).astype(np.float32)  # inverse softplus
    raise ValueError(kind)


def to_bf16_bytes(x: np.ndarray) -> bytes:
    u = x.astype(np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)  # round to nearest even
    return rounded.astype("<u2").tobytes()


def write_safetensors(path: Path, specs, dtype: str, seed: int, first_index: int):
    esize = 4 if dtype == "F32" else 2
    header, offset = {}, 0
    for name, shape, _ in specs:
        nbytes = int(np.prod(shape)) * esize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for k, (name, shape, init) in enumerate(specs):
            rng = np.random.default_rng([seed, first_index + k])
            total = int(np.prod(shape))
            done = 0
            while done < total:
                n = min(CHUNK_ELEMS, total - done)
                x = gen_chunk(rng, init, shape, n)
                f.write(x.astype("<f4").tobytes() if dtype == "F32" else to_bf16_bytes(x))
                done += n
    return offset


BYTE_SPECIALS = {
    "mamba2": ["<|endoftext|>", "<|padding|>"],
    "llama": ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|im_start|>", "<|im_end|>"],
    "doge": ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>",
             "<|end_header_id|>"],
}


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def write_byte_level_tokenizer(out: Path, family: str):
    specials = BYTE_SPECIALS[family]
    vocab = {t: i for i, t in enumerate(specials)}
    for ch in bytes_to_unicode().values():
        vocab[ch] = len(vocab)
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for i, t in enumerate(specials)],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }
    (out / "tokenizer.json").write_text(json.dumps(tok, indent=2, ensure_ascii=False) + "\n")
    bos = specials[0]
    eos = specials[0] if family == "mamba2" else specials[1]
    cfg = {"bos_token": bos, "eos_token": eos, "pad_token": specials[1] if family == "mamba2" else specials[2],
           "unk_token": None, "model_max_length": 2048, "tokenizer_class": "PreTrainedTokenizerFast",
           "clean_up_tokenization_spaces": False}
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", required=True, choices=sorted(SHAPES))
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--shard-mb", type=int, default=0, help="split into shards of at most this many MB (0: one file)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    specs, config, family = SHAPES[args.shape]()
    dtype = "F32" if args.dtype == "f32" else "BF16"
    esize = 4 if dtype == "F32" else 2
    config["dtype"] = "float32" if dtype == "F32" else "bfloat16"
    config["torch_dtype"] = config["dtype"]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    # plan shards
    shards, cur, cur_bytes = [], [], 0
    limit = args.shard_mb * 1_000_000
    for spec in specs:
        nb = int(np.prod(spec[1])) * esize
        if limit and cur and cur_bytes + nb > limit:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(spec)
        cur_bytes += nb
    shards.append(cur)

    total, index = 0, 0
    weight_map = {}
    n = len(shards)
    for k, shard in enumerate(shards):
        fname = "model.safetensors" if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        total += write_safetensors(out / fname, shard, dtype, args.seed, index)
        index += len(shard)
        for name, _, _ in shard:
            weight_map[name] = fname
        print(f"wrote {out / fname}", file=sys.stderr)
    if n > 1:
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")

    src = FIXTURES / family
    if (src / "tokenizer.json").exists() and (src / "tokenizer_config.json").exists():
        shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
        shutil.copy(src / "tokenizer_config.json", out / "tokenizer_config.json")
    else:
        write_byte_level_tokenizer(out, family)
    # special token ids as the tokenizer defines them
    tok = json.loads((out / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in tok["added_tokens"]}
    tcfg = json.loads((out / "tokenizer_config.json").read_text())
    for key in ("bos", "eos", "pad"):
        if tcfg.get(f"{key}_token") in ids:
            config[f"{key}_token_id"] = ids[tcfg[f"{key}_token"]]
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
           "pad_token_id": config["pad_token_id"]}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    nparams = sum(int(np.prod(s[1])) for s in specs)
    print(f"{args.shape}: {nparams / 1e6:.1f}M parameters, {total / 1e6:.1f} MB of {args.dtype} in {n} file(s) "
          f"-> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
