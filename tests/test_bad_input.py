"""Every numeric flag of every script is checked: a bad value is one line on stderr naming the flag, exit
status 2, no traceback, and nothing trained, loaded or written."""
import subprocess
import sys

import pytest

import app
import continue_training
import convert_to_hf
import evaluate
import Model_smollm135_trainer
from smolm135.errors import run_cli

from conftest import REPO_ROOT

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
    (["--tokenizer", "bpe"], "--tokenizer must be one of auto, gpt2, corpus"),
    (["--tokenizer", "corpus", "--init-from", "smollm2-135m"], "brings its own tokenizer"),
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
         + [("convert", *case) for case in CONVERT_CASES] + [("app", *case) for case in APP_CASES] + PARSER_CASES)


@pytest.mark.parametrize("script, args, message", CASES, ids=[f"{s}{' '.join(a)!r}" for s, a, _ in CASES])
def test_a_bad_value_is_one_line_naming_the_flag(script, args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "requirements.txt").write_text("torch\n")  # what --data "" once tokenized
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv(app.MODEL_ENV_VAR, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: SCRIPTS[script](args))
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert message in lines[0] and "Traceback" not in captured.err + captured.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "requirements.txt"]  # nothing written


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
