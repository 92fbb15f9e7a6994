"""Every numeric flag of every script is checked: a bad value is one line on stderr naming the flag, exit
status 2, no traceback, and nothing trained, loaded or written."""
import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from smolm135.inference import demo as app
from smolm135.training import continuation as continue_training
from smolm135.interop import convert as convert_to_hf
from smolm135.inference import evaluate as evaluate
from smolm135.training import trainer as Model_smollm135_trainer
from smolm135.errors import run_cli

from conftest import REPO_ROOT, make_corpus_text

TRAINER_CASES = [
    (["--weight-decay", "nan"], "--weight-decay must be a finite number"),
    (["--weight-decay", "inf"], "--weight-decay must be a finite number"),
    (["--weight-decay", "-0.1"], "--weight-decay must be a finite number"),
    (["--grad-clip", "nan"], "--grad-clip must be a finite number"),
    (["--grad-clip=-inf"], "--grad-clip must be a finite number"),
    (["--beta1", "2"], "--beta1 must be at least 0 and below 1"),
    (["--beta1", "-0.5"], "--beta1 must be at least 0 and below 1"),
    (["--beta2", "nan"], "--beta2 must be at least 0 and below 1"),
    (["--beta2", "1"], "--beta2 must be at least 0 and below 1"),
    (["--seed", "-1"], "--seed must be a whole number from 0 to 4294967295"),
    (["--seed", str(2**70)], "--seed must be a whole number from 0 to 4294967295"),
    (["--lr-decay-steps", "0"], "--lr-decay-steps must be a positive whole number"),
    (["--lr-decay-steps", "-1"], "--lr-decay-steps must be a positive whole number"),
    (["--sample-tokens", "-5"], "--sample-tokens must be a positive whole number"),
    (["--sample-tokens", "0"], "--sample-tokens must be a positive whole number"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--lr", "inf"], "--lr must be a positive number"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--min-lr", "nan"], "--min-lr must be between 0 and --lr"),
    (["--min-lr", "1"], "--min-lr must be between 0 and --lr"),
    (["--warmup-steps", "-1"], "--warmup-steps must be a whole number, 0 or more"),
    (["--val-fraction", "nan"], "--val-fraction must be between 0 and 1"),
    (["--val-fraction", "1"], "--val-fraction must be between 0 and 1"),
    (["--max-steps", "-3"], "--max-steps must be a positive whole number"),
    (["--batch-size", "0"], "--batch-size must be a positive whole number"),
    (["--seq-len", "0"], "--seq-len must be a positive whole number"),
    (["--grad-accum", "0"], "--grad-accum must be a positive whole number"),
    (["--eval-every", "0"], "--eval-every must be a positive whole number"),
    (["--eval-batches", "-1"], "--eval-batches must be a positive whole number"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be a positive whole number"),
    (["--sample-every", "0"], "--sample-every must be a positive whole number"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints must be a positive whole number"),
    (["--log-every", "0"], "--log-every must be a positive whole number"),
    (["--data", ""], "--data is empty"),
    (["--data", "  "], "--data is empty"),
    (["--dtype", "float8"], "--dtype must be auto"),
    (["--preset", "huge"], "unknown preset"),
    (["--recipe", "fast"], "unknown recipe 'fast': choose one of seed, cpu-scratch, finetune"),
    (["--minutes", "-1"], "--minutes must be a finite number, 0 (no budget) or more"),
    (["--minutes", "nan"], "--minutes must be a finite number"),
    (["--minutes", "5", "--warmup-steps", "1"], "--warmup-steps must be at least 3"),
    (["--tokenizer", "bpe"], "--tokenizer must be one of auto, gpt2, corpus"),
    (["--tokenizer", "corpus", "--init-from", "smollm2-135m"], "brings its own tokenizer"),
    (["--chat-template", "llama3"], "unknown --chat-template 'llama3': the known templates are chatml"),
    (["--chat-template", "chatml", "--lora-rank", "8"], "--lora-rank freezes the embedding"),
]
CONTINUE_CASES = [
    (["--steps", "0"], "--steps must be a positive whole number"),
    (["--steps", "-4"], "--steps must be a positive whole number"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--lr", "inf"], "--lr must be a positive number"),
    (["--lr=-1e-4"], "--lr must be a positive number"),
]
CONVERT_CASES = [
    (["--checkpoint", "none.pt", "--license", "mit\ninference: true\n---\n# INJECTED <script>"],
     "is not a license identifier"),
    (["--checkpoint", "none.pt", "--license", "MIT License"], "is not a license identifier"),
    (["--checkpoint", "none.pt", "--output-dir", "afile/sub"], "afile is a file, not a folder"),
    (["--checkpoint", "none.pt", "--output-dir", "afile"], "afile is a file, not a folder"),
    (["--from-hf", "afile", "--gguf", "q8_0"], "does not combine with --checkpoint, --push-to-hub or --gguf"),
]
APP_CASES = [
    (["--port", "70000"], "--port must be from 1 to 65535"),
    (["--port", "-1"], "--port must be from 1 to 65535"),
    (["--port", "0"], "--port must be from 1 to 65535"),
    (["--host", "999.1.1.1"], "--host 999.1.1.1 is not a valid IP address"),
    (["--host", "1.2.3"], "is not a valid IP address"),
    (["--host", "192.0.2.1"], "is not an address of this machine"),  # TEST-NET-1: never assigned to a host
    (["--trust-remote-code"], "--trust-remote-code applies to the model named by --model"),
]
EVALUATE_CASES = [  # 0 once meant "the default" without a word
    (["model.pt", "--data", "x.txt", "--context", "0"], "--context must be a positive whole number"),
    (["model.pt", "--data", "x.txt", "--stride", "0"], "--stride must be a positive whole number"),
    (["model.pt", "--data", "x.txt", "--batch-windows", "0"], "--batch-windows must be a positive whole number"),
    (["model.pt", "--data", "x.txt", "--stride", "-2"], "--stride must be a positive whole number"),
]
# what argparse itself refuses (a value of the wrong kind, a flag no script has): one line too, not its usage text
PARSER_CASES = [
    ("trainer", ["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    ("trainer", ["--max-steps", "1.5"], "argument --max-steps: invalid int value: '1.5'"),
    ("trainer", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ("continue", ["--steps", "x"], "argument --steps: invalid int value"),
    ("convert", ["--gguf", "q4_k"], "argument --gguf: invalid choice: 'q4_k'"),
    ("app", ["--port", "abc"], "argument --port: invalid int value"),
    ("evaluate", ["model.pt", "--context", "x"], "argument --context: invalid int value"),
]
SCRIPTS = {"trainer": Model_smollm135_trainer.main, "continue": continue_training.main,
           "convert": convert_to_hf.main, "app": app.main, "evaluate": evaluate.main}
CASES = ([("trainer", *case) for case in TRAINER_CASES] + [("continue", *case) for case in CONTINUE_CASES]
         + [("convert", *case) for case in CONVERT_CASES] + [("app", *case) for case in APP_CASES]
         + [("evaluate", *case) for case in EVALUATE_CASES] + PARSER_CASES)


@pytest.mark.parametrize("script, args, message", CASES, ids=[f"{s}{' '.join(a)!r}" for s, a, _ in CASES])
def test_a_bad_value_is_one_line_naming_the_flag(script, args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "requirements.txt").write_text("torch\n")  # what --data "" once tokenized
    refused_in_one_line(script, args, message, monkeypatch, capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "requirements.txt"]  # nothing written


def refused_in_one_line(script: str, args: list[str], message: str, monkeypatch, capsys) -> None:
    """The script, run in-process with no model named by the environment, exits 2 with one `error:` line
    holding `message`, and no traceback."""
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv(app.MODEL_ENV_VAR, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: SCRIPTS[script](args))
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert message in lines[0] and "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize("script, args, message", [
    ("Model_smollm135_trainer.py", ["--weight-decay", "nan"], "--weight-decay must be a finite number"),
    ("app.py", ["--port", "70000"], "--port must be from 1 to 65535"),
    ("convert_to_hf.py", ["--license", "<script>"], "is not a license identifier"),
])
@pytest.mark.slow
def test_the_scripts_themselves_answer_bad_values_with_one_line(script, args, message, tmp_path):
    result = subprocess.run([sys.executable, str(REPO_ROOT / script), *args], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr[-2000:]


def damaged_folder(where: Path, damage: str) -> Path:
    """A tiny GPT-2 model as transformers saves it (no tokenizer: the damage is found first), then damaged:
    config.json cut short, or weights stored as integers (which transformers copies into the float parameters
    as they are)."""
    from safetensors.torch import load_file, save_file
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = where / damage
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64)).save_pretrained(folder)
    if damage == "config-not-json":
        config = (folder / "config.json").read_text(encoding="utf-8")
        (folder / "config.json").write_text(config[: len(config) // 2], encoding="utf-8")
    else:
        weights = load_file(folder / "model.safetensors")
        save_file({name: (tensor * 1000).to(torch.int64) for name, tensor in weights.items()},
                  folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("damage, message", [("config-not-json", "config.json is not valid JSON"),
                                             ("integer-weights", "holds I64 numbers where a model has floating-point")])
def test_evaluate_answers_a_damaged_model_folder_with_one_line(damage, message, tmp_path, capsys):
    folder = damaged_folder(tmp_path, damage)
    capsys.readouterr()  # save_pretrained's progress bar
    (tmp_path / "text.txt").write_text("To be, or not to be: that is the question.\n" * 20, encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: evaluate.main([str(folder), "--data", str(tmp_path / "text.txt"), "--device", "cpu",
                                       "--no-progress"]))
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and message in lines[0], captured.err[-2000:]
    assert "Traceback" not in captured.err + captured.out


# Refusals that come after the flags are read (a device, a file, a checkpoint, a corpus, an extra): each is run in
# an empty working folder, with what it reads in another (GIVEN), and must leave both as they were.
GIVEN = "{given}"
# a run the checks let through trains one quick step (and the test fails): none trains the default recipe
FAST_TRAINER = ["--preset", "tiny", "--device", "cpu", "--dtype", "float32", "--data", f"{GIVEN}/corpus.txt",
                "--max-steps", "1", "--eval-batches", "1", "--no-progress"]
NEEDS_NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
NEEDS_NO_WANDB = pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
LATE_CASES = [
    ("trainer", ["--device", "cuda"], "no CUDA GPU is visible", NEEDS_NO_CUDA),
    ("trainer", [*FAST_TRAINER, "--device", "cuda:3"], "no CUDA GPU is visible", NEEDS_NO_CUDA),
    ("trainer", ["--device", "tpu9"], "unknown device 'tpu9'", None),
    ("trainer", ["--device", "mps"], "Apple MPS is not available", None),
    ("trainer", [*FAST_TRAINER, "--dtype", "float16"], "--dtype float16 is for GPUs", None),
    ("trainer", [*FAST_TRAINER, "--data", "missing.txt"], "data file missing.txt does not exist", None),
    ("trainer", [*FAST_TRAINER, "--data", "no_such_*.txt"], "no files match", None),
    ("trainer", [*FAST_TRAINER, "--data", f"{GIVEN}/empty_folder"], "holds no .txt", None),
    ("trainer", [*FAST_TRAINER, "--data", f"{GIVEN}/empty.txt"], "is empty: put some text in it", None),
    ("trainer", [*FAST_TRAINER, "--data", f"{GIVEN}/short.txt"], "needs at least", None),
    ("trainer", [*FAST_TRAINER, "--batch-size", "4000"], "needs at least", None),
    ("trainer", [*FAST_TRAINER, "--data", f"{GIVEN}/random.txt"], "does not look like text", None),
    ("trainer", [*FAST_TRAINER, "--data", f"{GIVEN}/utf16.txt"], "NUL bytes", None),
    ("trainer", [*FAST_TRAINER, "--tokenizer", "corpus", "--data", f"{GIVEN}/short.txt"], "needs at least", None),
    ("trainer", [*FAST_TRAINER, "--resume", "missing.pt"], "checkpoint missing.pt does not exist", None),
    ("trainer", [*FAST_TRAINER, "--resume", f"{GIVEN}/corpus.txt"], "is unreadable", None),
    ("trainer", [*FAST_TRAINER, "--init-from", "missing.pt"], "does not exist", None),
    ("trainer", [*FAST_TRAINER, "--out-dir", ""], "--out-dir: is empty", None),
    ("trainer", [*FAST_TRAINER, "--resume", " "], "--resume: is empty", None),
    ("trainer", [*FAST_TRAINER, "--init-from", ""], "--init-from: is empty", None),
    ("trainer", [*FAST_TRAINER, "--optimizer", "muon", "--muon-momentum", "nan"], "--muon-momentum must be", None),
    ("trainer", [*FAST_TRAINER, "--optimizer", "muon", "--muon-momentum", "1.5"], "--muon-momentum must be", None),
    ("trainer", [*FAST_TRAINER, "--report-to", "mlflow"], "--report-to must be one of", None),
    ("trainer", [*FAST_TRAINER, "--report-to", "wandb"], 'pip install -e ".[wandb]"', NEEDS_NO_WANDB),
    ("trainer", [*FAST_TRAINER, "--data", f"{GIVEN}/chat.jsonl"], "pass --chat-template chatml to give it one", None),
    ("trainer", [*FAST_TRAINER, "--chat-template", "chatml"], "--chat-template chatml renders conversations, and "
                                                               "--data", None),
    ("trainer", [*FAST_TRAINER, "--data", f"{GIVEN}/chat.jsonl", "--chat-template", "chatml", "--preset",
                 "cpu-scratch"], "but this run would learn one from --data", None),
    ("continue", [], "train a model first", None),
    ("continue", ["--checkpoint", "missing.pt"], "checkpoint missing.pt does not exist", None),
    ("continue", ["--checkpoint", f"{GIVEN}/corpus.txt"], "is unreadable", None),
    ("continue", ["--checkpoint", ""], "--checkpoint: is empty", None),
    ("continue", ["--data", "", "--checkpoint", "missing.pt"], "--data: is empty", None),
    ("continue", ["--out-dir", ""], "--out-dir: is empty", None),
    ("convert", [], "no trained model under", None),
    ("convert", ["--checkpoint", "missing.pt"], "does not exist", None),
    ("convert", ["--checkpoint", f"{GIVEN}/corpus.txt"], "is unreadable", None),
    ("convert", ["--checkpoint", ""], "--checkpoint: is empty", None),
    ("convert", ["--output-dir", ""], "--output-dir: is empty", None),
    ("convert", ["--search-dir", ""], "--search-dir: is empty", None),
    ("convert", ["--from-hf", ""], "--from-hf: is empty", None),
    ("convert", ["--from-hf", f"{GIVEN}/empty_folder"], "is not a Hugging Face model folder", None),
    ("convert", ["--from-hf", f"{GIVEN}/empty_folder", "--output", ""], "--output: is empty", None),
    ("app", ["--host", ""], "--host is empty", None),
    ("app", ["--checkpoint", ""], "--checkpoint: is empty", None),
    ("app", ["--model", ""], "--model: is empty", None),
]


@pytest.fixture
def given_files(tmp_path):
    """What the late refusals read: a corpus, a short and an empty one, random bytes, UTF-16, an empty folder."""
    given = tmp_path / "given"
    (given / "empty_folder").mkdir(parents=True)
    (given / "corpus.txt").write_text(make_corpus_text(400), encoding="utf-8")
    (given / "short.txt").write_text("A few words of text.\n", encoding="utf-8")
    (given / "empty.txt").write_bytes(b"")
    (given / "random.txt").write_bytes(random.Random(0).randbytes(100_000))
    (given / "utf16.txt").write_text(make_corpus_text(400), encoding="utf-16")
    (given / "chat.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "Who sees?"},
                                                               {"role": "assistant", "content": "The cat."}]}) + "\n",
                                      encoding="utf-8")
    return given


def test_chat_template_on_a_model_with_a_template_of_its_own_is_refused(given_files, tmp_path, monkeypatch, capsys):
    from conftest import save_tiny_chat_checkpoint

    chat_model = save_tiny_chat_checkpoint(given_files / "chat_model.pt")
    given_before = folder_contents(given_files)
    monkeypatch.chdir(tmp_path)
    args = [*FAST_TRAINER, "--preset", "tiny-rotary", "--data", str(given_files / "chat.jsonl"), "--init-from",
            str(chat_model), "--chat-template", "chatml"]
    refused_in_one_line("trainer", args, "the model already has a chat template", monkeypatch, capsys)
    assert folder_contents(given_files) == given_before and sorted(p.name for p in tmp_path.iterdir()) == ["given"]


def folder_contents(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.mark.parametrize("script, args, message", [pytest.param(*case[:3], marks=case[3] or ())
                                                    for case in LATE_CASES],
                         ids=[f"{case[0]}{' '.join(case[1])!r}" for case in LATE_CASES])
def test_a_refusal_leaves_nothing_behind(script, args, message, given_files, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    given_before = folder_contents(given_files)
    refused_in_one_line(script, [arg.replace(GIVEN, str(given_files)) for arg in args], message, monkeypatch, capsys)
    assert folder_contents(work) == [] and folder_contents(given_files) == given_before
