"""Fast sampling from the teacher: a continuously batched Llama decoder with a static KV cache.

Hugging Face's `generate` on padded batches ran the teacher at about 4.4k reply tokens/s on an H200
(this decoder: 27k):
every batch runs until its longest reply ends, the cache grows by concatenation and each step pays
the library's per-step overhead. Here every one of `slots` sequences has its own row of a preallocated
cache and its own position; a slot whose reply ended takes the next prompt at once. The prompts share
the system prompt's tokens, whose keys and values are computed once and copied into a slot when it
starts; the rest of a prompt is fed one token a step (forced), in the same step as other slots sample.

Sampling follows `generate(do_sample=True, temperature, top_p, repetition_penalty)`: the penalty over
every token of the sequence so far (prompt included), then temperature, then top-p — restricted to the
64 most likely tokens (the mass beyond them at temperature 0.7 is negligible), then one draw.

The forward is the Llama of transformers (RMSNorm, rotate-half RoPE, grouped-query attention, SwiGLU),
with the weights taken from a loaded `LlamaForCausalLM`; `check()` compares its logits with that model's.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import torch
import torch.nn.functional as F


class SlotDecoder:
    def __init__(self, hf_model, slots: int, max_len: int, device: str, dtype=torch.bfloat16):
        cfg = hf_model.config
        self.L = cfg.num_hidden_layers
        self.nh = cfg.num_attention_heads
        self.nkv = cfg.num_key_value_heads
        self.hd = cfg.hidden_size // self.nh
        self.eps = cfg.rms_norm_eps
        self.B, self.T, self.device, self.dtype = slots, max_len, device, dtype
        m = hf_model.model

        def w(t):
            return t.detach().to(device=device, dtype=dtype).contiguous()

        self.embed = w(m.embed_tokens.weight)
        self.lm_head = w(hf_model.lm_head.weight)
        self.norm = w(m.norm.weight)
        self.layers = []
        for lay in m.layers:
            a, f = lay.self_attn, lay.mlp
            self.layers.append(dict(
                ln1=w(lay.input_layernorm.weight),
                qkv=w(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], 0)),
                o=w(a.o_proj.weight),
                ln2=w(lay.post_attention_layernorm.weight),
                gu=w(torch.cat([f.gate_proj.weight, f.up_proj.weight], 0)),
                down=w(f.down_proj.weight),
            ))
        theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
        inv = 1.0 / (theta ** (torch.arange(0, self.hd, 2, dtype=torch.float64) / self.hd))
        fr = torch.arange(max_len, dtype=torch.float64)[:, None] * inv[None, :]
        emb = torch.cat([fr, fr], -1)
        self.cos = emb.cos().to(device=device, dtype=torch.float32)
        self.sin = emb.sin().to(device=device, dtype=torch.float32)
        shape = (self.L, slots, self.nkv, max_len, self.hd)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.ar = torch.arange(slots, device=device)
        self.tpos = torch.arange(max_len, device=device)

    def _rms(self, x, g):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(self.dtype) * g

    def _rope(self, x, cos, sin):  # x (B, h, hd) f32; cos/sin (B, 1, hd)
        h = self.hd // 2
        rot = torch.cat([-x[..., h:], x[..., :h]], -1)
        return x * cos + rot * sin

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, pos: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """One token for each slot in `rows` (all when None) at its position; returns f32 logits."""
        rows = self.ar if rows is None else rows
        n = rows.shape[0]
        x = self.embed[tokens]
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]
        tmax = int(pos.max()) + 1 if n <= 8 else self.T
        mask = (self.tpos[None, :tmax] <= pos[:, None])[:, None, None, :]
        q_n, kv_n = self.nh * self.hd, self.nkv * self.hd
        for li, lay in enumerate(self.layers):
            h = self._rms(x, lay["ln1"])
            qkv = h @ lay["qkv"].T
            q = qkv[:, :q_n].view(n, self.nh, self.hd).float()
            k = qkv[:, q_n:q_n + kv_n].view(n, self.nkv, self.hd).float()
            v = qkv[:, q_n + kv_n:].view(n, self.nkv, self.hd)
            q = self._rope(q, cos, sin).to(self.dtype)
            k = self._rope(k, cos, sin).to(self.dtype)
            self.k[li, rows, :, pos] = k
            self.v[li, rows, :, pos] = v
            kc = self.k[li, rows, :, :tmax] if rows is not self.ar else self.k[li, :, :, :tmax]
            vc = self.v[li, rows, :, :tmax] if rows is not self.ar else self.v[li, :, :, :tmax]
            # query head i reads kv head i // rep (transformers' repeat_kv): the rep query heads of a kv
            # head are one query block of length rep, so the cache is read once, not rep times
            qg = q.view(n, self.nkv, self.nh // self.nkv, self.hd)
            o = F.scaled_dot_product_attention(qg, kc, vc, attn_mask=mask)
            x = x + o.reshape(n, q_n) @ lay["o"].T
            h = self._rms(x, lay["ln2"])
            g, u = (h @ lay["gu"].T).chunk(2, -1)
            x = x + (F.silu(g) * u) @ lay["down"].T
        return (self._rms(x, self.norm) @ self.lm_head.T).float()

    @torch.no_grad()
    def check(self, hf_model, ids: list[int]) -> float:
        """Max |logit difference| to the transformers model over a prompt fed token by token in slot 0."""
        ref = hf_model(torch.tensor([ids], device=self.device)).logits[0].float()
        got = []
        row = self.ar[:1]
        for i, t in enumerate(ids):
            got.append(self.step(torch.tensor([t], device=self.device), torch.tensor([i], device=self.device), row))
        return float((torch.cat(got) - ref).abs().max())

    @torch.no_grad()
    def run(self, prefix: list[int], jobs: Iterable[tuple[object, list[int]]], *, end_ids: list[int],
            max_new: int, temperature: float, top_p: float, penalty: float, deadline: float,
            on_done: Callable[[object, list[int] | None], None], check_every: int = 4,
            log: Callable[[str], None] = print) -> bool:
        """Sample a reply to every job (key, prompt tokens after `prefix`) until the jobs or the time
        run out. `on_done(key, reply)` gets the reply's tokens without its end token, or None when it
        hit `max_new` or the cache's end without one. Returns False when time ran out first."""
        dev, B, P = self.device, self.B, len(prefix)
        jobs = iter(jobs)
        # the shared prefix, once, in slot 0
        row0 = self.ar[:1]
        for i, t in enumerate(prefix):
            self.step(torch.tensor([t], device=dev), torch.tensor([i], device=dev), row0)
        pk = self.k[:, 0, :, :P].clone()
        pv = self.v[:, 0, :, :P].clone()
        V = self.lm_head.shape[0]
        seen = torch.zeros(B, V, dtype=torch.bool, device=dev)
        prefix_t = torch.tensor(prefix, device=dev)
        maxf = self.T - P
        forced = torch.zeros(B, maxf, dtype=torch.long, device=dev)
        flen = torch.zeros(B, dtype=torch.long, device=dev)
        c = torch.zeros(B, dtype=torch.long, device=dev)          # tokens fed since the prefix
        last = torch.zeros(B, dtype=torch.long, device=dev)       # the last sampled token
        out = torch.zeros(B, max_new + 1, dtype=torch.long, device=dev)
        ng = torch.zeros(B, dtype=torch.long, device=dev)         # generated tokens
        live = torch.zeros(B, dtype=torch.bool, device=dev)
        ended = torch.zeros(B, dtype=torch.bool, device=dev)
        end_t = torch.tensor(end_ids, device=dev)
        keys: list[object] = [None] * B
        exhausted = False
        n_steps, n_gen, t0 = 0, 0, time.time()

        def refill(free: list[int]) -> None:
            nonlocal exhausted
            take = []
            for s in free:
                if exhausted:
                    break
                try:
                    key, ids = next(jobs)
                except StopIteration:
                    exhausted = True
                    break
                if len(ids) == 0 or len(ids) + max_new + 1 > maxf:
                    on_done(key, None)
                    free.append(s)  # try the next job in this slot
                    continue
                keys[s] = key
                take.append((s, ids))
            if not take:
                return
            idx = torch.tensor([s for s, _ in take], device=dev)
            self.k[:, idx, :, :P] = pk[:, None]
            self.v[:, idx, :, :P] = pv[:, None]
            seen[idx] = False
            seen[idx[:, None], prefix_t[None, :]] = True
            forced[idx] = 0
            for s, ids in take:
                forced[s, : len(ids)] = torch.tensor(ids, device=dev)
            flen[idx] = torch.tensor([len(ids) for _, ids in take], device=dev)
            c[idx] = 0
            ng[idx] = 0
            live[idx] = True
            ended[idx] = False

        refill(list(range(B)))
        while bool(live.any()):
            if time.time() > deadline:
                log("time is up")
                return False
            for _ in range(check_every):
                inp = torch.where(c < flen, forced[self.ar, c.clamp(max=maxf - 1)], last)
                pos = (P + c).clamp(max=self.T - 1)
                seen[self.ar, inp] = True
                logits = self.step(inp, pos)
                pen = torch.where(logits > 0, logits / penalty, logits * penalty)
                logits = torch.where(seen, pen, logits) / temperature
                vals, idx = logits.topk(64, dim=-1)
                probs = vals.softmax(-1)
                keep = (probs.cumsum(-1) - probs) < top_p
                probs = probs * keep
                pick = torch.multinomial(probs, 1)[:, 0]
                tok = idx[self.ar, pick]
                gen_now = live & ~ended & (c + 1 >= flen)
                out[self.ar, ng.clamp(max=max_new)] = torch.where(gen_now, tok, out[self.ar, ng.clamp(max=max_new)])
                ng = ng + gen_now.long()
                ended = ended | (gen_now & (tok[:, None] == end_t[None, :]).any(-1)) \
                    | (live & (ng >= max_new)) | (live & (P + c + 1 >= self.T - 1))
                last = tok
                c = c + 1
                n_steps += 1
            done = (live & ended).nonzero()[:, 0].tolist()
            if done:
                rows_out = out[done].tolist()
                ngs = ng[done].tolist()
                for s, r, k in zip(done, rows_out, ngs):
                    r = r[:k]
                    hit = [i for i, t in enumerate(r) if t in end_ids]
                    if hit:
                        on_done(keys[s], r[: hit[0]])
                    else:
                        on_done(keys[s], None)
                    n_gen += k
                live[done] = False
                refill(done)
            if n_steps % 256 < check_every:
                el = time.time() - t0
                log(f"  steps {n_steps}  live {int(live.sum())}  {n_gen / max(el, 1e-9):.0f} tok/s")
        return True
