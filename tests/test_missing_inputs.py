"""A missing local folder is never looked up on the Hugging Face Hub: every library function that reads
a model folder, a dataset or an earlier stage's file raises FileNotFoundError naming the path (and, for
the pipeline's own paths, the command that writes it), before any download or any work.

Run: .venv/bin/pytest tests/test_missing_inputs.py
"""

from __future__ import annotations

import pytest

from lorapipe import paths

BASE = "models/base not found: run `dvc repro base` (or `lorapipe base`)"


@pytest.fixture
def empty(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # a Hub lookup would be tried, and fail on the network
    return tmp_path


@pytest.mark.parametrize("loader", ["load_tokenizer", "load_causal_lm"])
def test_model_loaders_name_the_missing_folder(empty, loader):
    from lorapipe import models

    load = getattr(models, loader)
    with pytest.raises(FileNotFoundError) as caught:
        load("models/base")
    assert str(caught.value) == BASE
    with pytest.raises(FileNotFoundError) as caught:
        load(empty / "models" / "merged")  # absolute, inside the working folder: still the pipeline's path
    assert str(caught.value) == f"{empty / 'models' / 'merged'} not found: run `dvc repro merge` (or `lorapipe merge`)"
    with pytest.raises(FileNotFoundError) as caught:
        load("owner/model")  # a folder argument, even when it reads like a Hub id
    assert str(caught.value) == "owner/model not found"


def test_library_stages_name_the_missing_base_before_any_work(empty, text_dir):
    from lorapipe.dataset import build_dataset
    from lorapipe.evaluate import evaluate_base

    with pytest.raises(FileNotFoundError) as caught:
        build_dataset(text_dir, "models/base", empty / "out", max_seq_len=64)
    assert str(caught.value) == BASE
    assert not (empty / "out").exists()
    (empty / "val.jsonl").write_text('{"text": "a", "source": "a", "task": "text"}\n')
    with pytest.raises(FileNotFoundError) as caught:
        evaluate_base(empty / "val.jsonl", "models/base", empty / "eval.json", prompts_path=empty / "p.json")
    assert str(caught.value) == BASE


def test_train_names_the_missing_base(empty, dataset_dir):
    from lorapipe.train import train_lora

    with pytest.raises(FileNotFoundError) as caught:
        train_lora(dataset_dir, "models/base", empty / "adapter")
    assert str(caught.value) == BASE
    assert not (empty / "adapter").exists()


@pytest.mark.parametrize("name", ["./my-model", "/nowhere/model", "~/no-such-model-here", "a/b/c", "models/x/"])
def test_a_model_name_that_can_only_be_a_path_is_not_asked_of_the_hub(empty, name):
    from lorapipe.models import describe_source, prepare_base_model

    with pytest.raises(FileNotFoundError, match="no such folder") as caught:
        prepare_base_model(name, empty / "base")
    assert repr(name) in str(caught.value)
    assert not (empty / "base").exists()
    assert describe_source("HuggingFaceTB/SmolLM2-135M-Instruct") == "hub"  # an owner/name id still is one
    assert describe_source("gpt2") == "hub"


def test_require_returns_the_path_that_exists(empty):
    (empty / "here").mkdir()
    assert paths.require("here", "--x") == paths.Path("here")
