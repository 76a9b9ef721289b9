"""Shared fixtures: a tiny random Llama with the bundled SmolLM2 tokenizer, and tiny datasets.

Run: .venv/bin/pytest tests/   (or `make test`)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SAMPLE_DOCS = ROOT / "data" / "raw" / "docs"

TEXT = (
    "Low-rank adaptation trains two thin matrices beside each frozen weight matrix. "
    "The product of the two matrices is added to the layer's output, scaled by alpha over rank. "
    "Only the thin matrices receive gradients, so the optimizer state stays small.\n\n"
    "A pipeline records data, code and parameters together. Each stage reads declared inputs and "
    "writes declared outputs, so a change reruns only the stages that depend on it."
)


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
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
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
    build_dataset(text_dir, tiny_model_dir, out, max_seq_len=64, overlap_tokens=8, val_fraction=0.25, seed=1,
                  system_prompt="You answer from the documents.")
    return out


@pytest.fixture(scope="session")
def trained_adapter(tmp_path_factory, tiny_model_dir) -> Path:
    """An adapter trained for a few steps at a high learning rate, so that its update is not zero."""
    from lorapipe import build_dataset
    from lorapipe.io import write_jsonl
    from lorapipe.params import LoraParams, TrainParams
    from lorapipe.train import train_lora

    work = tmp_path_factory.mktemp("trained")
    text = work / "text"
    text.mkdir()
    (text / "a.txt").write_text(TEXT * 6)
    write_jsonl(text / "manifest.jsonl", [{"source": "a.md", "status": "ok", "output": "a.txt"}])
    build_dataset(text, tiny_model_dir, work / "dataset", max_seq_len=64, overlap_tokens=8, val_fraction=0.25,
                  split_by="chunk")
    train_lora(work / "dataset", tiny_model_dir, work / "adapter", lora=LoraParams(rank=4, alpha=8),
               train=TrainParams(max_steps=3, lr=5e-2, batch_size=2, log_every=1, precision="fp32", save_steps=0,
                                 eval_steps=0, warmup_steps=0),
               metrics_path=work / "train.json", loss_path=work / "loss.tsv", run_info={"run_id": None})
    return work / "adapter"


def copy_project(dest: Path) -> Path:
    """Copy the files git would commit (tracked plus untracked, not ignored) into `dest`."""
    import subprocess

    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def run_ok(args: list[str], cwd: Path, env: dict) -> str:
    """Run a command; fail the test with its output's tail unless it exits 0."""
    import subprocess

    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{output[-6000:]}"
    return output


def git_project(dest: Path, tiny_model_dir: Path, labeled: bool = True, **sections: dict) -> tuple[Path, dict]:
    """A copy of the project in a new git repo at `dest`, with params for the tiny model (each of
    `sections` updates that params section), committed; returns the repo and the environment to run
    `dvc` in (this venv first on PATH, no outside MLflow store)."""
    import os
    import sys

    import yaml

    repo = copy_project(dest)
    if labeled:  # labeled examples beside the documents: dataset.mode auto builds a text and a chat task
        shutil.copy(FIXTURES / "labeled" / "snips_sample.jsonl", repo / "data" / "raw" / "labeled")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"]["name"] = str(tiny_model_dir)
    params["dataset"].update(max_seq_len=128, overlap_tokens=16)
    params["train"].update(max_steps=4, batch_size=2, log_every=2)
    params["export"].update(quants=["Q8_0"], outtype="f32", name="tiny")
    params["eval"].update(max_samples=4, num_generations=1, max_new_tokens=8)
    for section, values in sections.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "LORAPIPE_HOME")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    run_ok(["git", "init", "-q", "-b", "main"], repo, env)
    run_ok(["git", "config", "user.name", "lorapipe tests"], repo, env)
    run_ok(["git", "config", "user.email", "tests@lorapipe.invalid"], repo, env)
    run_ok(["git", "add", "-A"], repo, env)
    run_ok(["git", "commit", "-q", "-m", "project"], repo, env)
    return repo, env


def read_json(path: Path):
    return json.loads(Path(path).read_text())


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test gets its own lorapipe cache, so no test sees another's cached extractions."""
    monkeypatch.setenv("LORAPIPE_CACHE_DIR", str(tmp_path / "lorapipe-cache"))
