"""Shared fixtures: a generated corpus and tiny training configs, so the suite runs on 2 CPU cores."""
from __future__ import annotations

import importlib.util
import os
import random
import resource
import shutil
import signal
import tempfile
from pathlib import Path
from types import SimpleNamespace

# Under pytest-xdist (CI runs the whole suite as two workers on two cores), each worker and every process it
# starts computes on one thread: two workers with two OpenMP threads each on two cores spin against each other
# and take longer than one. Set before torch is first imported, which reads it then.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402 (after the thread count, on purpose)

from smolm135.errors import extra_install  # noqa: E402
from smolm135.runtime.probes import CACHE_DIR_ENV  # noqa: E402
from smolm135.training.config import TrainConfig  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_EVERYTHING = 'python -m pytest -q -m "slow or not slow" -n 2'
_SLOW_LEFT_OUT = pytest.StashKey[int]()
# Session fixtures that train for about a minute: a test that asks for one is slow, marked or not
SLOW_FIXTURES = frozenset({"trained_run"})


def needs_extra(extra: str):
    """Skips a test of an optional extra (pyproject.toml) where its package, named as the extra is, is not
    installed, naming the extra's install command: the README's install alone runs the suite."""
    return pytest.mark.skipif(importlib.util.find_spec(extra) is None,
                              reason=f"the {extra} extra is not installed: {extra_install(extra)}")


# tests of Hugging Face datasets (save_to_disk folders, hf:NAME)
needs_datasets = needs_extra("datasets")


# ---------------------------------------------------------------- the default run leaves slow tests out

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts servers, browsers, torchrun, kill loops, fresh interpreters or the "
                                       "98 MB GGUF, or takes more than a few seconds (a shared training run, "
                                       f"torch.compile); left out of the default run ({RUN_EVERYTHING} runs them)")


@pytest.hookimpl(tryfirst=True)  # before -m selects by the markers added here
def pytest_collection_modifyitems(config, items):
    """Without -m, slow tests are left out, unless the command line names single tests (path::name): the
    default run is the developer's loop, and `-m "slow or not slow"` (as CI runs it) is the whole suite."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    names_tests = any("::" in arg for arg in config.args)
    if config.option.markexpr or names_tests:
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
    config.stash[_SLOW_LEFT_OUT] = len(slow)


def pytest_terminal_summary(terminalreporter, config):
    left_out = config.stash.get(_SLOW_LEFT_OUT, 0)
    if left_out:
        terminalreporter.write_line(f"{left_out} slow tests left out: {RUN_EVERYTHING} runs everything")


def make_corpus_text(n_sentences: int = 4000, seed: int = 0) -> str:
    """Sentences from a small grammar: varied enough to need learning, regular enough to learn fast."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my friend", "the old king", "a young bird", "the sailor"]
    verbs = ["sees", "likes", "follows", "remembers", "finds", "carries"]
    objects = ["the moon", "a red apple", "the river", "an old song", "the green hill", "a small boat"]
    endings = [".", "!", " today.", " at night.", " again."]
    lines = []
    for _ in range(n_sentences):
        lines.append(f"{rng.choice(subjects).capitalize()} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(endings)}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session", autouse=True)
def probe_cache(tmp_path_factory):
    """The host probes' answers go to a folder of the test session (subprocesses inherit it), never to
    the user's cache."""
    folder = tmp_path_factory.mktemp("probe_cache")
    before = os.environ.get(CACHE_DIR_ENV)
    os.environ[CACHE_DIR_ENV] = str(folder)
    yield folder
    if before is None:
        os.environ.pop(CACHE_DIR_ENV, None)
    else:
        os.environ[CACHE_DIR_ENV] = before


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request):
    """tmp_path_factory for a module's shared fixtures, whose folders go when the module's tests are done: a
    tiny run's checkpoints take 85 MB each, and kept to the end of the session they add up to gigabytes."""
    base = tmp_path_factory.mktemp(request.module.__name__)
    yield SimpleNamespace(mktemp=lambda name: Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base)))
    shutil.rmtree(base, ignore_errors=True)


def random_rotary_model(seed: int = 0, config=None):
    """A randomly initialised rotary (Llama-layout) model, `tiny-rotary` unless `config` says otherwise."""
    import torch

    from smollm135_model import PRESETS, SmoLM135_Model

    torch.manual_seed(seed)
    model = SmoLM135_Model(config or PRESETS["tiny-rotary"]).eval()
    with torch.no_grad():  # norms away from 1, so a mixed-up norm weight shows in the logits
        for name, parameter in model.named_parameters():
            if name.endswith(("norm.weight", "ln_f.weight")):
                parameter.uniform_(0.5, 1.5)
    return model


def smollm_style_tokenizer(text: str, vocab_size: int = 400):
    """A byte-level BPE trained on `text` that splits digits one by one first, as SmolLM's tokenizer.json does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from smolm135.data.tokenizer import END_OF_TEXT, JsonTokenizer

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT, "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([text], trainer)
    backend.add_tokens(["<think>"])  # an added token that is not special, as chat models have
    return JsonTokenizer(backend.to_str(), eos_token="<|im_end|>", bos_token="<|im_start|>")


def make_small_vocab_text(n_lines: int = 2000, seed: int = 0) -> str:
    """Lines of GPT-2 tokens with ids below 512 that no merge joins, so a model with a 512-row embedding
    (small enough for a checkpoint kept in the repository) can train on it."""
    from smolm135.data.tokenizer import get_tokenizer

    encoder = get_tokenizer()
    words = [encoder.decode([i]) for i in range(256, 512)]
    words = [w for w in words if w.startswith(" ") and w[1:].isalpha() and w.isascii()]  # " the", " and", ...
    rng = random.Random(seed)
    return "\n".join("".join(rng.choice(words) for _ in range(10)) + "." for _ in range(n_lines)) + "\n"


def limit_file_size(n_bytes: int):
    """A subprocess's preexec_fn: its files may grow to `n_bytes` (ulimit -f), and a write past that fails."""
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))
    return preexec


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(make_corpus_text(), encoding="utf-8")
    return path


def tiny_train_config(data: Path, out_dir: Path, **overrides) -> TrainConfig:
    """The tiny preset with a recipe small enough for a test: a few steps of 8 x 32 tokens."""
    values = dict(data=str(data), out_dir=str(out_dir), preset="tiny", max_steps=30, batch_size=8, seq_len=32,
                  lr=3e-3, warmup_steps=3, eval_every=10, eval_batches=4, checkpoint_every=10,
                  sample_every=15, sample_tokens=12, device="cpu", dtype="float32", progress=False)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def trained_run(corpus_file, tmp_path_factory):
    """One short tiny-preset training run, shared by the tests that inspect its outputs. It takes about a minute
    of CPU (30 steps, evaluations, samples, 85 MB checkpoints), so every test that asks for it is slow (SLOW_FIXTURES)."""
    from smolm135.training.trainer import train

    out_dir = tmp_path_factory.mktemp("run")
    cfg = tiny_train_config(corpus_file, out_dir)
    model, summary = train(cfg)
    return cfg, model, summary, out_dir


# ---------------------------------------------------------------- a tiny chat model

# SmolLM2-Instruct's template, shortened (its default system message left out)
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
                 "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")
CHAT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_VOCAB_SIZE = 320  # the model's embedding rows: the tokenizer's 300 tokens and 20 padding rows


def tiny_chat_backend():
    """A byte-level BPE (`tokenizers`) over the test corpus with SmolLM's three special tokens (ids 0, 1, 2)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=CHAT_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([make_corpus_text(400)], trainer)
    return backend


def tiny_chat_tokenizer():
    """A JsonTokenizer with a chat template, ending turns with <|im_end|> as SmolLM2-Instruct does."""
    from smolm135.data.tokenizer import JsonTokenizer

    return JsonTokenizer(tiny_chat_backend().to_str(), eos_token="<|im_end|>", bos_token="<|im_start|>",
                         chat_template=CHAT_TEMPLATE)


def save_tiny_chat_checkpoint(path: Path, tokenizer=None) -> Path:
    """An untrained tiny-rotary model and the tiny chat tokenizer, as a native checkpoint (format 3)."""
    import torch

    from smollm135_model import build_model
    from smolm135.checkpoint import Checkpoint, TrainingFacts, save_atomic

    torch.manual_seed(0)
    tokenizer = tokenizer if tokenizer is not None else tiny_chat_tokenizer()
    checkpoint = Checkpoint.from_facts(build_model("tiny-rotary", vocab_size=CHAT_VOCAB_SIZE), TrainingFacts(),
                                       "test", tokenizer=tokenizer.to_record())
    return save_atomic(checkpoint, path)
