import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import smollm135_model
from smolm135.training.trainer import main, train
from smolm135.errors import UserError, run_cli
from smolm135.training.config import TrainConfig, get_lr

from conftest import REPO_ROOT, tiny_train_config

TRAINER = str(REPO_ROOT / "Model_smollm135_trainer.py")


def test_defaults_are_the_seed_recipe():
    cfg = TrainConfig()
    assert (cfg.batch_size, cfg.seq_len, cfg.max_steps, cfg.warmup_steps, cfg.checkpoint_every, cfg.sample_every) == (
        32, 128, 5000, 2000, 500, 500)
    assert (cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.beta1, cfg.beta2) == (6e-4, 0.1, 1.0, 0.9, 0.95)
    assert cfg.final_lr == pytest.approx(6e-5)
    assert cfg.preset == "smolm135" and cfg.data == "input.txt" and cfg.out_dir == "." and cfg.resume == "auto"


def test_learning_rate_warms_up_linearly_then_decays_by_cosine_to_ten_percent():
    cfg = TrainConfig()
    assert get_lr(0, cfg) == pytest.approx(6e-4 / 2000)
    assert get_lr(999, cfg) == pytest.approx(3e-4)
    assert get_lr(1999, cfg) == pytest.approx(6e-4)
    assert get_lr(3500, cfg) == pytest.approx((6e-4 + 6e-5) / 2)
    assert get_lr(5000, cfg) == pytest.approx(6e-5)
    assert get_lr(9000, cfg) == pytest.approx(6e-5)
    lrs = [get_lr(s, cfg) for s in range(2000, 5000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.slow
def test_short_tiny_run_learns_and_writes_the_documented_files(trained_run):
    cfg, model, summary, out_dir = trained_run
    assert summary["steps"] == 30 and summary["tokens_seen"] == 30 * 8 * 32
    assert summary["initial_val_loss"] > 10.0
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 3.0
    assert (out_dir / "checkpoints" / "latest.pt").is_file()
    finals = list((out_dir / "models").glob("final_model_*.pt"))
    logs = list((out_dir / "logs").glob("training_*.log"))
    plots = list((out_dir / "logs").glob("training_*.png"))
    assert len(finals) == len(logs) == len(plots) == 1
    assert str(finals[0]) == summary["final_model_path"]
    assert plots[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_log_holds_config_parameters_device_steps_validation_and_samples(trained_run):
    _, _, summary, _ = trained_run
    log = open(summary["log_path"], encoding="utf-8").read()
    for expected in ("config: {", "7,357,568 parameters", "on cpu", "step 30/30 | loss", "| lr ", "grad_norm",
                     "tok/s", "validation loss", "step 15 sample:", "summary:"):
        assert expected in log, expected


@pytest.mark.slow
def test_checkpoints_load_with_weights_only_and_rebuild_the_model(trained_run):
    cfg, model, summary, out_dir = trained_run
    for path in [out_dir / "checkpoints" / "latest.pt", summary["final_model_path"]]:
        state = torch.load(path, weights_only=True)
        assert state["step"] == 30
        rebuilt = smollm135_model.SmoLM135_Model(smollm135_model.ModelConfig.from_dict(state["model_config"]))
        rebuilt.load_state_dict(state["model_state_dict"])
        assert not any(k.startswith(("_orig_mod.", "module.")) for k in state["model_state_dict"])
        for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()):
            assert torch.equal(a, b.cpu())


@pytest.mark.slow
def test_checkpoints_keep_only_the_newest(trained_run):
    _, _, _, out_dir = trained_run
    assert sorted(p.name for p in (out_dir / "checkpoints").glob("step_*.pt")) == ["step_0000020.pt", "step_0000030.pt"]


@pytest.mark.parametrize("vocab_size, tokenizer, message", [
    (4096, "gpt2", "--tokenizer gpt2 needs a vocabulary of 50,257 tokens"),
    (256, "auto", "needs a vocabulary of at least 257 tokens"),
])
def test_a_vocabulary_too_small_for_the_tokenizer_is_refused(corpus_file, tmp_path, vocab_size, tokenizer, message):
    small = replace(smollm135_model.PRESETS["tiny"], vocab_size=vocab_size)
    with pytest.raises(UserError, match=message):
        train(tiny_train_config(corpus_file, tmp_path, preset="small-vocab", model=small, tokenizer=tokenizer))


def run_trainer(*args, cwd):
    return subprocess.run([sys.executable, TRAINER, "--preset", "tiny", "--device", "cpu", "--no-progress", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


BAD_INPUT = [
    (["--data", "missing.txt"], "does not exist"),
    (["--data", "empty.txt"], "is empty"),
    (["--data", "short.txt"], "needs at least"),
    (["--data", "short.txt", "--seq-len", "4096"], "longer than the tiny context length"),
    (["--max-steps", "0"], "--max-steps must be a positive whole number"),
    (["--batch-size", "-2"], "--batch-size must be a positive whole number"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--preset", "huge"], "unknown preset 'huge'"),
]


def write_bad_data(folder):
    (folder / "empty.txt").write_text("")
    (folder / "short.txt").write_text("only a few words here\n")


@pytest.mark.parametrize("args, message", BAD_INPUT)
def test_bad_input_to_the_trainers_main_is_one_line_and_exit_status_2(tmp_path, monkeypatch, capsys, args, message):
    """The command line's promise below, kept in this process: main() as the script's __main__ calls it."""
    write_bad_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(["--preset", "tiny", "--device", "cpu", "--no-progress", *args]))
    error = capsys.readouterr().err
    lines = error.strip().splitlines()
    assert exit_info.value.code == 2 and "Traceback" not in error
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], error
    assert not list(tmp_path.glob("models/*.pt"))


@pytest.mark.parametrize("args, message", BAD_INPUT)
@pytest.mark.slow
def test_bad_input_gets_one_line_and_a_nonzero_exit(tmp_path, args, message):
    write_bad_data(tmp_path)
    result = run_trainer(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not list(tmp_path.glob("models/*.pt"))


def test_every_sample_continues_the_opening_of_the_validation_text(trained_run):
    import re

    from smolm135.checkpoint import TRAINING
    from smolm135.data.corpus import load_corpus, split_train_val
    from smolm135.data.tokenizer import GPT2TextTokenizer

    cfg, _, summary, out_dir = trained_run
    corpus = load_corpus(cfg.data, TRAINING.under(out_dir).cache_dir, show_progress=False, quiet=True)
    _, val_tokens = split_train_val(corpus.tokens, cfg.val_fraction)
    opening = GPT2TextTokenizer().decode(val_tokens[:32].tolist())  # one text file: where the split begins
    log = "".join(line[len("2026-01-01 00:00:00 "):] for line in open(summary["log_path"], encoding="utf-8"))
    prompts = re.findall(r"step (\d+) sample:\nprompt: (.*?)\ncontinued: ", log, re.S)
    assert [int(step) for step, _ in prompts] == [0, 15, 30]  # before training, then every --sample-every
    assert all(prompt == opening for _, prompt in prompts)


def test_a_sample_prompt_opens_the_first_document_that_starts_in_the_text():
    from smolm135.inference.generation import opening_of

    separator = 0
    assert opening_of([5, 6, 0, 7, 8, 9, 0, 3], separator, length=2) == [7, 8]
    assert opening_of([5, 6, 0, 7, 8, 9, 0, 3], separator, length=5) == [7, 8, 9]  # that document's tokens only
    assert opening_of([5, 6, 7], separator, length=2) == [5, 6]  # no document starts: the text's own start
    assert opening_of([5, 6, 0], separator, length=2) == [5, 6]
    assert opening_of([5, 6, 7], None, length=2) == [5, 6]


def test_a_chat_models_sample_also_answers_a_fixed_message_through_its_template():
    from types import SimpleNamespace

    from smolm135.training.trainer import SAMPLE_MESSAGE, sample_text
    from smollm135_model import build_model

    from conftest import CHAT_VOCAB_SIZE, tiny_chat_tokenizer

    torch.manual_seed(0)
    model = build_model("tiny-rotary", vocab_size=CHAT_VOCAB_SIZE).eval()
    tokenizer = tiny_chat_tokenizer()
    prompts = []
    generate = model.generate

    def recording_generate(input_ids, **options):
        prompts.append(input_ids[0].tolist())
        return generate(input_ids, **options)

    model.generate = recording_generate
    run = SimpleNamespace(cfg=TrainConfig(sample_tokens=6), tokenizer=tokenizer, model=model,
                          sample_prompt_ids=tokenizer.encode("The cat sees"))
    text = sample_text(run, step=3)
    assert text.startswith("prompt: The cat sees\ncontinued: ")
    assert f"\nuser: {SAMPLE_MESSAGE}\nassistant: " in text
    conversation = tokenizer.chat_prompt([{"role": "user", "content": SAMPLE_MESSAGE}])
    assert prompts == [tokenizer.encode("The cat sees"), tokenizer.encode(conversation)]
    assert "<|im_start|>user\n" in conversation
