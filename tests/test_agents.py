"""The agent-shaped workloads: shapes, KV-cache behaviour, causality, determinism, params."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from pytest_kts.workers.agents import build_decode, build_embed, build_prefill  # noqa: E402

CPU = torch.device("cpu")
# Tiny but structurally complete: 4 query heads over 2 KV heads (GQA), 2 layers.
LLAMA = {"layers": "2", "heads": "4", "kv_heads": "2", "vocab": "256"}
SIZE = 128


def decode(seed: int = 0, **params: str):
    return build_decode(CPU, SIZE, seed, **{**LLAMA, "max_seq": "8", **params})


def prefill(seed: int = 0, **params: str):
    return build_prefill(CPU, SIZE, seed, **{**LLAMA, "batch": "2", "seq": "16", **params})


def embed(seed: int = 0, **params: str):
    return build_embed(CPU, SIZE, seed, **{"layers": "2", "seq": "16", "batch": "2", **params})


def run(step, n: int) -> list[torch.Tensor]:
    return [step().clone() for _ in range(n)]


@pytest.mark.parametrize(
    ("factory", "shape"),
    [(decode, (1, 256)), (prefill, (2, 256)), (embed, (2, SIZE))],
    ids=["decode", "prefill", "embed"],
)
def test_step_output_shape_dtype_and_finite(factory, shape) -> None:
    outputs = run(factory(), 3)
    for out in outputs:
        assert out.shape == shape
        assert out.dtype == torch.float32  # the CPU default
        assert torch.isfinite(out).all()
    assert out.abs().sum() > 0


@pytest.mark.parametrize("factory", [decode, prefill, embed], ids=["decode", "prefill", "embed"])
def test_same_seed_is_deterministic_and_another_seed_differs(factory) -> None:
    a, b, c = run(factory(seed=1), 3), run(factory(seed=1), 3), run(factory(seed=2), 3)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("factory", [decode, prefill, embed], ids=["decode", "prefill", "embed"])
def test_dtype_param_sets_the_compute_dtype(factory) -> None:
    out = factory(dtype="bf16")()
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()


# --- decode -----------------------------------------------------------------------------------


def test_decode_advances_position_and_writes_only_that_cache_slot() -> None:
    step = decode()
    assert step.position == 0
    assert not step.k_cache.any() and not step.v_cache.any()
    for slot in range(3):
        before_k, before_v = step.k_cache.clone(), step.v_cache.clone()
        step()
        assert step.position == slot + 1
        # Every layer's K and V at this slot changed from zero; no other slot changed.
        for cache, before in ((step.k_cache, before_k), (step.v_cache, before_v)):
            assert (cache[:, :, slot] != 0).any(dim=(1, 2)).all()
            others = [s for s in range(step.max_seq) if s != slot]
            assert torch.equal(cache[:, :, others], before[:, :, others])


def test_decode_position_wraps_and_restarts_the_sequence() -> None:
    step = decode(max_seq="4")
    first = step().clone()  # BOS at position 0, empty cache
    for _ in range(3):
        step()
    assert step.position == 0
    assert step.k_cache[:, :, 3].any()  # the cache is full of an old sequence
    with torch.inference_mode():
        step.token.fill_(1)  # BOS again
    again = step()
    assert step.position == 1
    # The stale slots 1..3 are masked: the restarted sequence sees only its own first token.
    torch.testing.assert_close(again, first, rtol=0, atol=0)


def test_decode_matches_a_full_causal_forward_over_the_same_tokens() -> None:
    step = decode()
    fed, logits = [], []
    for _ in range(6):
        fed.append(int(step.token))
        logits.append(step().clone())
    with torch.inference_mode():
        hidden = step.model.forward(torch.tensor([fed]))
        reference = torch.nn.functional.linear(hidden[0], step.model.lm_head)
    torch.testing.assert_close(torch.cat(logits), reference, rtol=1e-4, atol=1e-4)
    # Greedy: each step's input is the argmax of the previous step's logits.
    assert fed[1:] == [int(x.argmax()) for x in logits[:-1]]


def test_decode_graph_flag_is_ignored_on_cpu() -> None:
    for x, y in zip(run(decode(graph="1"), 3), run(decode(graph="0"), 3), strict=True):
        assert torch.equal(x, y)


# --- prefill and embed ------------------------------------------------------------------------


def test_prefill_attention_is_causal() -> None:
    step = prefill()
    tokens = step.tokens.clone()
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 256
    with torch.inference_mode():
        a, b = step.model.forward(tokens), step.model.forward(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=0)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_prefill_returns_last_position_logits() -> None:
    step = prefill()
    with torch.inference_mode():
        hidden = step.model.forward(step.tokens)
        expected = torch.nn.functional.linear(hidden[:, -1], step.model.lm_head)
    torch.testing.assert_close(step(), expected)


def test_embed_attention_is_bidirectional() -> None:
    step = embed()
    before = step().clone()
    with torch.inference_mode():
        step.tokens[:, -1] = (step.tokens[:, -1] + 1) % 30_522
    # The [CLS] vector at position 0 sees the last token.
    assert not torch.allclose(step(), before)


# --- params -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "params", "key"),
    [
        (decode, {"layer": "2"}, "layer"),
        (decode, {"layers": "two"}, "layers"),
        (decode, {"layers": "0"}, "layers"),
        (decode, {"max_seq": "1.5"}, "max_seq"),
        (decode, {"dtype": "int8"}, "dtype"),
        (decode, {"graph": "maybe"}, "graph"),
        (decode, {"heads": "3"}, "heads"),
        (decode, {"kv_heads": "3"}, "kv_heads"),
        (prefill, {"max_seq": "64"}, "max_seq"),
        (prefill, {"batch": "-1"}, "batch"),
        (prefill, {"seq": ""}, "seq"),
        (embed, {"vocab": "100"}, "vocab"),
        (embed, {"heads": "5"}, "heads"),
        (embed, {"batch": "x"}, "batch"),
    ],
)
def test_bad_param_raises_value_error_naming_the_key(factory, params, key) -> None:
    with pytest.raises(ValueError, match=rf"\b{key}\b"):
        factory(**params)


def test_unknown_param_message_lists_the_allowed_keys() -> None:
    with pytest.raises(ValueError, match=r"unknown param 'layer'.*allowed params: layers, heads"):
        decode(layer="2")


def test_params_accept_non_string_values() -> None:
    step = build_decode(CPU, SIZE, 0, layers=1, heads=4, kv_heads=2, vocab=64, max_seq=4)
    assert step().shape == (1, 64)


# --- on a GPU ---------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("factory", [build_decode, build_prefill, build_embed])
def test_step_never_synchronizes_on_cuda(factory) -> None:
    step = factory(torch.device("cuda"), 256, 0, layers="2")
    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@cuda
def test_decode_cuda_graph_replays_the_eager_step() -> None:
    device = torch.device("cuda")
    params = {**LLAMA, "max_seq": "16", "dtype": "fp32"}
    graphed = build_decode(device, SIZE, 0, graph="1", **params)
    eager = build_decode(device, SIZE, 0, graph="0", **params)
    assert graphed._graph is not None
    run(eager, 3)  # the capture ran three warmup steps
    for _ in range(20):  # past the wrap at 16
        torch.testing.assert_close(graphed().clone(), eager().clone(), rtol=1e-4, atol=1e-4)
    assert graphed.position == eager.position == (3 + 20) % 16
