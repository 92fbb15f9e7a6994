"""Exports the ecosystem runs: a rotary model becomes a plain Llama folder (no remote code) that reloads with the
native model's logits and comes back as a checkpoint, and GGUF files that transformers' GGUF loader reads back
with the native logits and greedy tokens; bad input is one line and leaves nothing behind."""
import contextlib
import io
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
import yaml

from smolm135.interop import convert as convert_to_hf
from smolm135.interop.convert import convert, hf_folder_to_checkpoint, main, push_to_hub
from smollm135_model import PRESETS, SmoLM135_Model, padded_vocab_size
from smolm135.checkpoint import Checkpoint, TrainingFacts, load_checkpoint, save_atomic
from smolm135.errors import UserError, run_cli
from smolm135.interop.export_gguf import GREEDY_STEPS, greedy_departures, native_greedy, write_gguf
from smolm135.interop.llama_names import llama_to_native, native_to_llama
from smolm135.interop.model_card import render_model_card
from smolm135.data.tokenizer import END_OF_TEXT, GPT2TextTokenizer

from conftest import make_corpus_text, random_rotary_model, smollm_style_tokenizer
from hub_fakes import RecordingHfApi, offline_api, unset_token

TINY_ROTARY = PRESETS["tiny-rotary"]
REPO_ID = "you/llama-hf"


@pytest.fixture(scope="module")
def rotary_tokenizer():
    """A SmolLM-style tokenizer of a few hundred tokens: each check of an export reads the GGUF file's
    vocabulary twice through the gguf package, which takes seconds for GPT-2's 50,257 tokens."""
    return smollm_style_tokenizer(make_corpus_text(200))


@pytest.fixture(scope="module")
def rotary_checkpoint(rotary_tokenizer, module_tmp) -> Path:
    model = random_rotary_model(config=replace(TINY_ROTARY, vocab_size=padded_vocab_size(rotary_tokenizer.n_vocab)))
    facts = TrainingFacts(data_name="generated.txt", step=3, history={"train": [[1, 10.0], [3, 9.0]], "val": []})
    record = Checkpoint.from_facts(model, facts, converted_from="test", tokenizer=rotary_tokenizer.to_record())
    return save_atomic(record, module_tmp.mktemp("ckpt") / "final_model_20260101_000000.pt")


@pytest.fixture(scope="module")
def llama_export(rotary_checkpoint, module_tmp):
    """The command line, as a user runs it: export with three GGUF files, verify, push (to a recorder)."""
    folder = module_tmp.mktemp("exports") / "llama-hf"
    RecordingHfApi.calls = []
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(huggingface_hub, "HfApi", RecordingHfApi)
        main(["--checkpoint", str(rotary_checkpoint), "--output-dir", str(folder), "--gguf", "f32", "q8_0", "bf16",
              "--push-to-hub", REPO_ID, "--token", "hf_test_token"])
    return SimpleNamespace(folder=folder, messages=printed.getvalue().splitlines(), calls=list(RecordingHfApi.calls))


def test_name_table_splits_and_joins_back_exactly():
    state = random_rotary_model().state_dict()
    llama = native_to_llama(state, TINY_ROTARY)
    assert llama["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 32, 128)  # 2 kv heads of 32
    assert llama["model.layers.3.mlp.up_proj.weight"].shape == (384, 128)
    back = llama_to_native(lambda name: llama.pop(name), TINY_ROTARY)
    assert not llama  # every Llama tensor has its place
    assert set(back) == set(state)
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor), name


@pytest.mark.slow
def test_rotary_export_is_a_plain_llama_folder_verified_in_a_fresh_process(llama_export, rotary_tokenizer):
    folder, messages = llama_export.folder, llama_export.messages
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert "auto_map" not in config
    assert not list(folder.glob("*.py"))  # no code travels with it
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == list(rotary_tokenizer.end_token_ids)  # its end of turn, of text
    verified = next(m for m in messages if "LlamaForCausalLM" in m)
    assert "plain LlamaForCausalLM" in verified and "pipeline" in verified
    difference = float(verified.split("native model ")[1].split(" ")[0])
    assert difference <= 1e-4


def card_tags(card: str) -> list[str]:
    return yaml.safe_load(card.split("---\n")[1])["tags"]


@pytest.mark.slow
def test_llama_export_card_names_runtimes_without_remote_code(llama_export):
    card = (llama_export.folder / "README.md").read_text()
    assert "custom_code" not in card_tags(card) and {"llama", "gguf"} <= set(card_tags(card))
    assert "trust_remote_code=True" not in card and "modeling_smolm135" not in card
    assert "rotary positions" in card
    runtimes = card.split("## Runtimes")[1]
    for runtime, snippet in (("**transformers**", 'pipeline("text-generation", model="you/llama-hf")'),
                             ("**vLLM**", 'LLM(model="you/llama-hf"'),
                             ("**llama.cpp** and **ollama**", "llama-cli -m llama-hf-q8_0.gguf"),
                             ("**llama.cpp** and **ollama**", "ollama create my-model -f Modelfile")):
        assert runtime in runtimes and snippet in runtimes, snippet


def test_a_learned_position_card_keeps_the_remote_code_tag_and_snippets():
    learned = render_model_card(PRESETS["tiny"], 1, TrainingFacts(), "you/m", "m", "mit", False)
    rotary = render_model_card(TINY_ROTARY, 1, TrainingFacts(), "you/m", "m", "mit", False)
    assert "custom_code" in card_tags(learned) and "trust_remote_code=True" in learned
    assert "custom_code" not in card_tags(rotary) and "gguf" not in card_tags(rotary)  # no .gguf files written


def test_the_card_names_where_a_model_started_and_its_own_tokenizer():
    from conftest import tiny_chat_tokenizer

    started = TrainingFacts(train_config={"init_from": "smollm2-135m-instruct"})
    card = render_model_card(TINY_ROTARY, 1, started, "you/m", "m", "mit", False, tokenizer=tiny_chat_tokenizer())
    assert "starting from smollm2" in card and "from scratch" not in card
    assert "GPT-2" not in card and f"{tiny_chat_tokenizer().n_vocab:,} tokens" in card
    scratch = render_model_card(PRESETS["tiny"], 1, TrainingFacts(train_config={}), "you/m", "m", "mit", False)
    assert "trained from scratch" in scratch and "GPT-2's byte-level BPE" in scratch


@pytest.mark.slow
def test_llama_export_comes_back_as_the_same_checkpoint(llama_export, rotary_checkpoint, tmp_path):
    folder = llama_export.folder
    path = hf_folder_to_checkpoint(folder, tmp_path / "back.pt")
    back, original = load_checkpoint(path), load_checkpoint(rotary_checkpoint)
    assert back.model_config == original.model_config
    assert back.progress.step == 3
    for name, tensor in original.model_state_dict.items():
        assert torch.equal(back.model_state_dict[name].float(), tensor.float()), name


def one_error_line(capsys, argv) -> str:
    """What the command line prints for `argv` that must fail: one line on stderr, exit status 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(argv))
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1 and "Traceback" not in error, error
    return error


@pytest.mark.slow
def test_from_hf_with_corrupt_weights_is_one_line_and_writes_nothing(llama_export, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in llama_export.folder.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    argv = ["--from-hf", str(broken), "--output", str(tmp_path / "out.pt")]
    assert "corrupt or truncated" in one_error_line(capsys, argv)
    assert not (tmp_path / "out.pt").exists()
    (broken / "config.json").write_text("{ not json")
    assert "export it again" in one_error_line(capsys, argv)
    assert list(tmp_path.iterdir()) == [broken]


def test_export_into_a_foreign_non_empty_folder_is_refused(rotary_checkpoint, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        convert(rotary_checkpoint, target, say=lambda _: None)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_gguf_files_read_back_with_native_logits_and_greedy_tokens(llama_export):
    folder, messages = llama_export.folder, llama_export.messages
    checks = {m.split(".gguf")[0].rsplit("-", 1)[1]: m for m in messages if ".gguf" in m}
    assert set(checks) == {"f32", "q8_0", "bf16"}
    for gguf_type, message in checks.items():
        assert (folder / f"llama-hf-{gguf_type}.gguf").is_file()
        difference = float(message.split("logit difference ")[1].split(" ")[0])
        limit = float(message.split("(limit ")[1].split(")")[0])
        assert difference <= limit
    assert float(checks["f32"].split("logit difference ")[1].split(" ")[0]) <= 1e-4
    assert "16 greedy tokens" in checks["f32"] and "16 greedy tokens" in checks["q8_0"]
    assert not list(folder.glob(".*tmp*"))
    card = (folder / "README.md").read_text()
    assert "llama-hf-q8_0.gguf" in card and "llama-cli" in card and "ollama" in card


def test_greedy_tokens_may_differ_only_where_the_native_best_two_are_closer_than_the_limit():
    rows = torch.tensor([[32.215, 32.189, 0.0], [5.0, 3.0, 1.0]])  # (steps, V): a fine-tuned model's near tie
    assert greedy_departures(rows, [1, 0], limit=1.8) == []  # q8_0's limit: the tie may go either way
    assert greedy_departures(rows, [1, 1], limit=1.8) == [(1, 2.0)]  # a token 2.0 below the best may not
    ((step, shortfall),) = greedy_departures(rows, [1, 0], limit=1e-4)  # f32's limit: no tie that wide
    assert step == 0 and shortfall == pytest.approx(0.026, abs=1e-3)


def near_tie_model(vocab_size: int, second: int, best: int) -> SmoLM135_Model:
    """A tiny rotary model whose next token is always `best`, a near tie with `second` that q8_0 rounds to an
    exact one: the blocks add nothing, the head reads one dimension of the last token's embedding, and the two
    tokens' rows differ by 0.001 in it, less than q8_0's step there."""
    model = random_rotary_model(config=replace(TINY_ROTARY, vocab_size=vocab_size))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                parameter.zero_()
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.weight[1] = 1.0
        embedding = model.transformer.wte.weight  # (V, C), tied to the head
        embedding[:, 1].uniform_(0.1, 0.3)  # every token positive there: the highest row there wins
        embedding[best] = embedding[second]
        embedding[[second, best], 2] = 2.0  # their q8_0 blocks' largest value: one scale, 2 / 127, for both
        embedding[second, 1], embedding[best, 1] = 0.9, 0.901  # 57.15 and 57.21 steps of it: both round to 57
    return model


@pytest.mark.slow
def test_a_gguf_that_fails_its_check_is_removed_and_named_and_a_near_tie_is_no_failure(rotary_tokenizer, tmp_path,
                                                                                      monkeypatch, capsys):
    model = near_tie_model(padded_vocab_size(rotary_tokenizer.n_vocab), second=100, best=101)
    checkpoint = save_atomic(Checkpoint.from_facts(model, TrainingFacts(), converted_from="test",
                                                   tokenizer=rotary_tokenizer.to_record()), tmp_path / "model.pt")
    write_gguf_whole = convert_to_hf.write_gguf

    def write_two_broken(native, tokenizer, path, gguf_type, name):
        if gguf_type == "bf16":  # another model's weights: logits far from the native ones
            return write_gguf_whole(random_rotary_model(1, native.config), tokenizer, path, gguf_type, name)
        write_gguf_whole(native, tokenizer, path, gguf_type, name)
        if gguf_type == "f16":  # torn: it does not load
            path.write_bytes(path.read_bytes()[:4096])
        return path

    monkeypatch.setattr(convert_to_hf, "write_gguf", write_two_broken)
    folder = tmp_path / "tie-hf"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(["--checkpoint", str(checkpoint), "--output-dir", str(folder),
                              "--gguf", "f32", "q8_0", "f16", "bf16"]))
    printed = capsys.readouterr()
    assert exit_info.value.code == 2 and printed.err.count("\n") == 1 and "Traceback" not in printed.err, printed.err
    assert "tie-hf-f16.gguf: it did not load" in printed.err
    assert "tie-hf-bf16.gguf: the exported model's logits differ" in printed.err
    assert "removed tie-hf-f16.gguf, tie-hf-bf16.gguf" in printed.err
    assert "with tie-hf-f32.gguf, tie-hf-q8_0.gguf, which passed theirs" in printed.err
    files = {path.name for path in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tie-hf-f32.gguf", "tie-hf-q8_0.gguf"} <= files
    assert not {"tie-hf-f16.gguf", "tie-hf-bf16.gguf"} & files
    card = (folder / "README.md").read_text()
    assert "tie-hf-q8_0.gguf" in card and "tie-hf-bf16.gguf" not in card
    assert native_greedy(model, rotary_tokenizer.encode("any text")) == [101] * GREEDY_STEPS
    (q8_0,) = [line for line in printed.out.splitlines() if "tie-hf-q8_0.gguf (" in line]
    assert f"the same {GREEDY_STEPS} greedy tokens (up to {GREEDY_STEPS} near ties within the limit)" in q8_0
    (f32,) = [line for line in printed.out.splitlines() if "tie-hf-f32.gguf (" in line]
    assert f32.endswith(f"the same {GREEDY_STEPS} greedy tokens")


@pytest.mark.slow
def test_gguf_file_holds_llama_metadata_and_gpt2_tokenizer(tmp_path):
    from gguf import GGUFReader

    path = write_gguf(random_rotary_model(), GPT2TextTokenizer(), tmp_path / "m.gguf", "f32", "m")
    reader = GGUFReader(path)
    text = lambda key: bytes(reader.fields[key].parts[reader.fields[key].data[0]]).decode()  # noqa: E731
    assert text("general.architecture") == "llama"
    assert text("tokenizer.ggml.model") == "gpt2" and text("tokenizer.ggml.pre") == "gpt-2"
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == TINY_ROTARY.vocab_size
    assert int(reader.fields["llama.block_count"].parts[-1][0]) == TINY_ROTARY.n_layer


def test_gguf_of_a_smollm_style_tokenizer_types_its_tokens_as_llama_cpp_converter_does(tmp_path):
    from gguf import GGUFReader, TokenType

    tokenizer = smollm_style_tokenizer(make_corpus_text(200))
    config = replace(TINY_ROTARY, vocab_size=padded_vocab_size(tokenizer.n_vocab))
    path = write_gguf(random_rotary_model(config=config), tokenizer, tmp_path / "m.gguf", "f32", "m")
    reader = GGUFReader(path)
    pre = reader.fields["tokenizer.ggml.pre"]
    assert bytes(pre.parts[pre.data[0]]).decode() == "smollm"  # digits one by one, then GPT-2's split
    types = reader.fields["tokenizer.ggml.token_type"]
    kind = [TokenType(int(types.parts[i][0])) for i in types.data]
    for token, expected in (("<|im_start|>", TokenType.CONTROL), ("<|im_end|>", TokenType.CONTROL),
                            (END_OF_TEXT, TokenType.CONTROL), ("<think>", TokenType.USER_DEFINED),
                            ("a", TokenType.NORMAL)):
        assert kind[tokenizer.token_id(token)] == expected, token
    assert kind[tokenizer.n_vocab:] == [TokenType.UNUSED] * (config.vocab_size - tokenizer.n_vocab)


def test_learned_position_model_to_gguf_is_one_line_pointing_at_rotary_presets(tmp_path):
    torch.manual_seed(0)
    learned = SmoLM135_Model(PRESETS["tiny"]).eval()
    path = save_atomic(Checkpoint.from_facts(learned, TrainingFacts(), converted_from="test"), tmp_path / "m.pt")
    with pytest.raises(UserError, match="tiny-rotary"):
        main(["--checkpoint", str(path), "--output-dir", str(tmp_path / "out"), "--gguf", "q8_0"])
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ the Hub


@pytest.mark.slow
def test_push_uploads_the_gguf_files_with_the_folder(llama_export):
    calls = dict(llama_export.calls)
    assert calls["create_repo"]["repo_id"] == REPO_ID and calls["create_repo"]["token"] == "hf_test_token"
    uploaded = set(calls["upload_folder"]["files"])
    assert {"llama-hf-f32.gguf", "llama-hf-q8_0.gguf", "llama-hf-bf16.gguf"} <= uploaded
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "training_info.json"} <= uploaded
    assert f"pushed {llama_export.folder} to https://huggingface.co/{REPO_ID}" in llama_export.messages


def test_push_with_gguf_but_no_token_is_one_line_before_anything_is_exported(rotary_checkpoint, tmp_path, capsys,
                                                                             monkeypatch):
    unset_token(monkeypatch)
    error = one_error_line(capsys, ["--checkpoint", str(rotary_checkpoint), "--output-dir", str(tmp_path / "out"),
                                    "--gguf", "q8_0", "--push-to-hub", REPO_ID])
    assert "needs a Hugging Face token" in error and "nothing was exported" in error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_push_of_a_gguf_export_without_network_is_one_line_and_keeps_every_file(llama_export, capsys):
    before = sorted(p.name for p in llama_export.folder.iterdir())
    with pytest.raises(SystemExit):
        run_cli(lambda: push_to_hub(llama_export.folder, REPO_ID, token="hf_x", api=offline_api()))
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "could not reach the Hugging Face Hub" in error and "is complete" in error
    assert sorted(p.name for p in llama_export.folder.iterdir()) == before
