"""Base stage: the bundled GGUF, local folders, Hub ids and the GGUF-tag trap.

Run: .venv/bin/pytest tests/test_models.py
"""

import pytest
import torch

from lorapipe import prepare_base_model
from lorapipe.models import _load_from_gguf, bundled_gguf, describe_source, hub_token


def test_bundled_model_is_found():
    path = bundled_gguf("smollm2-135m-instruct")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_local_folder_becomes_base(tmp_path, tiny_model_dir):
    out = prepare_base_model(str(tiny_model_dir), tmp_path / "base")
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "lorapipe_params.yaml"} <= names
    assert not any(name.endswith((".bin", ".pt")) for name in names)


def test_hub_id_needs_a_revision(tmp_path):
    assert describe_source("HuggingFaceTB/SmolLM2-135M-Instruct") == "hub"
    with pytest.raises(ValueError, match="model.revision"):
        prepare_base_model("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path / "base")


def test_token_from_env_file(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    (tmp_path / ".env").write_text("HF_TOKEN=hf_fake_from_file\n")
    assert hub_token(tmp_path / ".env") == "hf_fake_from_file"
    monkeypatch.setenv("HF_TOKEN", "hf_fake_from_env")
    assert hub_token(tmp_path / ".env") == "hf_fake_from_env"


def test_gguf_load_gives_a_trainable_saveable_model(tmp_path, tiny_model_dir):
    """transformers tags a GGUF-loaded model as quantized; the rebuilt model must train and save."""
    from lorapipe.export import convert_to_gguf, install_converter
    from lorapipe.models import load_causal_lm

    gguf = convert_to_gguf(tiny_model_dir, tmp_path / "tiny.gguf", "f32", install_converter())
    model, tokenizer = _load_from_gguf(gguf)
    assert getattr(model.config, "quantization_config", None) is None
    assert not getattr(model, "is_quantized", False)
    reference = load_causal_lm(tiny_model_dir)
    ids = torch.tensor([tokenizer("The pipeline records data.")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-4)
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None
    model.save_pretrained(tmp_path / "saved", safe_serialization=True)
    assert (tmp_path / "saved" / "model.safetensors").is_file()
