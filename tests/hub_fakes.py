"""Stand-ins for huggingface_hub in the push tests, and a Hub that holds one dataset: nothing here reaches
the network."""
from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import huggingface_hub
import pytest
from huggingface_hub.errors import HTTPError


class RecordingHfApi:
    """Stands in for huggingface_hub.HfApi: records where the upload would go and what it would hold."""

    calls: ClassVar[list] = []

    def __init__(self, token=None):
        self.calls.append(("HfApi", {"token": token}))

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}"

    def upload_folder(self, **kwargs):
        files = sorted(p.name for p in Path(kwargs["folder_path"]).iterdir())
        self.calls.append(("upload_folder", {**kwargs, "files": files}))


class FailingHfApi:
    def __init__(self, error):
        self.error = error

    def create_repo(self, **kwargs):
        raise self.error

    def upload_folder(self, **kwargs):
        pytest.fail("upload after a failed create_repo")


def http_library():
    return importlib.import_module(HTTPError.__module__.split(".")[0])  # httpx (or the hub's own copy of it)


def offline_api() -> FailingHfApi:
    """An HfApi whose first request fails as it does with no network (DNS failure)."""
    return FailingHfApi(http_library().ConnectError("[Errno -2] Name or service not known"))


def unset_token(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # ignore a saved `hf auth login`


def serve_hub_dataset(monkeypatch, repo_id: str, dataset, sha: str) -> None:
    """The Hub holding `dataset` (a datasets.Dataset) as the dataset `repo_id` at commit `sha`: huggingface_hub's
    dataset_info answers that commit, and datasets' load_dataset streams the rows of that commit only."""
    import datasets
    from huggingface_hub import HfApi

    for switch in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(switch, raising=False)

    def dataset_info(self, name, **kwargs):
        assert name == repo_id
        return SimpleNamespace(sha=sha)

    def load_dataset(path, name=None, split=None, revision=None, streaming=False, **kwargs):
        assert (path, split, revision, streaming) == (repo_id, "train", sha, True)
        return dataset.to_iterable_dataset()

    monkeypatch.setattr(HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
