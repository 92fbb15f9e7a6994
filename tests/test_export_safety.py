"""Exports are written whole or not at all, publish no local paths, and cannot be made to carry markup or
metadata that came from a flag or a checkpoint."""
import errno
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from smolm135.interop import convert as convert_to_hf
from smolm135.interop.convert import Verification, export, public_facts
from smollm135_model import PRESETS, padded_vocab_size
from smolm135.checkpoint import TRAINING_INFO_FILE, Checkpoint, TrainingFacts, load_checkpoint, save_atomic
from smolm135.runtime.disk import make_room, write_failure
from smolm135.errors import run_cli
from smolm135.interop.model_card import HUB_LICENSES, render_model_card

from conftest import REPO_ROOT, limit_file_size, make_corpus_text, random_rotary_model, smollm_style_tokenizer

HOSTILE_DATA_NAME = '<img src=x onerror=alert(1)> [click](javascript:alert(1)) `code` | cell\n---\nlicense: x'


@pytest.fixture(scope="module")
def trained(trained_run):
    checkpoint = load_checkpoint(trained_run[2]["final_model_path"])
    return trained_run[2]["final_model_path"], checkpoint.build_model(), checkpoint.facts


def skip_verification(monkeypatch):
    monkeypatch.setattr(convert_to_hf, "verify_hf_folder", lambda folder, native, tokenizer=None: Verification(0.0, 1, "skipped"))


def one_error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: convert_to_hf.main(argv))
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1 and "Traceback" not in error
    return error


@pytest.mark.slow
def test_a_license_that_is_not_a_hub_identifier_is_refused_before_anything_is_written(trained, tmp_path, capsys):
    checkpoint, _, _ = trained
    injected = "mit\ninference: true\n---\n# INJECTED <script>"
    error = one_error_line(capsys, ["--checkpoint", checkpoint, "--output-dir", str(tmp_path / "out"),
                                    "--license", injected])
    assert "not a license identifier the Hugging Face Hub knows" in error
    assert list(tmp_path.iterdir()) == []


def test_values_from_a_checkpoint_show_as_text_in_the_card_never_as_markup_or_metadata():
    card = render_model_card(PRESETS["tiny"], 1000, TrainingFacts(data_name=HOSTILE_DATA_NAME, step="abc"),
                             "you/model", "<b>name</b> [x](javascript:y)", "mit", False)
    _, header, body = card.split("---\n", 2)
    assert yaml.safe_load(header) == {"license": "mit", "library_name": "transformers",
                                      "pipeline_tag": "text-generation",
                                      "tags": ["smolm135", "gpt", "causal-lm", "text-generation", "custom_code"]}
    for markup in ("<img", "<b>", "](javascript:", "\n---\n", "\nlicense: x"):
        assert markup not in body, markup
    (data_row,) = [line for line in body.splitlines() if line.startswith("| training data |")]
    assert data_row.count(" | ") == 1 and data_row.count("\\|") == 1  # one cell: its pipe is escaped
    assert "| steps | not recorded |" in body


def test_every_hub_license_identifier_is_accepted():
    for license in HUB_LICENSES:
        header = render_model_card(PRESETS["tiny"], 1, TrainingFacts(), "m", "m", license, False).split("---\n")[1]
        assert yaml.safe_load(header)["license"] == license


@pytest.mark.slow
def test_training_info_keeps_file_names_not_local_paths(trained):
    _, _, facts = trained
    facts = TrainingFacts(**{**facts.to_info(), "train_config": {
        **facts.train_config, "data": "/home/me/secret/corpus.txt", "out_dir": "/home/me/runs/a",
        "init_from": "/home/me/runs/b/final.pt", "resume": "auto"}})
    recipe = public_facts(facts).train_config
    assert (recipe["data"], recipe["out_dir"], recipe["init_from"], recipe["resume"]) == (
        "corpus.txt", "a", "final.pt", "auto")
    assert "/home/me" not in json.dumps(public_facts(facts).to_info())


def write_previous_export(folder: Path) -> None:
    """What check_output_dir recognises as an earlier export: a smolm135 config.json and training facts."""
    (folder / "config.json").write_text(json.dumps({"model_type": "smolm135"}))
    (folder / TRAINING_INFO_FILE).write_text("{}")


@pytest.mark.slow
def test_a_failed_export_leaves_no_partial_folder_and_the_previous_export_intact(trained, tmp_path, monkeypatch):
    _, native, state = trained
    output = tmp_path / "smolm135-tiny-hf"
    output.mkdir()
    write_previous_export(output)
    (output / "previous.txt").write_text("the previous export")

    def broken(folder, native, tokenizer=None):
        assert (folder / "model.safetensors").is_file() and not folder.samefile(output)
        raise convert_to_hf.UserError("the export is broken")

    monkeypatch.setattr(convert_to_hf, "verify_hf_folder", broken)
    with pytest.raises(convert_to_hf.UserError, match="broken"):
        export(native, state, output, license="mit")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smolm135-tiny-hf"]
    assert sorted(p.name for p in output.iterdir()) == ["config.json", "previous.txt", TRAINING_INFO_FILE]
    skip_verification(monkeypatch)
    export(native, state, output, license="mit")  # a good export replaces the previous one whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smolm135-tiny-hf"]
    assert (output / "model.safetensors").is_file()
    assert (output / "previous.txt").is_file()  # no export writes it: the user's, kept
    assert "/" not in json.loads((output / "training_info.json").read_text())["train_config"]["out_dir"]
    assert str(tmp_path) not in (output / "README.md").read_text()


@pytest.mark.slow
def test_a_failed_gguf_file_leaves_no_partial_folder(trained, tmp_path, monkeypatch):
    _, native, state = trained
    output = tmp_path / "out-hf"
    skip_verification(monkeypatch)

    def broken_gguf(native, paths, gguf_types, tokenizer=None):
        assert paths[0].parent.name != output.name  # written inside the temporary folder, not the target
        paths[0].write_bytes(b"GGUF half-written")
        raise convert_to_hf.UserError(f"{paths[0].name}: greedy decoding differs")

    monkeypatch.setattr(convert_to_hf, "export_verified_ggufs", broken_gguf)
    with pytest.raises(convert_to_hf.UserError, match="greedy"):
        export(native, state, output, gguf_types=("q8_0",))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_leftovers_of_a_killed_export_are_tidied(trained, tmp_path, monkeypatch):
    _, native, state = trained
    output = tmp_path / "out-hf"
    partial, replaced = tmp_path / ".out-hf.partial999999999", tmp_path / ".out-hf.replaced999999999"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    replaced.mkdir()
    write_previous_export(replaced)
    convert_to_hf.tidy_interrupted_exports(tmp_path)
    assert not partial.exists() and not replaced.exists() and (output / "config.json").exists()
    skip_verification(monkeypatch)
    export(native, state, output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out-hf"]


def test_the_next_export_tidies_what_killed_exports_of_any_target_left_beside_it(tmp_path, monkeypatch):
    killed = tmp_path / ".other-hf.partial999999999"  # another target's export, killed while writing
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half")
    moved_aside = tmp_path / ".gone-hf.replaced999999998"  # killed after moving its previous export aside
    moved_aside.mkdir()
    write_previous_export(moved_aside)
    running = tmp_path / f".third-hf.partial{os.getpid()}"  # an export still running
    running.mkdir()
    (tmp_path / ".notes.partialdraft").mkdir()  # not an export's: no process id
    older = tmp_path / "older-hf_partial_999999997"  # as an earlier version named its staging folder
    older.mkdir()
    (older / "model.safetensors").write_bytes(b"half")
    (tmp_path / "olden-hf_replaced_999999996").mkdir()  # and the export it moved aside
    write_previous_export(tmp_path / "olden-hf_replaced_999999996")

    def stop(*args, **kwargs):
        raise convert_to_hf.UserError("stopped after tidying")

    monkeypatch.setattr(convert_to_hf, "write_hf_folder", stop)
    with pytest.raises(convert_to_hf.UserError, match="stopped"):
        export(random_rotary_model(), TrainingFacts(), tmp_path / "out-hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.partialdraft", running.name, "gone-hf",
                                                          "olden-hf"]
    assert (tmp_path / "gone-hf" / "config.json").is_file() and (tmp_path / "olden-hf" / "config.json").is_file()


@pytest.mark.slow
def test_an_export_over_an_earlier_one_keeps_what_the_user_added_and_says_so(tmp_path, monkeypatch):
    tokenizer = smollm_style_tokenizer(make_corpus_text(200))
    native = random_rotary_model(config=replace(PRESETS["tiny-rotary"], vocab_size=padded_vocab_size(tokenizer.n_vocab)))
    skip_verification(monkeypatch)
    output = tmp_path / "out-hf"
    export(native, TrainingFacts(history={"train": [[1, 10.0], [3, 9.0]], "val": []}), output, tokenizer=tokenizer)
    assert (output / "loss.png").is_file()
    (output / "notes.md").write_text("my notes")
    (output / "evals").mkdir()
    (output / "evals" / "results.json").write_text("{}")
    said = []
    export(native, TrainingFacts(), output, tokenizer=tokenizer, say=said.append)
    assert (output / "notes.md").read_text() == "my notes" and (output / "evals" / "results.json").is_file()
    assert not (output / "loss.png").exists()  # the earlier export's own file: it plotted another run
    assert said == [f"kept what you had added to {output} (this export does not write them): evals, notes.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out-hf"]
    # killed between putting the new export in place and carrying the files over: the next export does it
    moved_aside = tmp_path / ".out-hf.replaced999999999"
    os.replace(output, moved_aside)
    shutil.copytree(moved_aside, output, ignore=shutil.ignore_patterns("notes.md", "evals"))
    convert_to_hf.tidy_interrupted_exports(tmp_path)
    assert (output / "notes.md").read_text() == "my notes" and (output / "evals" / "results.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out-hf"]


@pytest.mark.slow
def test_an_output_dir_inside_a_file_is_one_line(trained, tmp_path, capsys):
    checkpoint, _, _ = trained
    (tmp_path / "afile").write_text("x")
    error = one_error_line(capsys, ["--checkpoint", checkpoint, "--output-dir", str(tmp_path / "afile" / "sub")])
    assert "is a file, not a folder" in error


@pytest.mark.slow
@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_exported_checkpointed_and_cached_files_have_the_mode_a_plain_open_gives(mask, tmp_path, monkeypatch):
    from smolm135.data.corpus import load_corpus
    from smolm135.interop.export_peft import save_peft_adapter
    from smolm135.lora import BLOCK_PROJECTIONS, LoraSettings, adapter_record, add_adapters, split_state_dict
    from smolm135.runtime import probes

    native, with_adapters = random_rotary_model(), random_rotary_model()
    settings = LoraSettings(rank=2, alpha=4.0, dropout=0.0, targets=BLOCK_PROJECTIONS)
    add_adapters(with_adapters, settings, seed=0)
    (tmp_path / "corpus.txt").write_text(make_corpus_text(50), encoding="utf-8")
    before = os.umask(mask)
    try:
        skip_verification(monkeypatch)
        export(native, TrainingFacts(), tmp_path / "out-hf")
        save_peft_adapter(native, adapter_record(settings, split_state_dict(with_adapters)[1]), tmp_path / "adapter")
        save_atomic(Checkpoint.from_facts(native, TrainingFacts(), converted_from="test"), tmp_path / "m.pt")
        load_corpus(str(tmp_path / "corpus.txt"), tmp_path / "cache", show_progress=False, quiet=True)
        monkeypatch.setenv(probes.CACHE_DIR_ENV, str(tmp_path / "probes"))
        probes.remembered("a question", lambda: {"answer": 1})
    finally:
        os.umask(before)
    written = [*(tmp_path / "out-hf").iterdir(), *(tmp_path / "adapter").iterdir(), tmp_path / "m.pt",
               *(tmp_path / "cache").iterdir(), tmp_path / "probes" / probes.CACHE_FILE]
    modes = {str(path.relative_to(tmp_path)): oct(path.stat().st_mode & 0o777) for path in written}
    assert {"out-hf/model.safetensors", "adapter/adapter_model.safetensors"} <= set(modes)
    assert any(name.startswith("cache/tokens_") for name in modes)
    assert modes == {name: oct(0o666 & ~mask) for name in modes}


@pytest.mark.slow
def test_a_file_size_limit_hit_during_export_is_one_line_naming_that_limit_and_leaves_nothing_behind(trained, tmp_path):
    checkpoint, _, _ = trained
    out = tmp_path / "exports" / "tiny-hf"
    out.parent.mkdir()
    result = subprocess.run([sys.executable, str(REPO_ROOT / "convert_to_hf.py"), "--checkpoint", checkpoint,
                             "--output-dir", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            preexec_fn=limit_file_size(2_000_000), env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "File too large" in lines[0] and "the file size limit (ulimit -f) is 2 MB" in lines[0]
    assert "the disk at" not in lines[0] and "needs about" in lines[0] and "raise the file size limit" in lines[0]
    assert list(out.parent.iterdir()) == []


def test_a_write_past_the_file_size_limit_names_that_limit_not_the_free_disk_space(tmp_path):
    from safetensors import SafetensorError

    # as Python's OSError and as safetensors reports it (in both wordings of its versions)
    for error in (OSError(errno.EFBIG, "File too large"),
                  SafetensorError("Error while serializing: I/O error: File too large (os error 27)"),
                  SafetensorError('IoError(Os { code: 27, kind: FileTooLarge, message: "File too large" })')):
        sentence = write_failure("the export out", tmp_path, error, 3_000_000)
        assert sentence.startswith("could not write the export out: File too large (the file size limit "
                                   "(ulimit -f) is "), sentence
        assert "free" not in sentence and "the disk at" not in sentence and "needs about 3 MB" in sentence
        assert make_room(error, "another --output-dir") == "raise the file size limit (ulimit -f unlimited)"
    full = OSError(errno.ENOSPC, "No space left on device")
    assert "the disk at" in write_failure("the export out", tmp_path, full, 3_000_000)
    assert make_room(full, "another --output-dir") == "free some space (or choose another --output-dir)"
