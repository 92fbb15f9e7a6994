"""Corpora as .jsonl, .jsonl.gz, .parquet and Hugging Face datasets tokenize like the same text as .txt files."""
import gzip
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from smolm135.data import corpus as data
from smolm135.data import sources
from smolm135.data.corpus import load_corpus, resolve_sources
from smolm135.errors import UserError
from smolm135.data.tokenizer import END_OF_TEXT_ID, get_tokenizer

from conftest import make_corpus_text, needs_datasets, tiny_train_config

DOCUMENTS = [make_corpus_text(40, seed=i) for i in range(5)] + ["Ünïcödé ✓ 🤖 <|endoftext|> as plain text\n", ""]


def write_text_folder(folder, documents):
    folder.mkdir()
    for i, document in enumerate(documents):
        (folder / f"{i:03d}.txt").write_text(document, encoding="utf-8")
    return folder


def write_parquet(path, documents, column="text", rows_per_group=2):
    table = pa.table({"id": list(range(len(documents))), column: documents})
    pq.write_table(table, path, row_group_size=rows_per_group)
    return path


def write_jsonl(path, documents, column="text"):
    lines = "".join(json.dumps({"id": i, column: d}) + "\n" for i, d in enumerate(documents))
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


def tokens_of(path, cache, **kwargs):
    return list(load_corpus(str(path), cache, show_progress=False, **kwargs).tokens)


@pytest.fixture
def text_tokens(tmp_path):
    """The reference: each document tokenized whole by tiktoken, joined with end-of-text, which is also
    what a folder of one .txt file per document gives."""
    encoder = get_tokenizer()
    expected = []
    for i, document in enumerate(DOCUMENTS):
        expected += ([END_OF_TEXT_ID] if i else []) + encoder.encode_ordinary(document)
    assert tokens_of(write_text_folder(tmp_path / "texts", DOCUMENTS), tmp_path / "text_cache") == expected
    return expected


@pytest.mark.parametrize("name", ["c.parquet", "c.jsonl", "c.jsonl.gz"])
def test_table_formats_tokenize_like_one_text_file_per_document(tmp_path, text_tokens, monkeypatch, name):
    monkeypatch.setattr(data, "ENCODE_PIECE_CHARS", 500)  # documents split into pieces and batched together
    monkeypatch.setattr(sources, "BATCH_ROWS", 3)  # several record batches, across row groups
    path = tmp_path / name
    write_parquet(path, DOCUMENTS) if name.endswith(".parquet") else write_jsonl(path, DOCUMENTS)
    assert tokens_of(path, tmp_path / "cache", num_threads=2) == text_tokens


def test_folders_and_globs_of_shards_read_in_name_order(tmp_path, text_tokens):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_parquet(shards / "part-0.parquet", DOCUMENTS[:3])
    write_jsonl(shards / "part-1.jsonl.gz", DOCUMENTS[3:5])
    write_parquet(shards / "part-2.parquet", DOCUMENTS[5:])
    (shards / "README.md").write_text("not a corpus file")
    assert [p.name for p in resolve_sources(str(shards))] == ["part-0.parquet", "part-1.jsonl.gz", "part-2.parquet"]
    assert tokens_of(shards, tmp_path / "cache") == text_tokens
    assert tokens_of(shards / "part-*", tmp_path / "cache2") == text_tokens


def test_text_field_names_the_column_and_is_part_of_the_cache_key(tmp_path, text_tokens):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["other words"] * len(DOCUMENTS), "content": DOCUMENTS}), path)
    cache = tmp_path / "cache"
    assert tokens_of(path, cache, text_field="content") == text_tokens
    assert tokens_of(path, cache) != text_tokens  # the same file, another column: not the cached tokens


def test_missing_column_names_the_file_and_its_columns(tmp_path):
    path = write_parquet(tmp_path / "c.parquet", DOCUMENTS, column="content")
    with pytest.raises(UserError, match=r"c\.parquet has no column 'text' \(its columns: id, content\).*--text-field"):
        load_corpus(str(path), tmp_path / "cache", show_progress=False)
    path = write_jsonl(tmp_path / "c.jsonl", DOCUMENTS, column="body")
    with pytest.raises(UserError, match=r"c\.jsonl line 1 has no column 'text' \(its columns: id, body\)"):
        load_corpus(str(path), tmp_path / "cache", show_progress=False)
    assert not list((tmp_path / "cache").glob("*.tmp*"))  # no half-written token file left behind


def test_corrupt_shards_name_the_file(tmp_path):
    good = write_parquet(tmp_path / "good.parquet", DOCUMENTS)
    truncated = tmp_path / "bad.parquet"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"bad\.parquet is not a readable Parquet file"):
        load_corpus(str(truncated), tmp_path / "cache", show_progress=False)
    gz = write_jsonl(tmp_path / "c.jsonl.gz", DOCUMENTS * 20)
    gz.write_bytes(gz.read_bytes()[:-200])
    with pytest.raises(UserError, match=r"c\.jsonl\.gz is not a readable gzip file"):
        load_corpus(str(gz), tmp_path / "cache", show_progress=False)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": "cut off\n')
    with pytest.raises(UserError, match=r"broken\.jsonl line 2 is not valid JSON"):
        load_corpus(str(broken), tmp_path / "cache", show_progress=False)
    assert not list((tmp_path / "cache").glob("*.tmp*"))


def test_non_text_column_is_a_user_error(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), path)
    with pytest.raises(UserError, match="holds int values, not text"):
        load_corpus(str(path), tmp_path / "cache", show_progress=False)


@pytest.mark.parametrize("data", ["hf:HuggingFaceFW/fineweb-edu", "saved"])
def test_a_dataset_without_the_datasets_extra_is_one_line_naming_the_install(data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets now fails as where it is not installed
    if data == "saved":
        data = tmp_path / "saved"
        data.mkdir()
        (data / "dataset_dict.json").write_text('{"splits": ["train"]}')
    with pytest.raises(UserError, match=r'needs the datasets package, an optional extra: pip install -e "\.\[datasets\]"') as error:
        resolve_sources(str(data))
    assert "\n" not in str(error.value)



def test_a_parquet_corpus_without_pyarrow_is_one_line_naming_the_install_before_anything_is_written(
        tmp_path, monkeypatch, capsys):
    from smolm135.errors import run_cli
    from smolm135.training import trainer

    corpus = write_parquet(tmp_path / "corpus.parquet", DOCUMENTS)
    run_dir = tmp_path / "run"
    for module in ("pyarrow", "pyarrow.parquet"):  # as in an environment set up before pyarrow joined the install
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: trainer.main(["--preset", "tiny", "--device", "cpu", "--dtype", "float32", "--data",
                                      str(corpus), "--out-dir", str(run_dir), "--max-steps", "1"]))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert "corpus.parquet needs the pyarrow package" in lines[0] and "pip install -r requirements.txt" in lines[0]
    assert not run_dir.exists()

@needs_datasets
def test_saved_dataset_folder_tokenizes_like_text(tmp_path, text_tokens):
    from datasets import Dataset, DatasetDict

    dataset = Dataset.from_dict({"text": DOCUMENTS, "id": list(range(len(DOCUMENTS)))})
    dataset.save_to_disk(str(tmp_path / "saved"))
    assert tokens_of(tmp_path / "saved", tmp_path / "cache") == text_tokens
    other = Dataset.from_dict({"text": ["held out"]})
    DatasetDict(validation=other, train=dataset).save_to_disk(str(tmp_path / "dict"))
    assert tokens_of(tmp_path / "dict", tmp_path / "cache") == text_tokens  # the train split
    DatasetDict(a=other, b=dataset).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(UserError, match="splits a, b"):
        resolve_sources(str(tmp_path / "two"))


@needs_datasets
def test_hub_dataset_is_refused_offline_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="Hub is switched off here") as error:
        resolve_sources("hf:HuggingFaceFW/fineweb-edu:sample-10BT")
    assert "\n" not in str(error.value)


@needs_datasets
def test_unreachable_hub_is_one_line(monkeypatch):
    from huggingface_hub import HfApi

    def no_network(*args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known\nmore detail")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(HfApi, "dataset_info", no_network)
    with pytest.raises(UserError, match="cannot reach the Hugging Face Hub") as error:
        resolve_sources("hf:roneneldan/TinyStories")
    assert "\n" not in str(error.value)


@needs_datasets
def test_hub_ids_parse_name_config_and_split(monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(HfApi, "dataset_info", lambda self, repo_id, **kw: type("Info", (), {"sha": "abc"}))
    assert resolve_sources("hf:a/b") == [sources.HubDataset("a/b", None, "train", "abc")]
    assert resolve_sources("hf:a/b:cfg:validation") == [sources.HubDataset("a/b", "cfg", "validation", "abc")]
    assert resolve_sources("hf:a/b::test")[0].name == "hf:a/b:test"
    with pytest.raises(UserError, match="hf:NAME:CONFIG:SPLIT"):
        resolve_sources("hf:a:b:c:d")


@pytest.mark.slow
def test_trainer_trains_on_a_parquet_column_named_by_the_flag(tmp_path):
    from smolm135.training.trainer import build_parser, train
    from smolm135.training.config import config_from_args

    path = write_parquet(tmp_path / "c.parquet", [make_corpus_text(300, seed=i) for i in range(4)], column="content")
    assert config_from_args(build_parser().parse_args(["--text-field", "content"])).text_field == "content"
    _, summary = train(tiny_train_config(path, tmp_path, text_field="content", max_steps=2, eval_every=2))
    assert summary["steps"] == 2 and summary["final_val_loss"] < summary["initial_val_loss"]


def test_invalid_utf8_in_json_lines_is_replaced_and_counted(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "good \xff\xfe text"}\n{"text": "more"}\n')
    corpus = load_corpus(str(path), tmp_path / "cache", show_progress=False)
    assert corpus.replaced_bytes == 2
    encoder = get_tokenizer()
    assert list(corpus.tokens) == encoder.encode_ordinary("good \ufffd\ufffd text") + [END_OF_TEXT_ID] + encoder.encode_ordinary("more")
