"""Shared fixtures: a tiny random Llama with the bundled SmolLM2 tokenizer, and tiny datasets. Plain
helper functions and constants live in tests/helpers.py (import them from there, not from conftest).

Run: .venv/bin/pytest tests/   (or `make test`)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import TEXT, small_text_dataset


def _share_the_cpus() -> None:
    """Under pytest-xdist (`make test` runs TEST_WORKERS workers), hold this worker and every process it
    starts (dvc stages, servers, llama.cpp) to its own share of the CPUs: worker i of n gets every n-th CPU
    of the affinity mask from the i-th. torch's and llama.cpp's thread pools size themselves from the mask
    (lorapipe.llama.threads), so two workers do not each spin two threads on two cores. Shares are logical
    CPUs: where hyperthread siblings are numbered next to each other, workers share physical cores. A
    replacement worker (gw<n> with n ≥ the count, after a crash) keeps the whole mask."""
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if count < 2 or not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    index = int(worker[2:])
    if index >= count:  # a replacement for a crashed worker (xdist numbers it on): its share is unknown
        return
    cpus = sorted(os.sched_getaffinity(0))
    share = cpus[index % len(cpus) :: count]
    os.sched_setaffinity(0, share)
    os.environ.setdefault("OMP_NUM_THREADS", str(len(share)))


_share_the_cpus()  # before anything imports torch

INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items):
    """Tests under tests/integration/ run the pipeline end to end: they carry the `integration` marker,
    which `make test` leaves out and `make test-all` (CI) runs. GPU tests skip without CUDA."""
    cuda = None
    for item in items:
        if INTEGRATION in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("gpu"):
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def bundled_tokenizer_dir(tmp_path_factory) -> Path:
    """The SmolLM2 tokenizer read from the bundled GGUF (llama.cpp's converter knows its hash)."""
    from transformers import AutoTokenizer

    from lorapipe.models import bundled_gguf

    gguf = bundled_gguf("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_tokenizer_dir) -> Path:
    """A 2-layer, 64-wide random Llama (about 3.2 M parameters) saved as a Hugging Face folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def text_dir(tmp_path) -> Path:
    """An extracted-text folder with a manifest, as the extract stage writes it."""
    from lorapipe.io import write_jsonl

    out = tmp_path / "extracted"
    out.mkdir()
    rows = []
    for i in range(3):
        name = f"doc{i}.md.txt"
        (out / name).write_text(f"Document {i}.\n\n" + TEXT * (i + 2))
        rows.append({"source": f"docs/doc{i}.md", "status": "ok", "output": name})
    write_jsonl(out / "manifest.jsonl", rows)
    return out


@pytest.fixture
def dataset_dir(tmp_path, text_dir, tiny_model_dir) -> Path:
    from lorapipe import build_dataset

    out = tmp_path / "dataset"
    build_dataset(
        text_dir,
        tiny_model_dir,
        out,
        max_seq_len=64,
        overlap_tokens=8,
        val_fraction=0.25,
        seed=1,
        system_prompt="You answer from the documents.",
    )
    return out


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory, tiny_model_dir) -> Path:
    """An adapter trained for a few steps at a high learning rate, so that its update is not zero."""
    from lorapipe.params import LoraParams, TrainParams
    from lorapipe.train import train_lora

    work = tmp_path_factory.mktemp("trained")
    small_text_dataset(work, tiny_model_dir)
    train_lora(
        work / "dataset",
        tiny_model_dir,
        work / "adapter",
        lora=LoraParams(rank=4, alpha=8),
        train=TrainParams(
            max_steps=3,
            lr=5e-2,
            batch_size=2,
            log_every=1,
            precision="fp32",
            save_steps=0,
            eval_steps=0,
            warmup_steps=0,
        ),
        metrics_path=work / "train.json",
        loss_path=work / "loss.tsv",
        run_info={"run_id": None},
    )
    return work / "adapter"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test gets its own lorapipe cache, so no test sees another's cached extractions."""
    monkeypatch.setenv("LORAPIPE_CACHE_DIR", str(tmp_path / "lorapipe-cache"))


@pytest.fixture(scope="module")
def teacher_server():
    """A fake OpenAI-compatible teacher (tests/fake_teacher.py) for a module's pipeline runs, and the
    ``synth`` params that point the synth stage at it (2 pairs per passage)."""
    from fake_teacher import FakeTeacher

    with FakeTeacher(models=["fake-teacher"]) as server:
        server.synth_params = {"questions_per_passage": 2, "base_url": server.url, "model": "fake-teacher"}
        yield server
