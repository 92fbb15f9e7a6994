"""evaluate.py and smolm135/inference/scoring.py: bits per byte, loss and perplexity over sliding windows."""
import math
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from smolm135.inference import evaluate as evaluate
from smollm135_model import PRESETS, SmoLM135_Model
from smolm135.checkpoint import Checkpoint, save_atomic
from smolm135.errors import UserError, run_cli
from smolm135.inference.scoring import bits_per_byte, score_documents, score_tokens, token_stream, window_spans
from smolm135.data.tokenizer import END_OF_TEXT_ID, get_tokenizer

from conftest import REPO_ROOT, make_corpus_text

CPU = torch.device("cpu")
TEXT = make_corpus_text(30, seed=3) + "Ünïcödé ✓ 日本語 🤖\n"


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return SmoLM135_Model(PRESETS["tiny"]).eval()


def logits_of(model):
    return lambda x: model(x)[0]


@pytest.mark.parametrize("n_tokens,context,stride", [(2, 8, 4), (50, 8, 3), (50, 8, 8), (9, 8, 1), (100, 16, 5),
                                                     (30, 64, 32)])
def test_windows_score_every_token_once_with_at_least_context_minus_stride_before_it(n_tokens, context, stride):
    spans = window_spans(n_tokens, context, stride)
    scored = []
    for begin, end, first_scored in spans:
        assert end - begin == min(context, n_tokens - 1) and end <= n_tokens - 1
        for target in range(max(begin, first_scored), end):
            scored.append(target)
            assert target - begin + 1 >= min(target + 1, context - stride + 1)  # tokens of context seen
    assert scored == list(range(n_tokens - 1))


def test_one_window_equals_a_plain_forward_pass(small_model):
    encoder = get_tokenizer()
    tokens, scored, text_bytes = token_stream([TEXT], encoder.encode_ordinary, END_OF_TEXT_ID)
    assert tokens[0] == END_OF_TEXT_ID and not scored[0] and scored[1:].all()
    nats, count = score_tokens(logits_of(small_model), tokens, scored, context=512, stride=256, device=CPU)
    x = torch.from_numpy(tokens)[None]  # (1, N)
    with torch.no_grad():
        expected = F.cross_entropy(small_model(x[:, :-1])[0][0].float(), x[0, 1:], reduction="sum").item()
    assert count == len(tokens) - 1 and math.isclose(nats, expected, rel_tol=1e-5)


@pytest.mark.slow
def test_sliding_windows_score_each_token_with_the_context_its_window_gives(small_model):
    tokens = np.array([END_OF_TEXT_ID] + get_tokenizer().encode_ordinary(TEXT)[:40])
    scored = np.ones(len(tokens), dtype=bool)
    context, stride = 8, 3
    nats, count = score_tokens(logits_of(small_model), tokens, scored, context, stride, device=CPU, batch_windows=3)
    expected = 0.0
    with torch.no_grad():
        for begin, end, first_scored in window_spans(len(tokens), context, stride):
            x = torch.from_numpy(tokens[begin:end])[None]
            losses = F.cross_entropy(small_model(x)[0][0].float(), torch.from_numpy(tokens[begin + 1:end + 1]),
                                     reduction="none")
            expected += losses[max(0, first_scored - begin):].sum().item()
    assert count == len(tokens) - 1 and math.isclose(nats, expected, rel_tol=1e-5)


def test_bits_per_byte_counts_each_utf8_byte_once_and_not_the_separators(small_model):
    documents = [TEXT, "ü" * 10, "short"]
    encoder = get_tokenizer()
    score = score_documents(logits_of(small_model), documents, encoder.encode_ordinary, END_OF_TEXT_ID, 16, 8, CPU)
    assert score.text_bytes == sum(len(d.encode("utf-8")) for d in documents)
    assert score.tokens == sum(len(encoder.encode_ordinary(d)) for d in documents)
    assert score.bits_per_byte == bits_per_byte(score.nats, score.text_bytes) == score.nats / math.log(2) / score.text_bytes
    assert score.perplexity == pytest.approx(math.exp(score.nats / score.tokens))


@pytest.fixture(scope="module")
def checkpoints(trained_run, module_tmp):
    """The trained tiny model of the shared run, the same model untrained, and a text to score them on."""
    cfg, model, summary, out_dir = trained_run
    folder = module_tmp.mktemp("models")
    torch.manual_seed(1)
    fresh = SmoLM135_Model(model.config)
    untrained = save_atomic(Checkpoint(fresh.state_dict(), fresh.config.to_dict()), folder / "untrained.pt")
    held_out = folder / "held_out.txt"  # the training corpus's grammar; short, so that scoring is quick
    held_out.write_text(make_corpus_text(60, seed=7), encoding="utf-8")
    return summary["final_model_path"], str(untrained), str(held_out)


@pytest.mark.slow
def test_compare_prints_a_table_and_training_shows(checkpoints, capsys):
    trained, untrained, data = checkpoints
    results = evaluate.main([trained, "--compare", untrained, "--data", data, "--context", "32", "--stride", "16",
                             "--device", "cpu", "--dtype", "float32", "--no-progress"])
    by_name = {r.model: r.score for r in results}
    assert by_name[trained].bits_per_byte < by_name[untrained].bits_per_byte
    out = capsys.readouterr().out
    assert "| model | parameters | tokenizer | bits per byte |" in out
    assert out.index(f"| {trained} |") < out.index(f"| {untrained} |")  # best first


@pytest.mark.slow
def test_hugging_face_export_scores_as_its_checkpoint(checkpoints, tmp_path):
    from smolm135.interop.convert import write_hf_folder
    from smolm135.checkpoint import load_checkpoint

    trained, _, data = checkpoints
    checkpoint = load_checkpoint(trained)
    folder = write_hf_folder(checkpoint.build_model(), checkpoint.facts, tmp_path / "hf")
    native, exported = evaluate.evaluate([trained, str(folder)], data, context=32, stride=32, device="cpu",
                                         dtype="float32", show_progress=False)
    assert exported.score.tokens == native.score.tokens
    assert exported.score.nats == pytest.approx(native.score.nats, rel=1e-5)


@pytest.mark.slow
def test_table_formats_score_like_the_same_text(checkpoints, tmp_path):
    trained, _, _ = checkpoints
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    pq.write_table(pa.table({"body": [TEXT]}), tmp_path / "a.parquet")
    as_text, as_parquet = (evaluate.evaluate([trained], str(tmp_path / name), context=16, stride=8, text_field="body",
                                             device="cpu", dtype="float32", show_progress=False)[0].score
                           for name in ("a.txt", "a.parquet"))
    assert as_text == as_parquet


@pytest.mark.slow
def test_bad_model_and_data_paths_are_user_errors(checkpoints, tmp_path):
    trained, _, data = checkpoints
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "empty_folder").mkdir()
    for model, match in [(tmp_path / "nope.pt", "does not exist"), (tmp_path / "garbage.pt", "garbage.pt"),
                         (tmp_path / "empty_folder", "no config.json")]:
        with pytest.raises(UserError, match=match):
            evaluate.evaluate([str(model)], data, device="cpu", show_progress=False)
    with pytest.raises(UserError, match="does not exist"):
        evaluate.evaluate([trained], str(tmp_path / "missing.txt"), device="cpu", show_progress=False)
    with pytest.raises(UserError, match="context length is 512"):
        evaluate.evaluate([trained], data, context=4096, device="cpu", show_progress=False)


def test_main_error_is_one_line(tmp_path, capsys):
    """The command line's promise below, kept in this process: main() as the script's __main__ calls it."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: evaluate.main([str(tmp_path / "nope.pt"), "--data", "x.txt"]))
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1 and "does not exist" in error


@pytest.mark.slow
def test_command_line_error_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "evaluate.py", str(tmp_path / "nope.pt"), "--data", "x.txt"],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "does not exist" in done.stderr
