"""The transformers model behaves as transformers' own causal LMs do: hidden states, return_dict, the loss
keyword arguments Trainer relies on (so gradient accumulation makes the update it makes without), tied-weight
loading, torch.export with a padding mask, eager attention equal to SDPA, gradient checkpointing options, and
a forward signature that says what it takes. A tiny config built here; nothing is downloaded."""
import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import DynamicCache, Trainer, TrainingArguments

from modeling_smolm135 import SmoLM135Config, SmoLM135ForCausalLM

VOCAB_SIZE = 256
EMBEDDING_KEY = "model.transformer.wte.weight"


def tiny_config(**overrides) -> SmoLM135Config:
    values = dict(vocab_size=VOCAB_SIZE, max_position_embeddings=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, hidden_size=32, intermediate_size=64,
                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    values.update(overrides)
    return SmoLM135Config(**values)


@pytest.fixture(scope="module")
def folder(module_tmp):
    """A tiny model saved as transformers saves it (what an export holds besides code, tokenizer and card)."""
    torch.manual_seed(0)
    path = module_tmp.mktemp("tiny_hf")
    SmoLM135ForCausalLM(tiny_config()).save_pretrained(path)
    return path


@pytest.fixture
def model(folder):
    return SmoLM135ForCausalLM.from_pretrained(folder).eval()


def random_ids(batch=2, length=10, seed=1):
    return torch.randint(0, VOCAB_SIZE, (batch, length), generator=torch.Generator().manual_seed(seed))


def left_padded_mask(batch=2, length=10):
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, :4] = 0  # the second row is a shorter prompt, padded on the left
    return mask


# ------------------------------------------------------------------ outputs


def test_hidden_states_are_the_embeddings_then_each_block_the_last_after_the_final_norm(model):
    input_ids = random_ids()
    native = model.model
    with torch.no_grad():
        out = model(input_ids, output_hidden_states=True)
        plain = model(input_ids)
        positions = torch.arange(input_ids.shape[1])
        expected = [native.transformer.wte(input_ids) + native.transformer.wpe(positions)]  # (B, T, C)
        for block in native.transformer.h:
            expected.append(block(expected[-1]))
        expected[-1] = native.transformer.ln_f(expected[-1])
    assert plain.hidden_states is None
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    for got, want in zip(out.hidden_states, expected):
        torch.testing.assert_close(got, want)
    assert torch.equal(out.logits, plain.logits)
    torch.testing.assert_close(native.lm_head(out.hidden_states[-1]), out.logits)


def test_generate_returns_hidden_states_in_its_dict_output(model):
    input_ids = random_ids(length=6)
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=3, do_sample=False,
                         return_dict_in_generate=True, output_hidden_states=True)
    assert len(out.hidden_states) == 3  # one entry per generated token
    assert [len(step) for step in out.hidden_states] == [model.config.num_hidden_layers + 1] * 3
    assert out.hidden_states[0][0].shape == (2, 6, model.config.hidden_size)  # the prompt
    assert out.hidden_states[1][0].shape == (2, 1, model.config.hidden_size)  # then one token a step


def test_output_attentions_is_refused_with_a_clear_error(model):
    with pytest.raises(ValueError, match="does not return attention weights"):
        model(random_ids(), output_attentions=True)


def test_return_dict_false_returns_a_tuple_of_the_same_values(model):
    input_ids = random_ids()
    with torch.no_grad():
        as_dict = model(input_ids, labels=input_ids, output_hidden_states=True)
        as_tuple = model(input_ids, labels=input_ids, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple)
    loss, logits, cache, hidden_states = as_tuple
    assert torch.equal(loss, as_dict.loss) and torch.equal(logits, as_dict.logits)
    assert isinstance(cache, DynamicCache) and len(hidden_states) == len(as_dict.hidden_states)


def test_forward_takes_no_inputs_embeds_and_refuses_arguments_it_would_ignore(model):
    parameters = inspect.signature(model.forward).parameters
    assert "inputs_embeds" not in parameters
    with pytest.raises(TypeError, match="does not take inputs_embeds"):
        model(random_ids(), inputs_embeds=torch.zeros(2, 10, model.config.hidden_size))
    with pytest.raises(TypeError, match="does not take token_type_ids"):
        model(random_ids(), token_type_ids=torch.zeros(2, 10, dtype=torch.long))


# ------------------------------------------------------------------ the loss Trainer relies on


def labels_with_ignored_tail(input_ids, kept_lengths):
    labels = input_ids.clone()
    for row, kept in enumerate(kept_lengths):
        labels[row, kept:] = -100  # e.g. padding on the right: no loss there
    return labels


def test_loss_is_the_next_token_mean_or_the_sum_over_num_items_in_batch(model):
    input_ids = random_ids()
    labels = labels_with_ignored_tail(input_ids, [10, 6])
    with torch.no_grad():
        logits = model(input_ids).logits  # (B, T, V)
        targets = F.pad(labels[:, 1:], (0, 1), value=-100)  # (B, T): the next token, -100 past the end
        summed = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), targets.reshape(-1), ignore_index=-100,
                                 reduction="sum")
        n_targets = int((targets != -100).sum())
        mean = model(input_ids, labels=labels).loss
        over_items = model(input_ids, labels=labels, num_items_in_batch=torch.tensor(40)).loss
        shifted = model(input_ids, shift_labels=targets).loss
        shifted_over_items = model(input_ids, shift_labels=targets, num_items_in_batch=40).loss
    torch.testing.assert_close(mean, summed / n_targets)
    torch.testing.assert_close(over_items, summed / 40)
    assert torch.equal(shifted, mean) and torch.equal(shifted_over_items, over_items)


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


def fine_tune(folder, out_dir, per_device_batch_size, accumulation_steps, dataset):
    model = SmoLM135ForCausalLM.from_pretrained(folder)
    args = TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=per_device_batch_size,
        gradient_accumulation_steps=accumulation_steps, max_steps=2, learning_rate=0.5,
        optim="sgd",  # the update is proportional to the gradient: a mis-scaled loss shows (AdamW would hide it)
        lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
        seed=0,  # the same seed shuffles the rows the same way in both runs: the same global batches
        use_cpu=True, report_to="none", save_strategy="no", logging_strategy="no",
        dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    assert trainer.model_accepts_loss_kwargs  # so Trainer passes num_items_in_batch and does not divide again
    trainer.train()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.slow
def test_trainer_makes_the_same_update_with_and_without_gradient_accumulation(folder, tmp_path):
    # 2 steps of 4 rows each; rows keep different numbers of targets, so averaging per micro-batch would differ
    ids = random_ids(batch=8, length=12, seed=3)
    labels = labels_with_ignored_tail(ids, [12, 3, 9, 5, 12, 2, 7, 11])
    dataset = ListDataset([{"input_ids": ids[i], "attention_mask": torch.ones(12, dtype=torch.long),
                            "labels": labels[i]} for i in range(8)])
    initial = {name: p.detach().clone() for name, p in SmoLM135ForCausalLM.from_pretrained(folder).named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Trainer's notes on running on a CPU
        whole = fine_tune(folder, tmp_path / "whole", 4, 1, dataset)
        accumulated = fine_tune(folder, tmp_path / "accumulated", 2, 2, dataset)
    assert any(not torch.equal(whole[name], initial[name]) for name in whole), "training changed nothing"
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-5, atol=1e-6, msg=name)


# ------------------------------------------------------------------ loading, export, attention paths


def test_a_checkpoint_without_the_tied_embedding_reports_it_missing_and_still_runs(folder, tmp_path):
    weights = load_file(folder / "model.safetensors")
    assert "model.lm_head.weight" not in weights  # tied: stored once, as the embedding
    del weights[EMBEDDING_KEY]
    for name in ("config.json", "generation_config.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model, info = SmoLM135ForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert EMBEDDING_KEY in info["missing_keys"]
    embedding = model.get_input_embeddings().weight
    assert embedding.device.type == "cpu" and embedding.std() > 0  # initialised, not left on the meta device
    assert model.get_output_embeddings().weight is embedding
    with torch.no_grad():
        assert torch.isfinite(model(random_ids()).logits).all()


@pytest.mark.slow
def test_torch_export_with_a_padding_mask_gives_the_eager_logits(model):
    input_ids, mask = random_ids(), left_padded_mask()
    kwargs = {"input_ids": input_ids, "attention_mask": mask, "use_cache": False}
    with torch.no_grad():
        exported = torch.export.export(model, (), kwargs).module()
        expected = model(**kwargs).logits
        got = exported(**kwargs).logits
        unpadded = exported(input_ids=input_ids, attention_mask=torch.ones_like(mask), use_cache=False).logits
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(unpadded, model(input_ids).logits)


def count_sdpa_calls(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    return calls


def test_eager_attention_gives_the_sdpa_results_without_sdpa(folder, monkeypatch):
    sdpa_model = SmoLM135ForCausalLM.from_pretrained(folder).eval()
    eager_model = SmoLM135ForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    assert (sdpa_model.config._attn_implementation, eager_model.config._attn_implementation) == ("sdpa", "eager")
    input_ids, mask = random_ids(), left_padded_mask()
    next_mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)

    def prompt_then_one_token(model):
        with torch.no_grad():
            cache = DynamicCache(config=model.config)
            prompt = model(input_ids, attention_mask=mask, cache=cache)
            step = model(input_ids[:, :1], attention_mask=next_mask, cache=cache)
            causal = model(input_ids)
        return prompt.logits, step.logits, causal.logits

    calls = count_sdpa_calls(monkeypatch)
    expected = prompt_then_one_token(sdpa_model)
    assert calls, "the sdpa model must attend through scaled_dot_product_attention"
    calls.clear()
    got = prompt_then_one_token(eager_model)
    assert not calls, "eager attention must not call scaled_dot_product_attention"
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    eager_model.set_attn_implementation("sdpa")  # and back, on a loaded model
    prompt_then_one_token(eager_model)
    assert calls


def test_flash_attention_is_refused_at_load_time(folder):
    with pytest.raises(ValueError, match="does not support Flash Attention"):
        SmoLM135ForCausalLM.from_pretrained(folder, attn_implementation="flash_attention_2")


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_enable_applies_its_options_and_keeps_the_gradients(model, use_reentrant):
    model.train()
    input_ids = random_ids()
    block_runs = []
    for block in model.model.transformer.h:
        block.register_forward_pre_hook(lambda *_: block_runs.append(1))

    def gradients():
        model.zero_grad()
        block_runs.clear()
        out = model(input_ids, labels=input_ids, output_hidden_states=True)
        out.loss.backward()
        return [p.grad.clone() for p in model.parameters()], out.hidden_states[1].grad_fn.name(), len(block_runs)

    plain, plain_grad_fn, plain_runs = gradients()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # 5.24 prefers the name activation_checkpointing_enable
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    checkpointed, grad_fn, runs = gradients()
    n_layer = model.config.num_hidden_layers
    assert (plain_runs, runs) == (n_layer, 2 * n_layer)  # every block is recomputed in the backward pass
    assert ("CheckpointFunction" in grad_fn) == use_reentrant and "CheckpointFunction" not in plain_grad_fn
    for a, b in zip(checkpointed, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
