"""LoRA through peft: adapters alone train on the same loop and checkpoints, a resume is exact, a checkpoint keeps
our plain names and loads merged, and the adapters export merged or as a peft folder for transformers' Llama."""
from __future__ import annotations

import pytest
import torch

from conftest import random_rotary_model, tiny_train_config
from smollm135_model import PRESETS, Block, SmoLM135_Model
from smolm135.checkpoint import Checkpoint, load_checkpoint, save_atomic
from smolm135.errors import UserError
from smolm135.lora import (
    BLOCK_PROJECTIONS,
    LoraSettings,
    adapter_record,
    add_adapters,
    has_adapters,
    split_state_dict,
)
from smolm135.training.config import validate

SETTINGS = LoraSettings(rank=4, alpha=8.0, dropout=0.0, targets=BLOCK_PROJECTIONS)


def lora_checkpoint(seed: int = 0) -> tuple[Checkpoint, SmoLM135_Model]:
    """A random tiny-rotary model with random (nonzero) adapters, as a checkpoint, and the model with them."""
    model = random_rotary_model(seed)
    add_adapters(model, SETTINGS, seed)
    with torch.no_grad():  # B starts at zero (the update is 0): make it count
        for name, parameter in model.named_parameters():
            if ".lora_B." in name:
                parameter.normal_(0, 0.05)
    base, adapters = split_state_dict(model)
    checkpoint = Checkpoint(base, model.config.to_dict(), lora=adapter_record(SETTINGS, adapters))
    return checkpoint, model.eval()


def test_the_default_targets_are_the_linear_layers_of_a_block():
    block = Block(PRESETS["tiny-rotary"])
    linear_layers = {name.rsplit(".", 1)[-1] for name, module in block.named_modules()
                     if isinstance(module, torch.nn.Linear)}
    assert set(BLOCK_PROJECTIONS) == linear_layers


def test_adapters_alone_train_and_the_checkpoint_keeps_plain_names():
    checkpoint, model = lora_checkpoint()
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    plain = SmoLM135_Model(PRESETS["tiny-rotary"]).state_dict()
    assert set(checkpoint.model_state_dict) == set(plain)  # the base under our own names
    assert all(name.startswith("transformer.h.") and name.endswith((".lora_A.weight", ".lora_B.weight"))
               for name in checkpoint.lora["state_dict"])  # no peft wrapper prefix, no adapter name


def test_a_lora_checkpoint_loads_as_a_plain_model_with_its_adapters_merged(tmp_path):
    checkpoint, with_adapters = lora_checkpoint()
    loaded = load_checkpoint(save_atomic(checkpoint, tmp_path / "lora.pt"))  # weights_only, validated
    merged = loaded.build_model()
    assert not has_adapters(merged) and type(merged.transformer.h[0].attn.qkv_proj).__module__ == "smollm135_model"
    input_ids = torch.randint(0, merged.config.vocab_size, (2, 24))
    with torch.no_grad():
        unmerged_logits, merged_logits = with_adapters(input_ids)[0], merged(input_ids)[0]
        base_logits = random_rotary_model(0)(input_ids)[0]
    torch.testing.assert_close(merged_logits, unmerged_logits, atol=1e-5, rtol=0)
    assert (merged_logits - base_logits).abs().max() > 1e-2  # the adapters did change the model


def test_a_checkpoint_whose_adapters_do_not_fit_its_rank_is_refused(tmp_path):
    checkpoint, _ = lora_checkpoint()
    checkpoint.lora["settings"]["rank"] = 10**9  # would allocate 10^9 x (in + out) per layer
    with pytest.raises(UserError, match="lora"):
        load_checkpoint(save_atomic(checkpoint, tmp_path / "hostile.pt"))


def test_the_peft_adapter_folder_on_transformers_llama_of_the_base_gives_the_merged_logits(tmp_path):
    from smolm135.interop.convert import peft_adapter_logits, write_peft_adapter

    checkpoint, _ = lora_checkpoint()
    merged = checkpoint.build_model()
    folder = write_peft_adapter(checkpoint, merged, tmp_path / "adapter", say=lambda _: None)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {path.name for path in folder.iterdir()}
    base = random_rotary_model(0)
    ours, theirs = peft_adapter_logits(base, merged, folder, length=24)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_bad_lora_flags_are_named_together(corpus_file, tmp_path):
    cfg = tiny_train_config(corpus_file, tmp_path, lora_rank=4, lora_alpha=0.0, lora_dropout=1.0,
                            lora_targets="qkv_proj,lm_head")
    with pytest.raises(UserError) as error:
        validate(cfg)
    assert all(flag in str(error.value) for flag in ("--lora-alpha", "--lora-dropout", "--lora-targets"))
    with pytest.raises(UserError, match="--lora-rank"):
        validate(tiny_train_config(corpus_file, tmp_path, lora_rank=-1))


# ------------------------------------------------------------------ on the training loop

def lora_run_config(corpus_file, out_dir, **overrides):
    """Four steps of a tiny-rotary LoRA run (dropout on, so the random generators' state must resume too)."""
    values = dict(preset="tiny-rotary", max_steps=4, lr_decay_steps=4, batch_size=2, seq_len=16, warmup_steps=1,
                  lr=1e-2, eval_every=2, eval_batches=1, checkpoint_every=2, sample_every=100, sample_tokens=4,
                  lora_rank=4, lora_alpha=8.0, lora_dropout=0.1)
    return tiny_train_config(corpus_file, out_dir, **{**values, **overrides})


@pytest.mark.slow
def test_a_lora_run_stopped_and_resumed_ends_bitwise_equal_to_an_uninterrupted_one(corpus_file, tmp_path):
    from smolm135.training.trainer import train

    _, uninterrupted = train(lora_run_config(corpus_file, tmp_path / "whole"))
    train(lora_run_config(corpus_file, tmp_path / "parts", max_steps=2))
    _, resumed = train(lora_run_config(corpus_file, tmp_path / "parts"))
    assert resumed["start_step"] == 2
    a = load_checkpoint(uninterrupted["final_model_path"])
    b = load_checkpoint(resumed["final_model_path"])
    assert set(a.lora["state_dict"]) == set(b.lora["state_dict"])
    for name, tensor in a.lora["state_dict"].items():
        assert torch.equal(tensor, b.lora["state_dict"][name]), name
    for name, tensor in a.model_state_dict.items():
        assert torch.equal(tensor, b.model_state_dict[name]), name
    moments_a = [v for s in a.optimizer_state_dict["state"].values() for v in s.values()]
    moments_b = [v for s in b.optimizer_state_dict["state"].values() for v in s.values()]
    assert moments_a and all(torch.equal(x, y) for x, y in zip(moments_a, moments_b, strict=True))
    # the base stayed as it started (the seed's initial weights); the optimizer held the adapters alone
    torch.manual_seed(1337)
    initial = SmoLM135_Model(PRESETS["tiny-rotary"]).state_dict()
    assert all(torch.equal(initial[name], tensor) for name, tensor in a.model_state_dict.items())
    assert len(a.optimizer_state_dict["state"]) == len(a.lora["state_dict"])
    # the same folder without --lora-rank is refused, not trained on the base alone
    with pytest.raises(UserError, match="LoRA rank 4"):
        train(lora_run_config(corpus_file, tmp_path / "parts", max_steps=6, lora_rank=0))


@pytest.mark.slow
def test_a_lora_run_from_a_checkpoint_without_adapters_adapts_its_weights_from_step_0(corpus_file, tmp_path):
    from dataclasses import replace

    from conftest import CHAT_VOCAB_SIZE, save_tiny_chat_checkpoint
    from smolm135.training.trainer import train

    source = load_checkpoint(save_tiny_chat_checkpoint(tmp_path / "plain.pt"))
    model = replace(PRESETS["tiny-rotary"], vocab_size=CHAT_VOCAB_SIZE)
    _, summary = train(lora_run_config(corpus_file, tmp_path / "run", model=model, init_from=source.source,
                                       max_steps=1))
    assert summary["start_step"] == 0
    final = load_checkpoint(summary["final_model_path"])
    assert final.progress.step == 1 and final.lora is not None
    assert all(torch.equal(tensor, final.model_state_dict[name]) for name, tensor in source.model_state_dict.items())


def test_the_peft_adapter_export_of_a_checkpoint_without_adapters_is_one_line(tmp_path):
    from conftest import save_tiny_chat_checkpoint
    from smolm135.interop.convert import main

    path = save_tiny_chat_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(UserError, match="has no LoRA adapters.*--lora-rank"):
        main(["--checkpoint", str(path), "--output-dir", str(tmp_path / "hf"), "--peft-adapter",
              str(tmp_path / "adapter")])
    assert not (tmp_path / "hf").exists()  # refused before anything is written


@pytest.mark.slow
def test_the_export_of_a_lora_checkpoint_is_the_merged_model_and_its_peft_adapter(tmp_path):
    from transformers import AutoModelForCausalLM

    from smolm135.interop.convert import convert

    checkpoint, _ = lora_checkpoint()  # GPT-2's tokenizer (no record), which fits the 50,304-row embedding
    path = save_atomic(checkpoint, tmp_path / "lora.pt")
    folder = convert(path, tmp_path / "hf", say=lambda _: None, peft_adapter=tmp_path / "adapter")
    exported = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    merged = checkpoint.build_model()
    input_ids = torch.randint(0, merged.config.vocab_size, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids).logits, merged(input_ids)[0], atol=1e-4, rtol=0)
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_lora_on_a_pretrained_llama_exports_an_adapter_that_peft_loads_on_that_very_folder(corpus_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from conftest import make_corpus_text
    from smolm135.interop.convert import MAX_LOGIT_DIFFERENCE, write_peft_adapter
    from smolm135.training.trainer import train
    from smolm135.interop.pretrained import load_pretrained
    from test_smollm import save_tiny_llama

    folder = tmp_path / "llama"
    save_tiny_llama(folder, make_corpus_text(400))
    _, summary = train(lora_run_config(corpus_file, tmp_path / "run", preset="smolm135", init_from=str(folder),
                                       max_steps=2, lora_dropout=0.0))
    checkpoint = load_checkpoint(summary["final_model_path"])
    pretrained = load_pretrained(str(folder)).state_dict
    assert all(torch.equal(tensor, checkpoint.model_state_dict[name]) for name, tensor in pretrained.items())
    merged = checkpoint.build_model()
    write_peft_adapter(checkpoint, merged, tmp_path / "adapter", say=lambda _: None)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
                                        str(tmp_path / "adapter")).eval()
    input_ids = torch.randint(0, 300, (1, 20))
    with torch.no_grad():
        theirs, ours = adapted(input_ids).logits, merged(input_ids)[0]
        base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()(input_ids).logits
    # two implementations (transformers' Llama with peft's unmerged adapters, ours merged): the export's limit
    torch.testing.assert_close(theirs, ours, atol=MAX_LOGIT_DIFFERENCE, rtol=0)
    assert (ours - base).abs().max() > 10 * MAX_LOGIT_DIFFERENCE  # two steps at 1e-2 moved the adapters
