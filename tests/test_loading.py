"""One loader (smolm135.interop.loading) for every script, and one trust policy: a folder's own Python code runs only
when it is byte for byte this project's and its auto_map names its own files, or when the user named the
model and passed --trust-remote-code."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from smolm135.inference import demo as app
from smolm135.interop import convert as convert_to_hf
from smolm135.inference import evaluate as evaluate
from smollm135_model import PRESETS, SmoLM135_Model
from smolm135.errors import UserError, run_cli

ANOTHER_REPOSITORY = "someone/other--modeling_smolm135.SomeClass"


class FromPretrainedCalls:
    """Stands in for transformers' Auto classes: records each from_pretrained's trust_remote_code and loads
    nothing (an OSError, as for a folder transformers cannot read), so no module of the folder is ever imported."""

    def __init__(self):
        self.trust_remote_code = []

    def from_pretrained(self, *args, **kwargs):
        self.trust_remote_code.append(kwargs.get("trust_remote_code", False))
        raise OSError("stand-in: nothing loaded")


@pytest.fixture
def auto_classes(monkeypatch):
    import transformers

    calls = FromPretrainedCalls()
    for name in ("AutoModelForCausalLM", "AutoTokenizer", "AutoConfig"):
        monkeypatch.setattr(getattr(transformers, name), "from_pretrained", calls.from_pretrained)
    return calls


def folder_naming_another_repository(where: Path, model_type: str = "gpt2") -> Path:
    """Only config.json and model.safetensors, whose auto_map sends transformers to another repository's code
    (fetched from the Hub online, taken from the local cache offline)."""
    folder = where / "downloaded-hf"
    folder.mkdir()
    config = {"model_type": model_type, "auto_map": {"AutoConfig": ANOTHER_REPOSITORY,
                                                     "AutoModelForCausalLM": ANOTHER_REPOSITORY}}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def copy_of_our_code(folder: Path, auto_map_target: str) -> Path:
    from smolm135.interop.loading import OUR_CODE_DIR

    folder.mkdir()
    shutil.copy(OUR_CODE_DIR / "modeling_smolm135.py", folder / "modeling_smolm135.py")
    config = {"model_type": "smolm135", "auto_map": {"AutoModelForCausalLM": auto_map_target}}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_the_policy_trusts_only_our_own_files_named_by_their_own_auto_map(tmp_path):
    from smolm135.interop.loading import code_problem

    ours = copy_of_our_code(tmp_path / "ours", "modeling_smolm135.SmoLM135ForCausalLM")
    assert code_problem(ours, json.loads((ours / "config.json").read_text())) is None
    pointing_away = copy_of_our_code(tmp_path / "away", "someone/other--modeling_smolm135.SmoLM135ForCausalLM")
    assert "someone/other" in code_problem(pointing_away, json.loads((pointing_away / "config.json").read_text()))
    no_code = folder_naming_another_repository(tmp_path)  # no .py file at all: nothing to compare is not ours
    assert "someone/other" in code_problem(no_code, json.loads((no_code / "config.json").read_text()))
    missing = {"auto_map": {"AutoModelForCausalLM": "modeling_x.Model"}}
    assert "modeling_x.py" in code_problem(tmp_path / "ours", missing)
    with open(ours / "modeling_smolm135.py", "a", encoding="utf-8") as code:
        code.write("\n# changed\n")
    assert "modeling_smolm135.py" in code_problem(ours, {"model_type": "smolm135"})


def test_a_folder_naming_another_repositorys_code_is_not_served_by_searching(tmp_path, auto_classes):
    folder_naming_another_repository(tmp_path)
    said = []
    assert app.load_model(search_dirs=[tmp_path], device="cpu", say=said.append) is None
    assert True not in auto_classes.trust_remote_code  # transformers was never allowed to import its module
    assert any("skipping the Hugging Face folder downloaded-hf" in line and "--trust-remote-code" in line
               for line in said)


def test_evaluate_refuses_a_folder_naming_another_repositorys_code_without_the_flag(tmp_path, auto_classes,
                                                                                   capsys):
    folder = folder_naming_another_repository(tmp_path)
    (tmp_path / "text.txt").write_text("To be, or not to be.", encoding="utf-8")
    args = [str(folder), "--data", str(tmp_path / "text.txt"), "--device", "cpu", "--no-progress"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: evaluate.main(args))
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1 and "--trust-remote-code" in error, error
    assert True not in auto_classes.trust_remote_code
    # named, with the flag: the user's choice, and transformers is allowed to run the code
    with pytest.raises(UserError, match="cannot load"):
        evaluate.main([*args, "--trust-remote-code"])
    assert auto_classes.trust_remote_code and all(auto_classes.trust_remote_code)


@pytest.mark.parametrize("script", ["convert", "trainer"])
def test_the_native_readers_refuse_a_folder_naming_another_repositorys_code_without_the_flag(
        script, tmp_path, auto_classes, monkeypatch, capsys):
    from smolm135.training import trainer as Model_smollm135_trainer

    folder = folder_naming_another_repository(tmp_path, model_type="llama")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.txt").write_text("To be, or not to be.\n" * 50, encoding="utf-8")
    main = {"convert": lambda: convert_to_hf.main(["--from-hf", str(folder)]),
            "trainer": lambda: Model_smollm135_trainer.main(["--init-from", str(folder), "--data", "text.txt",
                                                             "--device", "cpu", "--no-progress"])}[script]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1 and "--trust-remote-code" in error, error
    assert True not in auto_classes.trust_remote_code


@pytest.fixture(scope="module")
def own_export(module_tmp):
    """An untrained tiny learned-position model as convert_to_hf.py writes it: code of its own, auto_map."""
    from smolm135.checkpoint import TrainingFacts

    torch.manual_seed(0)
    native = SmoLM135_Model(PRESETS["tiny"]).eval()
    folder = convert_to_hf.write_hf_folder(native, TrainingFacts(step=3), module_tmp.mktemp("export") / "tiny-hf")
    return native, folder


@pytest.mark.slow  # the export writes GPT-2's tokenizer
def test_our_own_export_loads_natively_with_no_flag_even_when_found_by_searching(own_export):
    from smolm135.interop.loading import load_model

    native, folder = own_export
    assert list(folder.glob("*.py")) and json.loads((folder / "config.json").read_text())["auto_map"]
    loaded = load_model(str(folder), named=False)
    assert loaded.is_native and loaded.facts.step == 3 and loaded.tokenizer.n_vocab == 50257
    ids = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        assert torch.equal(loaded.model(ids)[0], native(ids)[0])


@pytest.mark.slow  # the export writes GPT-2's tokenizer
def test_our_own_code_pointed_at_from_elsewhere_is_refused(own_export, tmp_path):
    from smolm135.interop.loading import load_model

    _, folder = own_export
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config["auto_map"]["AutoModelForCausalLM"] = "someone/other--" + config["auto_map"]["AutoModelForCausalLM"]
    (copy / "config.json").write_text(json.dumps(config))
    for spec_named in (True, False):
        with pytest.raises(UserError, match="--trust-remote-code"):
            load_model(str(copy), named=spec_named)
