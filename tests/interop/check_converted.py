#!/usr/bin/env python3
"""Independent check of `cheems quantize` with the `gguf` Python package (llama.cpp's own).

For every fixture checkpoint and every weight type, convert with the cheems binary, then read the
file with `gguf.GGUFReader` and check, without using any cheems code:
  * tensor names: for `llama` and `mamba2` they are what llama.cpp's converter produces, found
    with gguf-py's own `TensorNameMap` (plus the converter's `dt_bias` rename); for `doge` and
    `cheems`, the names of formats/FORMAT.md;
  * values: gguf-py's dequantizer applied to the stored bytes gives the checkpoint values (read with
    the `safetensors` package), transformed as llama.cpp does (Q/K row permutation, -exp(A_log),
    squeezed conv, expert records), exactly at F32/F16/BF16 and within the type's bound otherwise;
  * bytes: where gguf-py has a quantizer (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, F16, BF16), the stored
    bytes are exactly gguf-py's quantization of the checkpoint values;
  * metadata: the hyper-parameter keys llama.cpp reads equal the config.json values.

Usage: check_converted.py CHEEMS_BINARY   (needs: gguf, numpy, safetensors)
Prints one line per case and a closing 'N passed, M failed'.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "models"
Q = gguf.GGMLQuantizationType
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k"]
HAS_QUANTIZER = {Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.F16, Q.BF16, Q.F32}
# Worst error relative to the largest magnitude of a row (see tests/convert.rs).
BOUND = {Q.F32: 0.0, Q.F16: 4e-3, Q.BF16: 4e-3, Q.Q8_0: 1e-2, Q.Q6_K: 3e-2,
         Q.Q5_0: 7e-2, Q.Q5_1: 7e-2, Q.Q5_K: 7e-2, Q.Q4_0: 0.15, Q.Q4_1: 0.15, Q.Q4_K: 0.15}


def load_checkpoint(d: Path) -> dict:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update({k: v.astype(np.float32) for k, v in load_file(str(f)).items()})
    return out


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
             .swapaxes(1, 2).reshape(w.shape))


def expected_llama(cfg: dict, ck: dict) -> dict:
    """{gguf name: expected float32 array in numpy (outermost-first) order}."""
    n_layer = cfg["num_hidden_layers"]
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    out = {}
    for name, w in ck.items():
        if name == "lm_head.weight" and cfg.get("tie_word_embeddings", False):
            continue
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new is not None, f"gguf-py cannot map {name}"
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            w = permute(w, cfg["num_attention_heads"])
        elif name.endswith(("k_proj.weight", "k_proj.bias")):
            w = permute(w, cfg.get("num_key_value_heads", cfg["num_attention_heads"]))
        out[new] = w
    return out


def expected_mamba2(cfg: dict, ck: dict) -> dict:
    n_layer = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MAMBA2, n_layer)
    d_model = cfg.get("hidden_size", cfg.get("d_model"))
    ssm = cfg.get("ssm_cfg", {})
    n_group = cfg.get("n_groups", ssm.get("ngroups", 1))
    d_inner = cfg.get("expand", ssm.get("expand", 2)) * d_model
    tied = cfg.get("tie_embeddings", cfg.get("tie_word_embeddings", False)) or "lm_head.weight" not in ck
    out = {}
    for name, w in ck.items():
        if name == "lm_head.weight" and tied:
            continue
        # As llama.cpp's Mamba2Model.modify_tensors.
        mapped = name.rpartition(".dt_bias")[0] + ".dt_proj.bias" if name.endswith(".dt_bias") else name
        new = tmap.get_name(mapped, try_suffixes=(".weight", ".bias"))
        assert new is not None, f"gguf-py cannot map {name}"
        if new.endswith("ssm_conv1d.weight"):
            w = w.squeeze()
        elif new.endswith(("ssm_a", "ssm_d")):
            w = w.reshape(*w.shape, 1)
        elif new.endswith("ssm_norm.weight"):
            w = w.reshape(n_group, d_inner // n_group)
            if n_group == 1:
                w = w.reshape(d_inner)
        if name.endswith(".A_log"):
            w = -np.exp(w.astype(np.float64)).astype(np.float32)
        out[new] = w
    return out


DOGE_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "input_residual": "attn_residual.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight", "post_attention_residual": "ffn_residual.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
    "self_attn.dt_proj.weight": "attn_dt.weight", "self_attn.dt_proj.bias": "attn_dt.bias",
    "self_attn.A": "attn_a",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "mlp.router_gate.weight": "ffn_gate_inp.weight",
}


def expected_doge(cfg: dict, ck: dict) -> dict:
    """formats/FORMAT.md, `doge` and `cheems` (SSD parts as `mamba2`)."""
    out = {"token_embd.weight": ck["model.embed_tokens.weight"], "output_norm.weight": ck["model.norm.weight"]}
    if not cfg.get("tie_word_embeddings", cfg.get("model_type") == "cheems"):
        out["output.weight"] = ck["lm_head.weight"]
    n_group = cfg.get("ssm_n_groups", 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for hf, g in DOGE_NAMES.items():
            if p + hf in ck:
                out[f"blk.{i}.{g}"] = ck[p + hf]
        if p + "mlp.down_embed.weight" in ck:
            d, u = ck[p + "mlp.down_embed.weight"], ck[p + "mlp.up_embed.weight"]
            out[f"blk.{i}.ffn_experts.weight"] = np.stack([d, u], axis=1)  # [E, 2, H]
        if p + "mixer.in_proj.weight" in ck:
            m = p + "mixer."
            d_inner = ck[m + "norm.weight"].shape[0]
            norm = ck[m + "norm.weight"].reshape(n_group, d_inner // n_group) if n_group > 1 else ck[m + "norm.weight"]
            out.update({
                f"blk.{i}.ssm_in.weight": ck[m + "in_proj.weight"],
                f"blk.{i}.ssm_conv1d.weight": ck[m + "conv1d.weight"].squeeze(),
                f"blk.{i}.ssm_conv1d.bias": ck[m + "conv1d.bias"],
                f"blk.{i}.ssm_dt.bias": ck[m + "dt_bias"],
                f"blk.{i}.ssm_a": -np.exp(ck[m + "A_log"].astype(np.float64)).astype(np.float32).reshape(-1, 1),
                f"blk.{i}.ssm_d": ck[m + "D"].reshape(-1, 1),
                f"blk.{i}.ssm_norm.weight": norm,
                f"blk.{i}.ssm_out.weight": ck[m + "out_proj.weight"],
            })
    return out


HPARAMS = {
    "llama": [("embedding_length", "hidden_size"), ("block_count", "num_hidden_layers"),
              ("feed_forward_length", "intermediate_size"), ("attention.head_count", "num_attention_heads"),
              ("attention.head_count_kv", "num_key_value_heads")],
    "mamba2": [("embedding_length", "hidden_size"), ("block_count", "num_hidden_layers"),
               ("ssm.state_size", "state_size"), ("ssm.group_count", "n_groups"), ("ssm.conv_kernel", "conv_kernel")],
    "doge": [("embedding_length", "hidden_size"), ("block_count", "num_hidden_layers"),
             ("attention.head_count", "num_attention_heads"), ("attention.keep_window_size", "keep_window_size")],
}
HPARAMS["cheems"] = HPARAMS["doge"] + [("ssm.state_size", "ssm_state_size"), ("ssm.time_step_rank", "ssm_num_heads")]


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def check_file(path: Path, arch: str, cfg: dict, expected: dict, qtype_name: str) -> list:
    """Returns a list of problems (empty when the file is right)."""
    problems = []
    r = gguf.GGUFReader(str(path))
    if field(r, "general.architecture") != arch:
        problems.append(f"architecture {field(r, 'general.architecture')} != {arch}")
    for gkey, ckey in HPARAMS[arch]:
        if ckey in cfg and field(r, f"{arch}.{gkey}") != cfg[ckey]:
            problems.append(f"{arch}.{gkey} = {field(r, f'{arch}.{gkey}')}, config {ckey} = {cfg[ckey]}")
    got_names = {t.name for t in r.tensors}
    if got_names != set(expected):
        problems.append(f"tensor names differ: missing {sorted(set(expected) - got_names)}, extra {sorted(got_names - set(expected))}")
    for t in r.tensors:
        if t.name not in expected:
            continue
        want = np.ascontiguousarray(expected[t.name], dtype=np.float32)
        dims = [int(d) for d in t.shape]  # ggml order
        if list(reversed(dims)) != list(want.shape) and int(np.prod(dims)) != want.size:
            problems.append(f"{t.name}: dims {dims} vs expected shape {want.shape}")
            continue
        row = dims[0]
        raw = np.frombuffer(bytes(t.data.tobytes()), dtype=np.uint8)
        got = gguf.quants.dequantize(raw.reshape(-1, raw.size // (want.size // row)), t.tensor_type).reshape(-1)
        w = want.reshape(-1, row)
        g = got.reshape(-1, row)
        scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-30)
        err = (np.abs(g - w) / scale).max()
        if err > BOUND.get(t.tensor_type, 0.2):
            problems.append(f"{t.name} ({t.tensor_type.name}): relative error {err:.3g}")
        if t.tensor_type in HAS_QUANTIZER:
            ref = gguf.quants.quantize(w, t.tensor_type)
            if ref.tobytes() != raw.tobytes():
                problems.append(f"{t.name} ({t.tensor_type.name}): bytes differ from gguf-py's quantizer")
    return problems


def write_wide_llama(d: Path):
    """A 256-wide llama checkpoint so k-quants apply without fallback."""
    rng = np.random.default_rng(7)
    h, ff, v, kv = 256, 512, 300, 128
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": h, "intermediate_size": ff,
           "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": v, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
    (d / "config.json").write_text(json.dumps(cfg))
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h),
              "model.layers.0.input_layernorm.weight": (h,), "model.layers.0.self_attn.q_proj.weight": (h, h),
              "model.layers.0.self_attn.k_proj.weight": (kv, h), "model.layers.0.self_attn.v_proj.weight": (kv, h),
              "model.layers.0.self_attn.o_proj.weight": (h, h), "model.layers.0.post_attention_layernorm.weight": (h,),
              "model.layers.0.mlp.gate_proj.weight": (ff, h), "model.layers.0.mlp.up_proj.weight": (ff, h),
              "model.layers.0.mlp.down_proj.weight": (h, ff)}
    from safetensors.numpy import save_file
    save_file({k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}, str(d / "model.safetensors"))


def main():
    binary = sys.argv[1]
    passed = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        wide = tmp / "wide_llama"
        wide.mkdir()
        write_wide_llama(wide)
        cases = [(FIXTURES / n, n) for n in ["llama", "mamba2", "mamba2_ssm", "doge", "doge_moe", "cheems"]]
        cases.append((wide, "wide_llama"))
        for src, label in cases:
            cfg = json.loads((src / "config.json").read_text())
            ck = load_checkpoint(src)
            arch = {"LlamaForCausalLM": "llama", "Mamba2ForCausalLM": "mamba2", "DogeForCausalLM": "doge",
                    "CheemsForCausalLM": "cheems"}.get((cfg.get("architectures") or [""])[0], "mamba2")
            expected = {"llama": expected_llama, "mamba2": expected_mamba2}.get(arch, expected_doge)(cfg, ck)
            for ty in TYPES:
                out = tmp / f"{label}-{ty}.gguf"
                run = subprocess.run([binary, "quantize", str(src), "-o", str(out), "--type", ty, "-q"],
                                     capture_output=True, text=True)
                if run.returncode != 0:
                    problems = [f"quantize failed: {run.stderr.strip()}"]
                else:
                    problems = check_file(out, arch, cfg, expected, ty)
                status = "ok" if not problems else "FAIL"
                print(f"{status:4} {label:11} {ty:5} " + "; ".join(problems[:3]))
                passed += not problems
                failed += bool(problems)
                out.unlink(missing_ok=True)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
