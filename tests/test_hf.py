"""The Hugging Face side: the transformers model is the native model (same logits, same greedy tokens with
and without a cache, with left padding), the exported folder loads anywhere through the Auto classes and
pipeline(), the conversion verifies itself, the Hub upload goes where it should, and a folder comes back
as a native checkpoint."""
import contextlib
import copy
import io
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
import yaml
from huggingface_hub.errors import HfHubHTTPError
from safetensors import safe_open
from transformers import DynamicCache

from smolm135.interop.convert import (
    build_hf_tokenizer,
    check_logits_match,
    check_output_dir,
    default_output_dir,
    find_newest_model,
    hf_folder_to_checkpoint,
    hf_model_from_native,
    main,
    push_to_hub,
)
from modeling_smolm135 import CACHE_OUTPUT_FIELD
from smollm135_model import PRESETS, ModelConfig, build_model
from smolm135.checkpoint import load_checkpoint
from smolm135.errors import UserError, run_cli
from smolm135.runtime.fresh_process import run_fresh
from smolm135.interop.model_card import USAGE_PROMPT
from smolm135.data.tokenizer import get_tokenizer

from conftest import REPO_ROOT
from hub_fakes import FailingHfApi, RecordingHfApi, http_library, offline_api, unset_token

PROMPTS = ["The cat", "A young bird follows the", "My friend remembers an old song at"]
VARIED_TEXTS = ["Hello world, this is a test.", "Ünïcödé ✓ 日本語 naïve café", "emoji 🤖🎉👍🏽 family 👨‍👩‍👧",
                "def f(x):\n\treturn {'a': x ** 2}  # code\n", "  leading   spaces\n\n\n\ttabs \r\n trailing  ",
                "one<|endoftext|>two", ""]
REPO_ID = "me/smolm135-tiny"


def greedy(model, input_ids, attention_mask=None, max_new_tokens=12, **kwargs):
    out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=False,
                         **kwargs)
    return out[:, input_ids.shape[1]:]  # (B, new)


@pytest.fixture(scope="module")
def native(trained_run):
    _, _, summary, _ = trained_run
    return load_checkpoint(summary["final_model_path"]).build_model()


@pytest.fixture(scope="module")
def hf_model(native):
    return hf_model_from_native(native)


@pytest.fixture(scope="module")
def hf_tokenizer():
    return build_hf_tokenizer(PRESETS["tiny"].block_size)


def encode(prompt: str) -> torch.Tensor:
    return torch.tensor([get_tokenizer().encode_ordinary(prompt)])  # (1, T)


# ------------------------------------------------------------------ the model


def test_an_untrained_models_transformers_twin_gives_its_logits_and_greedy_tokens():
    """The promises below on a fresh one-layer model, without the trained run: the default run keeps them."""
    torch.manual_seed(0)
    native = build_model("tiny", n_layer=1).eval()
    hf_model = hf_model_from_native(native)
    input_ids = torch.randint(0, 50257, (2, 24))
    with torch.no_grad():
        expected, _ = native(input_ids)
        got = hf_model(input_ids).logits
    assert torch.equal(got, expected)
    prompt = encode(PROMPTS[1])
    cached = greedy(hf_model, prompt, use_cache=True)
    assert torch.equal(cached, greedy(hf_model, prompt, use_cache=False))
    assert torch.equal(cached, native.generate(prompt, max_new_tokens=12, temperature=0)[:, prompt.shape[1]:])


@pytest.mark.slow
def test_transformers_model_gives_exactly_the_native_logits(native, hf_model):
    input_ids = torch.randint(0, 50257, (2, 24))
    with torch.no_grad():
        expected, _ = native(input_ids)
        got = hf_model(input_ids).logits
    assert torch.equal(got, expected)


@pytest.mark.slow
def test_weights_are_tied_and_attention_runs_through_sdpa(hf_model):
    assert hf_model.get_output_embeddings().weight is hf_model.get_input_embeddings().weight
    assert hf_model._tied_weights_keys == {"model.lm_head.weight": "model.transformer.wte.weight"}
    assert hf_model.config._attn_implementation == "sdpa"
    assert hf_model.can_generate()


@pytest.mark.slow
def test_cached_and_uncached_greedy_generation_are_identical_and_match_native(native, hf_model):
    input_ids = encode(PROMPTS[1])
    cached = greedy(hf_model, input_ids, use_cache=True)
    uncached = greedy(hf_model, input_ids, use_cache=False)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, native.generate(input_ids, max_new_tokens=12, temperature=0)[:, input_ids.shape[1]:])


@pytest.mark.parametrize("cache_argument", ["cache", "past_key_values"])
@pytest.mark.slow
def test_step_by_step_cached_logits_equal_a_full_forward(hf_model, cache_argument):
    input_ids = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        full = hf_model(input_ids).logits  # (B, T, V)
        cache = DynamicCache(config=hf_model.config)
        steps = [hf_model(input_ids[:, :6], **{cache_argument: cache}).logits]  # a prompt, then one token a step
        for t in range(6, 16):
            steps.append(hf_model(input_ids[:, t:t + 1], **{cache_argument: cache}).logits)
    assert cache.get_seq_length() == 16
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_left_padded_batch_generates_what_each_prompt_generates_alone(hf_model, hf_tokenizer):
    batch = hf_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert (batch["attention_mask"][:, 0] == 0).any(), "the prompts must need padding for this test"
    together = greedy(hf_model, batch["input_ids"], batch["attention_mask"])
    for row, prompt in enumerate(PROMPTS):
        alone = greedy(hf_model, encode(prompt))
        assert torch.equal(together[row], alone[0]), prompt


@pytest.mark.slow
def test_fully_padded_rows_give_finite_logits_and_leave_other_rows_alone(hf_model):
    input_ids = torch.randint(0, 50257, (3, 10))
    attention_mask = torch.ones(3, 10, dtype=torch.long)
    attention_mask[1] = 0  # a row that is all padding
    attention_mask[2, :4] = 0  # a left-padded row: its first 4 queries see no real token
    with torch.no_grad():
        cache = DynamicCache(config=hf_model.config)
        logits = hf_model(input_ids, attention_mask=attention_mask, cache=cache).logits
        next_mask = torch.cat([attention_mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
        next_logits = hf_model(input_ids[:, :1], attention_mask=next_mask, cache=cache).logits
        alone = hf_model(input_ids[:1]).logits
    assert torch.isfinite(logits).all() and torch.isfinite(next_logits).all()
    torch.testing.assert_close(logits[0], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_labels_give_the_native_next_token_loss(native, hf_model):
    input_ids = torch.randint(0, 50257, (2, 12))
    with torch.no_grad():
        _, expected = native(input_ids[:, :-1], input_ids[:, 1:])
        got = hf_model(input_ids, labels=input_ids).loss
    torch.testing.assert_close(got, expected)


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_gradients(hf_model):
    model = copy.deepcopy(hf_model).train()
    input_ids = torch.randint(0, 50257, (2, 12))

    def gradients():
        model.zero_grad()
        model(input_ids, labels=input_ids).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = gradients()
    # transformers 5.24 renamed gradient_checkpointing_enable (now deprecated) to activation_checkpointing_enable
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert model.model.gradient_checkpointing
    output = model(input_ids, use_cache=True)
    assert getattr(output, CACHE_OUTPUT_FIELD) is None  # checkpointed blocks cannot fill a cache
    for a, b in zip(gradients(), plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_sequence_longer_than_the_context_is_a_clear_error(hf_model):
    with pytest.raises(ValueError, match="longer than the context length"):
        hf_model(torch.zeros(1, PRESETS["tiny"].block_size + 1, dtype=torch.long))


@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_hf_tokenizer_ids_equal_tiktoken(hf_tokenizer, text):
    expected = get_tokenizer().encode(text, allowed_special="all")
    ids = hf_tokenizer(text)["input_ids"]
    assert ids == expected
    assert hf_tokenizer.decode(ids) == text


# ------------------------------------------------------------------ conversion


@pytest.fixture(scope="module")
def export(trained_run, module_tmp):
    """The command line, as a user runs it: newest model, convert, verify, push (to a recorder)."""
    _, _, summary, run_dir = trained_run
    folder = module_tmp.mktemp("export") / "smolm135-tiny-hf"
    RecordingHfApi.calls = []
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
        patch.setenv("HF_HOME", str(module_tmp.mktemp("hf_home")))  # the fresh process's module cache
        main(["--search-dir", str(run_dir), "--output-dir", str(folder), "--push-to-hub", REPO_ID, "--private",
              "--token", "hf_test_token", "--commit-message", "first upload"])
    return SimpleNamespace(folder=folder, printed=printed.getvalue(), calls=list(RecordingHfApi.calls),
                           checkpoint=Path(summary["final_model_path"]))


EXPORTED_FILES = {"model.safetensors", "config.json", "generation_config.json", "modeling_smolm135.py",
                  "smollm135_model.py", "tokenizer.json", "tokenizer_config.json",
                  "README.md", "loss.png", "training_info.json"}


@pytest.mark.slow
def test_export_writes_weights_config_with_auto_map_code_tokenizer_and_card(export):
    folder = export.folder
    assert EXPORTED_FILES <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "smolm135" and config["architectures"] == ["SmoLM135ForCausalLM"]
    assert config["auto_map"] == {"AutoConfig": "modeling_smolm135.SmoLM135Config",
                                  "AutoModelForCausalLM": "modeling_smolm135.SmoLM135ForCausalLM"}
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["num_key_value_heads"], config["max_position_embeddings"], config["vocab_size"],
            config["use_cache"], config["tie_word_embeddings"]) == (4, 128, 4, 4, 512, 50304, True, True)
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == generation["pad_token_id"] == 50256
    with safe_open(folder / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
    assert "model.transformer.wte.weight" in keys and "model.lm_head.weight" not in keys  # tied: stored once
    assert (folder / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "smollm135_model.py").read_text() == (REPO_ROOT / "smollm135_model.py").read_text()


@pytest.mark.slow
def test_model_card_has_hub_metadata_architecture_training_facts_plot_and_usage(export):
    card = (export.folder / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["license"] == "apache-2.0" and metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "text-generation" and "smolm135" in metadata["tags"]
    state = load_checkpoint(export.checkpoint).to_state()
    for fact in ("7,357,568", "| training data | corpus\\.txt |", "| steps | 30 |", f"| tokens seen | {30 * 8 * 32:,} |",
                 f"{state['train_loss']:.4f}", f"{state['val_loss']:.4f}", "![Training and validation loss](loss.png)",
                 f'model_id = "{REPO_ID}"', "trust_remote_code=True"):
        assert fact in card, fact


@pytest.mark.slow
def test_conversion_verifies_in_a_fresh_process_and_prints_the_difference(export):
    match = re.search(r"verified: .* max abs logit difference to the native model (\S+) over (\d+) tokens", export.printed)
    assert match, export.printed
    assert float(match.group(1)) <= 1e-4 and int(match.group(2)) > 10


def test_logit_check_fails_above_the_limit():
    expected = torch.zeros(5, 7)
    assert check_logits_match(expected, expected + 5e-5) == pytest.approx(5e-5)
    with pytest.raises(UserError, match="differ from the native model's by up to 0.0002"):
        check_logits_match(expected, expected + 2e-4)
    with pytest.raises(UserError, match="shape"):
        check_logits_match(expected, torch.zeros(5, 8))


@pytest.mark.slow
def test_push_creates_the_repository_and_uploads_the_complete_folder(export):
    calls = dict((name, kwargs) for name, kwargs in export.calls)
    assert calls["HfApi"]["token"] == "hf_test_token"
    assert calls["create_repo"] == {"repo_id": REPO_ID, "repo_type": "model", "private": True, "exist_ok": True,
                                    "token": "hf_test_token"}
    upload = calls["upload_folder"]
    assert (upload["repo_id"], upload["commit_message"]) == (REPO_ID, "first upload")
    assert Path(upload["folder_path"]) == export.folder
    assert EXPORTED_FILES <= set(upload["files"])
    assert f"pushed {export.folder} to https://huggingface.co/{REPO_ID}" in export.printed


_AUTO_SCRIPT = r"""
import contextlib, io, json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
out_path, folder, prompt, texts, snippet = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[5]
try:
    import smollm135_model
    report = {"repo_file_importable": True}
except ImportError:
    report = {"repo_file_importable": False}
tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
report["model_module"] = type(model).__module__
report["ids"] = [tokenizer(text)["input_ids"] for text in texts]
inputs = tokenizer(prompt, return_tensors="pt")
report["greedy"] = model.generate(**inputs, max_new_tokens=12, do_sample=False)[0].tolist()
generator = pipeline("text-generation", model=folder, trust_remote_code=True)
report["pipeline"] = generator(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]
printed = io.StringIO()
with contextlib.redirect_stdout(printed):
    exec(snippet, {})
report["snippet_output"] = printed.getvalue()
torch.save(report, out_path)
"""


@pytest.mark.slow
def test_exported_folder_loads_offline_from_anywhere_through_auto_classes_and_pipeline(export, native, tmp_path):
    card = (export.folder / "README.md").read_text()
    snippet = card.split("```python\n")[1].split("```")[0]
    snippet = snippet.replace(f'"{REPO_ID}"', json.dumps(str(export.folder)))  # the Hub repo, here a local copy
    report = run_fresh(_AUTO_SCRIPT, [str(export.folder), PROMPTS[2], json.dumps(VARIED_TEXTS), snippet],
                       lambda output: "the exported folder did not load as a user loads it",
                       extra_env={"HF_HOME": str(tmp_path / "hf_home")})  # offline, no PYTHONPATH
    assert not report["repo_file_importable"]
    assert report["model_module"].startswith("transformers_modules.")
    encoder = get_tokenizer()
    assert report["ids"] == [encoder.encode(text, allowed_special="all") for text in VARIED_TEXTS]
    prompt_ids = encode(PROMPTS[2])
    expected = native.generate(prompt_ids, max_new_tokens=12, temperature=0)[0].tolist()
    assert report["greedy"] == expected
    assert report["pipeline"] == encoder.decode(expected)
    assert report["snippet_output"].count(USAGE_PROMPT) == 2  # generate's and the pipeline's text


# ------------------------------------------------------------------ choosing what to convert, and errors


def test_newest_final_or_continued_model_is_converted_by_default(tmp_path):
    def touch(relative):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return path

    touch("models/final_model_20250101_120000.pt")
    continued = touch("continued_models/continued_model_20250102_090000.pt")
    touch("models/final_model_20241231_235959.pt")
    assert find_newest_model(tmp_path) == continued
    newer_final = touch("models/final_model_20250103_000000.pt")
    assert find_newest_model(tmp_path) == newer_final


def test_no_trained_model_is_one_clear_line_naming_what_to_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(["--search-dir", str(tmp_path)]))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no trained model" in error and "--checkpoint" in error


def test_default_output_folder_is_named_after_the_preset():
    assert default_output_dir(PRESETS["smolm135"]) == Path("smolm135-hf")
    assert default_output_dir(PRESETS["smolm135-gqa"]) == Path("smolm135-gqa-hf")
    assert default_output_dir(PRESETS["tiny"]) == Path("smolm135-tiny-hf")
    assert default_output_dir(ModelConfig(n_layer=2)) == Path("smolm135-custom-hf")


@pytest.mark.slow
def test_a_foreign_non_empty_output_folder_is_refused_but_a_previous_export_is_replaced(export, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a smolm135 export"):
        check_output_dir(tmp_path)
    check_output_dir(export.folder)  # no error: re-converting overwrites the previous export


@pytest.mark.slow
def test_push_without_a_token_is_one_clear_line_and_keeps_the_folder(export, monkeypatch, capsys):
    unset_token(monkeypatch)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda **_: pytest.fail("no upload may start without a token"))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: push_to_hub(export.folder, REPO_ID))
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1
    assert "needs a Hugging Face token" in error and "HF_TOKEN" in error and "is complete" in error
    assert EXPORTED_FILES <= {p.name for p in export.folder.iterdir()}


@pytest.mark.slow
def test_push_takes_the_token_from_hf_token(export, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    RecordingHfApi.calls = []
    push_to_hub(export.folder, REPO_ID, api=RecordingHfApi())
    assert dict(RecordingHfApi.calls)["create_repo"]["token"] == "hf_from_env"


@pytest.mark.slow
def test_push_without_network_is_one_clear_line(export, capsys):
    with pytest.raises(SystemExit):
        run_cli(lambda: push_to_hub(export.folder, REPO_ID, token="hf_x", api=offline_api()))
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "could not reach the Hugging Face Hub" in error and "is complete" in error


@pytest.mark.slow
def test_a_refused_token_is_one_clear_line(export, capsys):
    http = http_library()
    response = http.Response(401, request=http.Request("POST", "https://huggingface.co/api/repos/create"))
    refused = FailingHfApi(HfHubHTTPError("401 Unauthorized", response=response))
    with pytest.raises(SystemExit):
        run_cli(lambda: push_to_hub(export.folder, REPO_ID, token="hf_bad", api=refused))
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "HTTP 401" in error and "write access" in error


# ------------------------------------------------------------------ the way back


@pytest.mark.slow
def test_exported_folder_comes_back_as_a_native_checkpoint_with_equal_logits(export, native, tmp_path, capsys):
    path = main(["--from-hf", str(export.folder), "--output", str(tmp_path / "back.pt")])
    assert "continue_training.py --checkpoint" in capsys.readouterr().out
    state = load_checkpoint(path).to_state()  # weights_only=True
    original = load_checkpoint(export.checkpoint).to_state()
    for key in ("step", "tokens_seen", "data_name", "history", "train_loss", "val_loss"):
        assert state[key] == original[key], key
    # the recipe comes back whole, except that the export keeps file names where the run had local paths
    assert state["train_config"] == {**original["train_config"],
                                     "data": Path(original["train_config"]["data"]).name,
                                     "out_dir": Path(original["train_config"]["out_dir"]).name}
    assert state["model_config"] == original["model_config"]
    assert set(state["model_state_dict"]) == set(original["model_state_dict"])
    back = load_checkpoint(path).build_model()
    input_ids = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        assert torch.equal(back(input_ids)[0], native(input_ids)[0])
    assert back.lm_head.weight is back.transformer.wte.weight


@pytest.mark.slow
def test_from_hf_writes_where_continue_training_looks_by_default(export, tmp_path):
    path = hf_folder_to_checkpoint(export.folder, search_dir=tmp_path)
    assert path.parent == tmp_path / "models" and path.name.startswith("final_model_")
    assert find_newest_model(tmp_path) == path


def test_from_hf_refuses_a_folder_that_is_not_an_export(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        main(["--from-hf", str(tmp_path)])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damaged_file", ["model.safetensors", "config.json"])
@pytest.mark.slow
def test_from_hf_with_a_truncated_weights_or_config_file_is_one_line_and_writes_nothing(export, damaged_file,
                                                                                        tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(export.folder, broken)
    _truncate(broken / damaged_file)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(["--from-hf", str(broken), "--output", str(tmp_path / "back.pt")]))
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1 and "Traceback" not in error, error
    assert str(broken) in error and "export it again" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]
