"""Agent-shaped workloads: Llama-shaped ``decode`` and ``prefill``, BERT-shaped ``embed``.

Random weights from a seeded generator, no downloads, no ``transformers``. Each factory follows
the workload factory contract (docs/ARCHITECTURE.md): it builds everything on the device and
returns ``step``, which launches one iteration's work and never synchronizes. Shapes, FLOPs per
step and params are in docs/workloads.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .workloads import DECODE_PARAMS, EMBED_PARAMS, PARAM_PARSERS, PREFILL_PARAMS, parse_dtype_name

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_ROPE_THETA = 10_000.0
_NORM_EPS = 1e-5


# --- params (they arrive as strings from --param key=value) -----------------------------------


def _dtype(raw: str) -> torch.dtype:
    return _DTYPES[parse_dtype_name(raw)]


_PARSERS: dict[str, Callable[[str], Any]] = {**PARAM_PARSERS, "dtype": _dtype}


def _parse(workload: str, params: Mapping[str, object], allowed: tuple[str, ...]) -> dict[str, Any]:
    """Params as typed values; a ValueError names the bad key and lists the allowed ones."""
    keys = ", ".join(allowed)
    parsed: dict[str, Any] = {}
    for key, raw in params.items():
        if key not in allowed:
            raise ValueError(f"{workload}: unknown param {key!r}; allowed params: {keys}")
        try:
            parsed[key] = _PARSERS[key](str(raw).strip())
        except ValueError as exc:
            raise ValueError(f"{workload}: param {key!r}: {exc} (allowed params: {keys})") from None
    return parsed


def _check(workload: str, ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"{workload}: {message}")


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _default_dtype(device: torch.device) -> torch.dtype:
    # bf16 is what serving uses on a GPU; on the CPU fp32 is the fast path.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


# --- building blocks ------------------------------------------------------------------------


class _Init:
    """Seeded random weights, generated on the device (a CPU generator would be slow at 1B)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, seed: int) -> None:
        self.device, self.dtype = device, dtype
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def linear(self, out_features: int, in_features: int) -> torch.Tensor:
        # Scaled by 1/sqrt(fan_in) so activations stay O(1) through the stack in bf16.
        w = torch.randn(out_features, in_features, generator=self.gen, device=self.device)
        return (w / math.sqrt(in_features)).to(self.dtype)

    def table(self, rows: int, width: int) -> torch.Tensor:
        w = torch.randn(rows, width, generator=self.gen, device=self.device)
        return w.to(self.dtype)

    def ones(self, width: int) -> torch.Tensor:
        return torch.ones(width, device=self.device, dtype=self.dtype)

    def zeros(self, width: int) -> torch.Tensor:
        return torch.zeros(width, device=self.device, dtype=self.dtype)

    def tokens(self, vocab: int, *shape: int) -> torch.Tensor:
        return torch.randint(vocab, shape, generator=self.gen, device=self.device)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + _NORM_EPS)).to(x.dtype) * weight


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


# --- Llama-shaped decoder (decode and prefill) ----------------------------------------------


@dataclass(frozen=True)
class LlamaShape:
    d_model: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @property
    def group(self) -> int:
        """Query heads per KV head (grouped-query attention)."""
        return self.heads // self.kv_heads


@dataclass
class _LlamaLayer:
    attn_norm: torch.Tensor
    wqkv: torch.Tensor  # fused q, k, v projection, as serving engines do
    wo: torch.Tensor
    mlp_norm: torch.Tensor
    w_gate_up: torch.Tensor  # fused SwiGLU gate and up projection
    w_down: torch.Tensor


class Llama:
    """RMSNorm, rotary embeddings, grouped-query attention, SwiGLU MLP; no biases."""

    def __init__(self, shape: LlamaShape, max_pos: int, init: _Init) -> None:
        s = self.shape = shape
        kv_width = s.kv_heads * s.head_dim
        self.qkv_split = (s.d_model, kv_width, kv_width)
        self.embed = init.table(s.vocab, s.d_model)
        self.layers = [
            _LlamaLayer(
                attn_norm=init.ones(s.d_model),
                wqkv=init.linear(s.d_model + 2 * kv_width, s.d_model),
                wo=init.linear(s.d_model, s.d_model),
                mlp_norm=init.ones(s.d_model),
                w_gate_up=init.linear(2 * s.ffn, s.d_model),
                w_down=init.linear(s.d_model, s.ffn),
            )
            for _ in range(s.layers)
        ]
        self.final_norm = init.ones(s.d_model)
        self.lm_head = init.linear(s.vocab, s.d_model)
        f32 = torch.float32
        inv_freq = _ROPE_THETA ** (
            -torch.arange(0, s.head_dim, 2, device=init.device, dtype=f32) / s.head_dim
        )
        angles = torch.outer(torch.arange(max_pos, device=init.device, dtype=f32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.cos, self.sin = angles.cos().to(init.dtype), angles.sin().to(init.dtype)

    def _mlp(self, x: torch.Tensor, layer: _LlamaLayer) -> torch.Tensor:
        gate, up = F.linear(_rms_norm(x, layer.mlp_norm), layer.w_gate_up).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, layer.w_down)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Causal forward over ``tokens`` (batch, seq) from position 0: hidden (batch, seq, d)."""
        s = self.shape
        batch, seq = tokens.shape
        cos, sin = self.cos[:seq], self.sin[:seq]
        x = F.embedding(tokens, self.embed)
        for layer in self.layers:
            q, k, v = F.linear(_rms_norm(x, layer.attn_norm), layer.wqkv).split(self.qkv_split, -1)
            q = _rope(q.view(batch, seq, s.heads, s.head_dim).transpose(1, 2), cos, sin)
            k = _rope(k.view(batch, seq, s.kv_heads, s.head_dim).transpose(1, 2), cos, sin)
            v = v.view(batch, seq, s.kv_heads, s.head_dim).transpose(1, 2)
            k, v = k.repeat_interleave(s.group, dim=1), v.repeat_interleave(s.group, dim=1)
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + F.linear(attn.transpose(1, 2).reshape(batch, seq, s.d_model), layer.wo)
            x = self._mlp(x, layer)
        return _rms_norm(x, self.final_norm)

    def decode(
        self,
        token: torch.Tensor,
        pos: torch.Tensor,
        slots: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> torch.Tensor:
        """Logits (1, vocab) for one ``token`` written at cache slot ``pos`` (both shape (1,)).

        Everything is indexed by device tensors with static shapes, so the step can be captured
        as a CUDA graph. Attention spans the whole cache with slots after ``pos`` masked out:
        the cost per step is constant (that of a full cache) instead of a sawtooth.
        """
        s = self.shape
        cos, sin = self.cos.index_select(0, pos), self.sin.index_select(0, pos)
        visible = (slots <= pos).view(1, 1, 1, -1)
        x = F.embedding(token, self.embed)
        for i, layer in enumerate(self.layers):
            q, k, v = F.linear(_rms_norm(x, layer.attn_norm), layer.wqkv).split(self.qkv_split, -1)
            q = _rope(q.view(s.heads, s.head_dim), cos, sin)
            k = _rope(k.view(s.kv_heads, s.head_dim), cos, sin)
            k_cache[i].index_copy_(1, pos, k.unsqueeze(1))
            v_cache[i].index_copy_(1, pos, v.view(s.kv_heads, 1, s.head_dim))
            # Query heads grouped under their KV head: GQA without copying the cache.
            q = q.view(1, s.kv_heads, s.group, s.head_dim)
            attn = F.scaled_dot_product_attention(
                q, k_cache[i].unsqueeze(0), v_cache[i].unsqueeze(0), attn_mask=visible
            )
            x = x + F.linear(attn.reshape(1, s.d_model), layer.wo)
            x = self._mlp(x, layer)
        return F.linear(_rms_norm(x, self.final_norm), self.lm_head)


def _llama_shape(workload: str, size: int, p: Mapping[str, Any]) -> LlamaShape:
    _check(workload, size >= 2, f"size (d_model) must be at least 2, got {size}")
    heads = p.get("heads", max(1, size // 64))
    # Llama's GQA ratio of 4 where it divides; else the largest divisor of heads below it.
    default_kv = next(k for k in range(max(1, heads // 4), 0, -1) if heads % k == 0)
    kv_heads = p.get("kv_heads", default_kv)
    _check(workload, size % heads == 0, f"size {size} is not divisible by heads={heads}")
    _check(workload, (size // heads) % 2 == 0, f"head dim {size}/heads={heads} must be even (RoPE)")
    _check(workload, heads % kv_heads == 0, f"heads={heads} not divisible by kv_heads={kv_heads}")
    # SwiGLU width ~ 8/3 d (Llama), rounded up to a multiple of 64 for the matmul tiles.
    ffn = p.get("ffn", _round_up(math.ceil(8 * size / 3), 64))
    return LlamaShape(size, p.get("layers", 4), heads, kv_heads, ffn, p.get("vocab", 32_000))


class DecodeStep:
    """Batch-1 greedy decode: each call appends one token at the next KV-cache slot.

    The token fed in is the argmax of the previous step's logits, kept on the device. When the
    cache is full the position wraps to 0 and a new sequence starts over the old slots, which
    the mask hides, so the step cost stays bounded and steady however long the tenant runs.
    """

    def __init__(self, model: Llama, max_seq: int, init: _Init, graph: bool) -> None:
        s = model.shape
        self.model, self.max_seq = model, max_seq
        cache_shape = (s.layers, s.kv_heads, max_seq, s.head_dim)
        self.k_cache = torch.zeros(cache_shape, device=init.device, dtype=init.dtype)
        self.v_cache = torch.zeros(cache_shape, device=init.device, dtype=init.dtype)
        self.token = torch.ones(1, device=init.device, dtype=torch.long)  # BOS
        self._pos = torch.zeros(1, device=init.device, dtype=torch.long)
        self._slots = torch.arange(max_seq, device=init.device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_logits: torch.Tensor | None = None
        if graph and init.device.type == "cuda":
            self._capture()

    @property
    def position(self) -> int:
        """The cache slot the next step writes (reading it synchronizes: for tests only)."""
        return int(self._pos.item())

    def _eager(self) -> torch.Tensor:
        with torch.inference_mode():
            logits = self.model.decode(
                self.token, self._pos, self._slots, self.k_cache, self.v_cache
            )
            self.token.copy_(logits.argmax(dim=-1))
            self._pos.add_(1).remainder_(self.max_seq)
        return logits

    def _capture(self) -> None:
        # Warm up on a side stream (allocator, kernel selection), then record one step.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._eager()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: under the streams backend co-tenants in other threads of this process
        # keep launching while this one captures; their calls must not void the capture.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._graph_logits = self._eager()
        self._graph = graph

    def __call__(self) -> torch.Tensor:
        if self._graph is None:
            return self._eager()
        self._graph.replay()
        assert self._graph_logits is not None
        return self._graph_logits


class PrefillStep:
    """Causal forward of a fixed (batch, seq) prompt; logits of the last position only."""

    kts_graph_safe = True  # a pure function of device tensors: the harness may graph it

    def __init__(self, model: Llama, tokens: torch.Tensor) -> None:
        self.model, self.tokens = model, tokens

    def __call__(self) -> torch.Tensor:
        with torch.inference_mode():
            hidden = self.model.forward(self.tokens)
            return F.linear(hidden[:, -1], self.model.lm_head)


def build_decode(device: torch.device, size: int, seed: int, **params: str) -> DecodeStep:
    """Batch-1 decode of a Llama-shaped model (width ``size``) with a preallocated KV cache."""
    p = _parse("decode", params, DECODE_PARAMS)
    shape = _llama_shape("decode", size, p)
    init = _Init(device, p.get("dtype", _default_dtype(device)), seed)
    max_seq = p.get("max_seq", 2048)
    with torch.inference_mode():
        model = Llama(shape, max_seq, init)
        return DecodeStep(model, max_seq, init, graph=p.get("graph", False))


def build_prefill(device: torch.device, size: int, seed: int, **params: str) -> PrefillStep:
    """Large-batch causal prefill of the same Llama-shaped model as ``decode``."""
    p = _parse("prefill", params, PREFILL_PARAMS)
    shape = _llama_shape("prefill", size, p)
    init = _Init(device, p.get("dtype", _default_dtype(device)), seed)
    seq = p.get("seq", 512)
    with torch.inference_mode():
        model = Llama(shape, seq, init)
        return PrefillStep(model, init.tokens(shape.vocab, p.get("batch", 8), seq))


# --- BERT-shaped encoder (embed) -------------------------------------------------------------


@dataclass
class _BertLayer:
    wqkv: torch.Tensor
    bqkv: torch.Tensor
    wo: torch.Tensor
    bo: torch.Tensor
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor


class Bert:
    """Post-LayerNorm encoder: learned positions, bidirectional attention, GELU MLP of 4d."""

    VOCAB = 30_522

    def __init__(self, width: int, layers: int, heads: int, seq: int, init: _Init) -> None:
        self.width, self.heads = width, heads
        self.word = init.table(self.VOCAB, width)
        self.position = init.table(seq, width)
        self.ln_w, self.ln_b = init.ones(width), init.zeros(width)
        self.layers = [
            _BertLayer(
                wqkv=init.linear(3 * width, width),
                bqkv=init.zeros(3 * width),
                wo=init.linear(width, width),
                bo=init.zeros(width),
                ln1_w=init.ones(width),
                ln1_b=init.zeros(width),
                w1=init.linear(4 * width, width),
                b1=init.zeros(4 * width),
                w2=init.linear(width, 4 * width),
                b2=init.zeros(width),
                ln2_w=init.ones(width),
                ln2_b=init.zeros(width),
            )
            for _ in range(layers)
        ]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states (batch, seq, width) for ``tokens`` (batch, seq)."""
        batch, seq = tokens.shape
        d, h = self.width, self.heads
        x = F.embedding(tokens, self.word) + self.position[:seq]
        x = F.layer_norm(x, (d,), self.ln_w, self.ln_b)
        for layer in self.layers:
            qkv = F.linear(x, layer.wqkv, layer.bqkv).view(batch, seq, 3, h, d // h)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            attn = F.scaled_dot_product_attention(q, k, v)
            attn = F.linear(attn.transpose(1, 2).reshape(batch, seq, d), layer.wo, layer.bo)
            x = F.layer_norm(x + attn, (d,), layer.ln1_w, layer.ln1_b)
            mlp = F.linear(F.gelu(F.linear(x, layer.w1, layer.b1)), layer.w2, layer.b2)
            x = F.layer_norm(x + mlp, (d,), layer.ln2_w, layer.ln2_b)
        return x


class EmbedStep:
    """Encoder forward of a fixed (batch, seq) input; the [CLS] vectors (batch, width)."""

    kts_graph_safe = True  # a pure function of device tensors: the harness may graph it

    def __init__(self, model: Bert, tokens: torch.Tensor) -> None:
        self.model, self.tokens = model, tokens

    def __call__(self) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.forward(self.tokens)[:, 0]


def build_embed(device: torch.device, size: int, seed: int, **params: str) -> EmbedStep:
    """BERT-base-shaped encoder forward (width ``size``; 12 layers, seq 128, batch 8)."""
    p = _parse("embed", params, EMBED_PARAMS)
    _check("embed", size >= 1, f"size (width) must be positive, got {size}")
    heads = p.get("heads", max(1, size // 64))
    _check("embed", size % heads == 0, f"size {size} is not divisible by heads={heads}")
    init = _Init(device, p.get("dtype", _default_dtype(device)), seed)
    seq = p.get("seq", 128)
    with torch.inference_mode():
        model = Bert(size, p.get("layers", 12), heads, seq, init)
        return EmbedStep(model, init.tokens(Bert.VOCAB, p.get("batch", 8), seq))
