"""Every fast path computes what the plain path computes: the chunked loss, one-query attention, bf16
attention by matmuls, the few-row products of decoding, and torch.compile."""
import pytest
import torch
import torch.nn.functional as F

import smollm135_model
from smollm135_model import (
    FEW_ROWS,
    MATMUL_ATTENTION_MAX_LENGTH,
    CausalSelfAttention,
    CpuKernels,
    KVCache,
    Linear,
    build_model,
    few_row_linear,
    linear_cross_entropy,
)


def plain_loss_and_grads(hidden, weight, targets):
    loss = F.cross_entropy(F.linear(hidden, weight).float(), targets, ignore_index=-100)
    return (loss, *torch.autograd.grad(loss * 3, (hidden, weight)))  # * 3: backward scales by its input


def chunked_loss_and_grads(hidden, weight, targets, chunk_elements):
    loss = linear_cross_entropy(hidden, weight, targets, chunk_elements=chunk_elements)
    return (loss, *torch.autograd.grad(loss * 3, (hidden, weight)))


@pytest.fixture
def loss_inputs():
    torch.manual_seed(0)
    hidden = torch.randn(150, 24, requires_grad=True)
    weight = torch.randn(640, 24, requires_grad=True)
    targets = torch.randint(0, 640, (150,))
    targets[::7] = -100  # ignored positions
    return hidden, weight, targets


@pytest.mark.parametrize("chunk_elements", [10**9, 640 * 32, 640])  # one chunk, five, one row each
def test_chunked_loss_and_gradients_equal_plain_cross_entropy(loss_inputs, chunk_elements):
    plain = plain_loss_and_grads(*loss_inputs)
    chunked = chunked_loss_and_grads(*loss_inputs, chunk_elements)
    for expected, actual in zip(plain, chunked):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_chunked_loss_under_bf16_autocast_matches_plain_autocast(loss_inputs):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = plain_loss_and_grads(*loss_inputs)
        chunked = chunked_loss_and_grads(*loss_inputs, 640 * 32)
    for expected, actual in zip(plain, chunked):
        assert actual.dtype == expected.dtype
        torch.testing.assert_close(actual, expected, rtol=2e-2, atol=2e-3)


def test_chunked_loss_without_gradients_and_with_every_target_ignored(loss_inputs):
    hidden, weight, targets = loss_inputs
    with torch.no_grad():
        expected = F.cross_entropy(F.linear(hidden, weight), targets, ignore_index=-100)
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets, chunk_elements=640 * 32), expected)
        all_ignored = torch.full_like(targets, -100)
        assert linear_cross_entropy(hidden, weight, all_ignored).isnan()  # as F.cross_entropy: 0 / 0


def test_model_loss_without_logits_equals_the_loss_with_logits():
    torch.manual_seed(0)
    model = build_model("tiny", n_kv_head=2)
    x, y = torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16))
    logits, plain = model(x, y)
    plain.backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    none, fused = model(x, y, return_logits=False)
    fused.backward()
    assert none is None and logits.shape == (2, 16, 50304)
    torch.testing.assert_close(fused, plain)
    for expected, p in zip(plain_grads, model.parameters()):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("preset", ["tiny", "tiny-rotary"])
@pytest.mark.slow
def test_compiled_training_step_gives_the_eager_loss_and_gradients(preset):
    torch.manual_seed(0)
    model = build_model(preset)
    compiled = torch.compile(model)
    x, y = torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16))
    losses, grads = [], []
    for forward in (model, compiled):
        _, loss = forward(x, y, return_logits=False)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
        model.zero_grad()
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    for compiled_grad, eager_grad in zip(grads[1], grads[0]):
        torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_bf16_attention_by_matmuls_matches_sdpa_in_values_and_gradients(n_kv_head):
    torch.manual_seed(0)
    cfg = build_model("tiny", n_kv_head=n_kv_head).config
    attention = CausalSelfAttention(cfg)
    B, T, hs = 3, 24, cfg.head_dim
    inputs = [torch.randn(B, heads, T, hs, dtype=torch.bfloat16) for heads in (cfg.n_head, n_kv_head, n_kv_head)]
    ours = [t.clone().requires_grad_() for t in inputs]
    exact = [t.float().requires_grad_() for t in inputs]  # the same values, attended in fp32
    out = attention._attend_by_matmuls(*ours)
    expected = F.scaled_dot_product_attention(*exact, is_causal=True, enable_gqa=n_kv_head != cfg.n_head)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)  # bf16 rounding
    grad_out = torch.randn_like(expected)
    out.backward(grad_out.bfloat16())
    expected.backward(grad_out)
    for got, want in zip(ours, exact):
        torch.testing.assert_close(got.grad.float(), want.grad, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("by_matmuls", [True, False])
@pytest.mark.slow
def test_bf16_training_attends_by_matmuls_up_to_the_length_limit_only_where_chosen(monkeypatch, by_matmuls):
    calls = []
    original = CausalSelfAttention._attend_by_matmuls
    monkeypatch.setattr(CausalSelfAttention, "_attend_by_matmuls",
                        lambda self, q, k, v, mask=None: calls.append(q.shape[2]) or original(self, q, k, v, mask))
    model = build_model("tiny")
    model.use_cpu_kernels(training_attention_by_matmuls=by_matmuls)
    for T in (MATMUL_ATTENTION_MAX_LENGTH, MATMUL_ATTENTION_MAX_LENGTH + 1):
        x = torch.randint(0, 50257, (1, T))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x, x, return_logits=False)[1].backward()
        model(x, x, return_logits=False)  # fp32: SDPA's kernel
    assert calls == ([MATMUL_ATTENTION_MAX_LENGTH] * model.config.n_layer if by_matmuls else [])


@pytest.mark.slow
def test_bf16_training_gives_the_same_loss_and_gradients_by_either_attention_kernel():
    torch.manual_seed(0)
    model = build_model("tiny", n_kv_head=2)
    x, y = torch.randint(0, 50257, (2, 24)), torch.randint(0, 50257, (2, 24))
    results = []
    for by_matmuls in (False, True):
        model.use_cpu_kernels(training_attention_by_matmuls=by_matmuls)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(x, y, return_logits=False)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        model.zero_grad()
    (sdpa_loss, sdpa_grads), (matmul_loss, matmul_grads) = results
    torch.testing.assert_close(matmul_loss, sdpa_loss, rtol=1e-2, atol=1e-2)  # bf16 rounding
    for got, want in zip(matmul_grads, sdpa_grads):
        torch.testing.assert_close(got, want, rtol=0.1, atol=2e-3)


@pytest.mark.parametrize("n_kv_head", [4, 2])
@pytest.mark.parametrize("masked", [False, True])
def test_one_query_attention_equals_sdpa(n_kv_head, masked):
    torch.manual_seed(0)
    cfg = build_model("tiny", n_kv_head=n_kv_head).config
    attention = CausalSelfAttention(cfg)
    B, S, hs = 3, 9, cfg.head_dim
    q = torch.randn(B, cfg.n_head, 1, hs)
    k, v = torch.randn(B, n_kv_head, S, hs), torch.randn(B, n_kv_head, S, hs)
    mask = torch.rand(B, 1, 1, S) > 0.3 if masked else None  # e.g. left padding: (B, 1, T, S), True = attend
    if mask is not None:
        mask[..., -1] = True  # every query sees itself
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=n_kv_head != cfg.n_head)
    torch.testing.assert_close(attention._attend_by_matmuls(q, k, v, mask), expected)


def test_cached_decoding_computes_the_logits_of_the_full_forward():
    torch.manual_seed(0)
    model = build_model("tiny", n_kv_head=2).eval()
    sequence = torch.randint(0, 50257, (2, 12))
    cache = KVCache(model.config, 2, 12, "cpu", torch.float32)
    with torch.no_grad():
        full, _ = model(sequence)  # (2, 12, V)
        model(sequence[:, :8], kv_cache=cache)
        for position in range(8, 12):  # one token at a time, as generate decodes
            step, _ = model(sequence[:, position:position + 1], kv_cache=cache)
            torch.testing.assert_close(step[:, 0], full[:, position], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("leading_shape", [(1, 1), (3, 1), (2, 2), (1,), (5, 1)])  # (5, 1): over FEW_ROWS
@pytest.mark.parametrize("out_features", [64, 50, 7])  # 7: odd, F.linear's path
def test_decoding_products_match_f_linear_in_values_and_gradients(leading_shape, out_features):
    torch.manual_seed(0)
    layer = Linear(48, out_features, bias=False)
    x = torch.randn(*leading_shape, 48, requires_grad=True)
    expected_x = x.detach().clone().requires_grad_()
    out = layer(x)
    expected = F.linear(expected_x, layer.weight)
    torch.testing.assert_close(out, expected)
    assert out.shape == expected.shape == (*leading_shape, out_features)
    out.square().sum().backward()
    weight_grad = layer.weight.grad.clone()
    layer.weight.grad = None
    expected.square().sum().backward()
    torch.testing.assert_close(x.grad, expected_x.grad)
    torch.testing.assert_close(weight_grad, layer.weight.grad)


def test_few_row_linear_is_the_product_by_the_transposed_weight():
    torch.manual_seed(0)
    weight, rows = torch.randn(10, 6), torch.randn(3, 6)
    torch.testing.assert_close(few_row_linear(rows, weight), rows @ weight.t())


def test_cpu_decoding_takes_the_split_product_where_chosen_and_prompts_do_not(monkeypatch):
    calls = []
    monkeypatch.setattr(smollm135_model, "few_row_linear",
                        lambda x, weight: calls.append(x.shape) or x @ weight.t())
    model = build_model("tiny").eval()
    model.use_cpu_kernels(split_products=True)
    model.generate(torch.randint(0, 50257, (1, 8)), max_new_tokens=3, temperature=0)
    layers = model.config.n_layer
    # the 8-token prompt: F.linear everywhere but the last position's logits; each of 2 decode steps:
    # qkv, o, gate_up and down in every layer and the logits
    assert len(calls) == 1 + 2 * (4 * layers + 1)
    assert all(shape[:-1] == (1, 1) for shape in calls)
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.generate(torch.randint(0, 50257, (1, 8)), max_new_tokens=2, temperature=0)
    assert calls == []  # autocast keeps its bf16 F.linear
    model.use_cpu_kernels(split_products=False)
    model.generate(torch.randint(0, 50257, (1, 8)), max_new_tokens=3, temperature=0)
    assert calls == []  # the plain path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.slow
def test_every_decode_kernel_choice_generates_the_same_tokens_and_logits(dtype):
    torch.manual_seed(0)
    model = build_model("tiny", n_kv_head=2).eval().to(dtype)
    prompt = torch.randint(0, 50257, (2, 6))
    outputs = {}
    for split in (False, True):
        for by_matmuls in (False, True):
            model.use_cpu_kernels(split_products=split, decode_attention_by_matmuls=by_matmuls)
            cache = KVCache(model.config, 2, 10, "cpu", dtype)
            with torch.no_grad():
                model(prompt, kv_cache=cache)
                step_logits, _ = model(prompt[:, -1:], kv_cache=cache)  # (2, 1, V): one decode step
            outputs[split, by_matmuls] = (model.generate(prompt, max_new_tokens=8, temperature=0), step_logits)
    plain_tokens, plain_logits = outputs[False, False]
    for (split, by_matmuls), (tokens, logits) in outputs.items():
        assert torch.equal(tokens, plain_tokens), (split, by_matmuls)
        # the same products, summed in each kernel's order: equal within rounding
        tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
        torch.testing.assert_close(logits.float(), plain_logits.float(), **tolerance)


def probe_choosing_the_alternatives(asked: list):
    """A probe that finds both decode alternatives faster here (split products only for fp32 weights)."""

    def probe(model):
        asked.append(model.lm_head.weight.dtype)
        return {"split_products": model.lm_head.weight.dtype == torch.float32, "decode_attention_by_matmuls": True}

    return probe


def test_a_model_measures_nothing_unless_a_probe_is_handed_to_it(monkeypatch):
    import smolm135.runtime.probes

    monkeypatch.setattr(smolm135.runtime.probes, "cpu_decode_kernels", lambda model: pytest.fail("measured"))
    model = build_model("tiny")
    assert model.decode_kernel_probe is None
    model.generate(torch.randint(0, 50257, (1, 4)), max_new_tokens=2, temperature=0)
    assert smolm135.runtime.probes.hand_decode_probe(model).decode_kernel_probe is not None


def test_generate_asks_the_probe_once_per_weight_dtype_and_its_choice_holds_while_generating():
    asked = []
    model = build_model("tiny")
    model.decode_kernel_probe = probe_choosing_the_alternatives(asked)
    prompt = torch.randint(0, 50257, (1, 4))

    def kernels_while_generating() -> CpuKernels:
        stream = model.generate_stream(prompt, max_new_tokens=2, temperature=0)
        next(stream)
        during = model.cpu_kernels
        stream.close()
        assert model.cpu_kernels == CpuKernels()  # afterwards, the plain ways again
        return during

    for _ in range(2):
        assert kernels_while_generating() == CpuKernels(split_products=True, decode_attention_by_matmuls=True)
    assert asked == [torch.float32]
    model.to(torch.bfloat16)
    assert not kernels_while_generating().split_products and asked == [torch.float32, torch.bfloat16]
    model.float()
    assert kernels_while_generating().split_products and asked == [torch.float32, torch.bfloat16]


def test_a_training_step_after_a_generation_computes_as_one_before_it(monkeypatch):
    """A kernel measured for decoding must not follow the model out of generate: a training step of a few rows
    taken after the trainer's sample would then compute differently from the same step in a run resumed in a
    fresh process (no sample yet), and the two runs drift apart in the last bits."""
    split_calls = []
    monkeypatch.setattr(smollm135_model, "few_row_linear",
                        lambda x, weight: split_calls.append(1) or few_row_linear(x, weight))
    torch.manual_seed(0)
    model = build_model("tiny")
    model.decode_kernel_probe = probe_choosing_the_alternatives([])
    model.use_cpu_kernels(training_attention_by_matmuls=True)  # a choice of the run's own: kept
    tokens = torch.randint(0, 50257, (1, FEW_ROWS))  # so few rows that the split product could take them

    def step() -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model(tokens, targets=tokens)[1].backward()
        return [p.grad.clone() for p in model.parameters()]

    before = step()
    model.generate(tokens[:, :2], max_new_tokens=3, temperature=0)
    assert split_calls, "the generation took the measured kernel"
    split_calls.clear()
    after = step()
    assert split_calls == [] and model.cpu_kernels == CpuKernels(training_attention_by_matmuls=True)
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_generation_leaves_weights_and_mode_untouched_even_when_a_stream_is_abandoned():
    torch.manual_seed(0)
    model = build_model("tiny")
    before = {name: (p.data_ptr(), p.stride(), p.clone()) for name, p in model.named_parameters()}
    prompt = torch.randint(0, 50257, (1, 5))
    model.generate(prompt, max_new_tokens=4, temperature=0)
    stream = model.generate_stream(prompt, max_new_tokens=4, temperature=0)
    next(stream)
    stream.close()  # a UI that stops reading mid-way
    for name, p in model.named_parameters():
        pointer, stride, values = before[name]
        assert (p.data_ptr(), p.stride()) == (pointer, stride), name
        assert torch.equal(p, values), name
    assert model.training  # and the mode it had
    assert model.lm_head.weight is model.transformer.wte.weight
