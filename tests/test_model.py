import pytest
import torch

from smollm135_model import PRESETS, SmoLM135_Model, build_model, clean_state_dict, config, padded_vocab_size


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model("tiny").eval()


@pytest.mark.slow
def test_full_preset_has_the_seed_layout_and_true_parameter_count():
    model = SmoLM135_Model(config)
    cfg = model.config
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.intermediate_size, cfg.block_size) == (
        30, 576, 9, 64, 1536, 2048)
    counts = model.num_parameters()
    assert counts == {"token_embedding": 50304 * 576, "position_embedding": 2048 * 576,
                      "non_embedding": 119_474_496, "total": 149_629_248}


@pytest.mark.slow
def test_grouped_query_preset_matches_smollm_attention_layout():
    counts = build_model("smolm135-gqa").num_parameters()
    assert counts["total"] == 136_358_208
    # SmolLM-135M's headline figure leaves out the position embedding
    assert round((counts["total"] - counts["position_embedding"]) / 1e6) == 135


def test_vocabulary_is_gpt2_padded_to_a_multiple_of_64():
    assert padded_vocab_size(50257) == 50304 == config.vocab_size
    assert all(p.vocab_size % 64 == 0 for p in PRESETS.values())
    # GPT-2's tokens fit every preset but SmolLM's (their own tokenizer) and cpu-scratch's (one learned from the corpus)
    assert all(p.vocab_size >= 50257 for name, p in PRESETS.items()
               if not name.startswith("smollm") and name != "cpu-scratch")


def test_input_and_output_embeddings_are_tied(tiny_model):
    assert tiny_model.lm_head.weight is tiny_model.transformer.wte.weight
    assert tiny_model.lm_head.weight.data_ptr() == tiny_model.transformer.wte.weight.data_ptr()


def test_forward_shapes_and_initial_loss_near_log_vocab(tiny_model):
    x, y = torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16))
    logits, loss = tiny_model(x, y)
    assert logits.shape == (2, 16, 50304)
    assert abs(loss.item() - torch.log(torch.tensor(50304.0)).item()) < 0.5
    last, no_loss = tiny_model(x, logits_to_keep=1)
    assert last.shape == (2, 1, 50304) and no_loss is None
    torch.testing.assert_close(last[:, 0], logits[:, -1], rtol=1e-4, atol=1e-4)


def test_later_tokens_never_change_earlier_logits(tiny_model):
    x = torch.randint(0, 50257, (1, 24))
    changed = x.clone()
    changed[0, 15:] = torch.randint(0, 50257, (9,))
    with torch.no_grad():
        a, _ = tiny_model(x)
        b, _ = tiny_model(changed)
    torch.testing.assert_close(a[:, :15], b[:, :15])
    assert not torch.allclose(a[:, 15:], b[:, 15:])


def test_grouped_query_attention_and_gradient_checkpointing_give_the_same_loss():
    torch.manual_seed(0)
    model = build_model("tiny", n_kv_head=2)
    x = torch.randint(0, 50257, (2, 16))
    _, plain = model(x, x)
    plain.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    _, checkpointed = model(x, x)
    checkpointed.backward()
    torch.testing.assert_close(plain, checkpointed)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.slow
def test_seed_notebook_usage_works_as_written(tmp_path):
    from smollm135_model import SmoLM135_Model, config  # noqa: F811 — exactly the seed's import
    tiny = PRESETS["tiny"]
    torch.manual_seed(0)
    source = SmoLM135_Model(tiny)
    path = tmp_path / "model.pt"
    torch.save({"model_state_dict": source.state_dict(), "model_config": tiny.to_dict()}, path)
    model = SmoLM135_Model(tiny)
    model.load_state_dict(torch.load(path)["model_state_dict"])
    input_ids = torch.tensor([[15496, 995]])
    out = model.generate(input_ids, max_length=100, temperature=0.7)
    assert out.shape == (1, 100)
    assert torch.equal(out[:, :2], input_ids)
    assert config.n_layer == 30


def test_greedy_generation_is_identical_with_and_without_the_kv_cache(tiny_model):
    prompt = torch.randint(0, 50257, (3, 7))
    cached = tiny_model.generate(prompt, max_new_tokens=25, temperature=0)
    uncached = tiny_model.generate(prompt, max_new_tokens=25, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)
    assert cached.shape == (3, 32)


def test_top_k_one_and_tiny_top_p_are_greedy(tiny_model):
    prompt = torch.randint(0, 50257, (1, 5))
    greedy = tiny_model.generate(prompt, max_new_tokens=10, temperature=0)
    assert torch.equal(tiny_model.generate(prompt, max_new_tokens=10, temperature=1.0, top_k=1), greedy)
    assert torch.equal(tiny_model.generate(prompt, max_new_tokens=10, temperature=1.0, top_p=1e-6), greedy)


def test_sampling_with_a_seeded_generator_is_repeatable(tiny_model):
    prompt = torch.randint(0, 50257, (1, 5))
    a = tiny_model.generate(prompt, max_new_tokens=15, temperature=1.0, top_k=50, top_p=0.9,
                            generator=torch.Generator().manual_seed(7))
    b = tiny_model.generate(prompt, max_new_tokens=15, temperature=1.0, top_k=50, top_p=0.9,
                            generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_generation_stops_at_eos_and_pads_finished_rows(tiny_model):
    prompt = torch.randint(0, 50257, (2, 4))
    greedy = tiny_model.generate(prompt, max_new_tokens=6, temperature=0)
    eos = int(greedy[0, 5])  # the second token row 0 would produce
    out = tiny_model.generate(prompt, max_new_tokens=6, temperature=0, eos_token_id=eos)
    assert int(out[0, 5]) == eos
    assert (out[0, 5:] == eos).all()


def test_rows_stop_at_any_of_several_end_ids_and_finished_rows_are_padded_with_the_first(tiny_model):
    # sampled, since an untrained model repeats one token greedily; each call draws the same numbers
    def sample(**kwargs):
        return tiny_model.generate(prompt, max_new_tokens=6, temperature=1.0, top_k=None, top_p=None,
                                   generator=torch.Generator().manual_seed(3), **kwargs)

    prompt = torch.randint(0, 50257, (2, 4), generator=torch.Generator().manual_seed(0))
    free = sample()  # (2, 10)
    ends_row_0, ends_row_1 = int(free[0, 5]), int(free[1, 6])  # row 0's second new token, row 1's third
    assert ends_row_0 not in free[0, 4:5].tolist() + free[1, 4:7].tolist()
    assert ends_row_1 not in free[0, 4:6].tolist() + free[1, 4:6].tolist()  # each row meets only its own end
    out = sample(eos_token_id=[ends_row_1, ends_row_0])
    assert out.shape == (2, 7)  # stopped when the last row finished, before the 6 new tokens
    assert torch.equal(out[1], free[1, :7])
    assert torch.equal(out[0, :6], free[0, :6]) and int(out[0, 6]) == ends_row_1  # padded with the first id
    streamed = list(tiny_model.generate_stream(prompt, max_new_tokens=6, temperature=1.0, top_k=None, top_p=None,
                                               generator=torch.Generator().manual_seed(3),
                                               eos_token_id=(ends_row_1, ends_row_0)))
    assert torch.equal(torch.stack(streamed, dim=1), out[:, 4:])


def test_generation_stops_at_the_context_length_with_a_warning(tiny_model):
    block = tiny_model.config.block_size
    prompt = torch.randint(0, 50257, (1, block - 3))
    with pytest.warns(UserWarning, match="context length"):
        out = tiny_model.generate(prompt, max_new_tokens=10, temperature=0)
    assert out.shape == (1, block)
    with pytest.warns(UserWarning, match="context length"):
        same = tiny_model.generate(torch.randint(0, 50257, (1, block + 5)), max_new_tokens=4)
    assert same.shape == (1, block + 5)


def test_one_dimensional_prompt_returns_one_dimensional_output(tiny_model):
    out = tiny_model.generate(torch.tensor([1, 2, 3]), max_new_tokens=4, temperature=0)
    assert out.shape == (7,)


def test_clean_state_dict_strips_compile_and_ddp_prefixes():
    state = {"_orig_mod.lm_head.weight": 1, "module.transformer.wte.weight": 2,
             "module._orig_mod.transformer.ln_f.weight": 3}
    assert clean_state_dict(state) == {"lm_head.weight": 1, "transformer.wte.weight": 2,
                                       "transformer.ln_f.weight": 3}


def test_invalid_model_config_is_refused():
    with pytest.raises(ValueError, match="divisible"):
        build_model("tiny", n_head=3)


def test_streamed_tokens_are_the_generated_continuation(tiny_model):
    prompt = torch.randint(0, 50257, (2, 6))
    streamed = list(tiny_model.generate_stream(prompt, max_new_tokens=9, temperature=0))
    assert len(streamed) == 9 and all(t.shape == (2,) for t in streamed)
    assert torch.equal(torch.stack(streamed, dim=1), tiny_model.generate(prompt, max_new_tokens=9, temperature=0)[:, 6:])
