"""Train stage: LoRA on a tiny model, outputs, target modules, 4-bit config.

Run: .venv/bin/pytest tests/test_train.py
"""

from pathlib import Path

from conftest import read_json
from lorapipe import train_lora
from lorapipe.train import default_target_modules, quantization_config, resolve_load_in_4bit, resolve_precision


def test_adapter_outputs(tmp_path, dataset_dir, tiny_model_dir):
    result = train_lora(dataset_dir, tiny_model_dir, tmp_path / "adapter", rank=4, alpha=8, max_steps=4,
                        batch_size=2, log_every=2, lr=1e-2, precision="fp32",
                        metrics_path=tmp_path / "train.json", loss_path=tmp_path / "loss.tsv",
                        run_info={"run_id": "abc", "experiment": "x"})
    names = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "run.json",
            "lorapipe_params.yaml"} <= names
    assert read_json(tmp_path / "adapter" / "run.json") == {"run_id": "abc", "experiment": "x"}
    config = read_json(tmp_path / "adapter" / "adapter_config.json")
    assert config["r"] == 4 and set(config["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    metrics = read_json(tmp_path / "train.json")
    assert metrics["steps"] == 4 and metrics["val_loss"] > 0 and metrics["tokens"] > 0
    assert (tmp_path / "loss.tsv").read_text().splitlines() == [
        "step\tloss", *(f"{s}\t{v:.6f}" for s, v in result["history"])]
    assert [s for s, _ in result["history"]] == [2, 4]


def test_loss_falls_when_overfitting_one_batch(tmp_path, dataset_dir, tiny_model_dir):
    result = train_lora(dataset_dir, tiny_model_dir, tmp_path / "a", rank=8, alpha=16, max_steps=12, lr=3e-2,
                        batch_size=8, log_every=4, precision="fp32", metrics_path=None, loss_path=None)
    losses = [loss for _, loss in result["history"]]
    assert losses[-1] < losses[0]


def test_epochs_when_max_steps_is_minus_one(tmp_path, dataset_dir, tiny_model_dir):
    rows = len((dataset_dir / "train.jsonl").read_text().splitlines())
    result = train_lora(dataset_dir, tiny_model_dir, tmp_path / "a", max_steps=-1, epochs=2, batch_size=2,
                        precision="fp32", metrics_path=None, loss_path=None)
    assert result["steps"] == 2 * -(-rows // 2)


def test_device_and_precision_policy():
    assert resolve_load_in_4bit("auto", "cpu") is False
    assert resolve_load_in_4bit("auto", "cuda") is True
    assert resolve_load_in_4bit(True, "cpu") is True
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", "cpu") in ("fp32", "bf16")


def test_qlora_config():
    import torch

    assert quantization_config(False, "nf4", True, "bf16") is None
    config = quantization_config(True, "nf4", True, "bf16")
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


def test_target_modules_for_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    assert default_target_modules(model) == ["c_attn", "c_fc", "c_proj"]


def _train(dataset_dir, tiny_model_dir, out, **kwargs):
    args = {"rank": 4, "alpha": 8, "dropout": 0.1, "max_steps": 6, "lr": 1e-2, "batch_size": 2, "log_every": 1,
            "precision": "fp32", "seed": 7, "metrics_path": None, "loss_path": None, **kwargs}
    return train_lora(dataset_dir, tiny_model_dir, out, **args)


def _adapter(folder):
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def test_same_seed_same_losses(tmp_path, dataset_dir, tiny_model_dir):
    first = _train(dataset_dir, tiny_model_dir, tmp_path / "a")["history"]
    second = _train(dataset_dir, tiny_model_dir, tmp_path / "b")["history"]
    assert len(first) == 6
    for (s1, l1), (s2, l2) in zip(first, second):
        assert s1 == s2 and abs(l1 - l2) <= 1e-6


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, dataset_dir, tiny_model_dir):
    """Kill training right after its step-3 checkpoint, rerun, and compare with a run never killed."""
    import os
    import signal
    import subprocess
    import sys

    reference = _train(dataset_dir, tiny_model_dir, tmp_path / "reference", save_steps=3, resume="never")
    cache = tmp_path / "checkpoints"
    code = ("import sys; sys.path.insert(0, {tests!r}); from test_train import _train; from pathlib import Path; "
            "_train(Path({d!r}), Path({m!r}), Path({o!r}), save_steps=3, checkpoint_dir=Path({c!r}))").format(
        tests=str(Path(__file__).parent), d=str(dataset_dir), m=str(tiny_model_dir), o=str(tmp_path / "out"),
        c=str(cache))
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "LORAPIPE_TRAIN_FAULT": "kill-after-checkpoint:3"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (tmp_path / "out").exists()
    (run_folder,) = cache.iterdir()
    assert [p.name for p in run_folder.iterdir()] == ["step-3"]

    resumed = _train(dataset_dir, tiny_model_dir, tmp_path / "out", save_steps=3, checkpoint_dir=cache)
    assert resumed["history"][:3] == reference["history"][:3]
    for (s1, l1), (s2, l2) in zip(reference["history"], resumed["history"]):
        assert s1 == s2 and abs(l1 - l2) <= 1e-6
    a, b = _adapter(tmp_path / "reference"), _adapter(tmp_path / "out")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    assert not run_folder.exists()  # checkpoints are removed once the adapter is saved


def test_checkpoints_of_other_params_are_ignored(tmp_path, dataset_dir, tiny_model_dir, capsys):
    from lorapipe.checkpoints import Checkpoints

    cache = tmp_path / "checkpoints"
    (cache / "someotherrun" / "step-2").mkdir(parents=True)
    _train(dataset_dir, tiny_model_dir, tmp_path / "a", max_steps=2, checkpoint_dir=cache)
    assert "ignoring 1 checkpoint folder(s) made with other data or params" in capsys.readouterr().out
    assert Checkpoints("someotherrun", root=cache).latest().name == "step-2"


def test_resume_from_a_path_that_is_no_checkpoint(tmp_path, dataset_dir, tiny_model_dir):
    import pytest

    with pytest.raises(FileNotFoundError, match="not a lorapipe checkpoint"):
        _train(dataset_dir, tiny_model_dir, tmp_path / "a", resume=str(tmp_path))


def test_unknown_target_modules_are_named(tmp_path, dataset_dir, tiny_model_dir):
    import pytest

    with pytest.raises(ValueError, match=r"lora.target_modules \['qkv'\] are not linear layers.*q_proj"):
        _train(dataset_dir, tiny_model_dir, tmp_path / "a", target_modules=["q_proj", "qkv"])


def test_sequence_length_beyond_the_context_is_refused(tmp_path, dataset_dir, tiny_model_dir):
    import json

    import pytest

    stats = json.loads((dataset_dir / "stats.json").read_text())
    (dataset_dir / "stats.json").write_text(json.dumps({**stats, "max_seq_len": 4096}))
    with pytest.raises(ValueError, match="beyond the model's context of 1024 tokens"):
        _train(dataset_dir, tiny_model_dir, tmp_path / "a")
