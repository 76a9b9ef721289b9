"""Base stage: the bundled GGUF, local folders, Hub ids and the GGUF-tag trap.

Run: .venv/bin/pytest tests/test_models.py
"""

import pytest
import torch

from helpers import BASE_FILES

from lorapipe import prepare_base_model
from lorapipe.models import _load_from_gguf, bundled_gguf, describe_source, hub_token


def test_bundled_model_is_found():
    path = bundled_gguf("smollm2-135m-instruct")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_local_folder_becomes_base(tmp_path, tiny_model_dir):
    out = prepare_base_model(str(tiny_model_dir), tmp_path / "base")
    names = {p.name for p in out.iterdir()}
    assert names == BASE_FILES
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


@pytest.mark.integration  # 10-25 s: a real model, the converter, a timeout or several processes
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


class _GatedHub:
    """A fake Hugging Face Hub on 127.0.0.1 that refuses every request as a gated repo does, and
    records the Authorization header it was sent."""

    def __init__(self):
        import http.server
        import threading

        self.seen: list[str | None] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _refuse(self):
                hub.seen.append(self.headers.get("Authorization"))
                self.send_response(401)
                self.send_header("X-Error-Code", "GatedRepo")
                self.send_header("X-Error-Message", "Access to model org/gated is restricted.")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _refuse

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _lorapipe_base(tmp_path, hub_url: str, **env_extra):
    import os
    import subprocess
    import sys

    (tmp_path / "params.yaml").write_text("model:\n  name: org/gated\n  revision: main\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=hub_url, HF_HOME=str(tmp_path / "hf-home"), **env_extra)
    return subprocess.run(
        [sys.executable, "-m", "lorapipe.cli", "base"], cwd=tmp_path, env=env, capture_output=True, text=True
    )


def test_gated_model_without_a_token_says_how_to_provide_one(tmp_path):
    hub = _GatedHub()
    try:
        run = _lorapipe_base(tmp_path, hub.url)
    finally:
        hub.server.shutdown()
    assert run.returncode == 2, run.stderr[-2000:]
    assert "org/gated is gated or private (HTTP 401) and no Hub token was given" in run.stderr
    assert "HF_TOKEN" in run.stderr and ".env" in run.stderr and "Traceback" not in run.stderr
    assert hub.seen and not any(hub.seen)


def test_wrong_token_is_refused_and_never_printed(tmp_path):
    secret = "hf_wrongTokenValue1234567890"
    hub = _GatedHub()
    try:
        from_env = _lorapipe_base(tmp_path, hub.url, HF_TOKEN=secret)
        (tmp_path / ".env").write_text(f"HF_TOKEN={secret}x\n")
        from_file = _lorapipe_base(tmp_path, hub.url)
    finally:
        hub.server.shutdown()
    for run in (from_env, from_file):
        assert run.returncode == 2 and "the Hub refused the token from HF_TOKEN (or .env)" in run.stderr
        assert secret not in run.stdout + run.stderr
    assert f"Bearer {secret}" in hub.seen and f"Bearer {secret}x" in hub.seen  # both tokens were sent


def test_load_tokenizer_reads_special_token_text_as_text(tmp_path, tiny_model_dir):
    from lorapipe.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end not in tokenizer("a <|im_end|> b", add_special_tokens=False)["input_ids"]
    assert tokenizer("<|im_end|>", split_special_tokens=False, add_special_tokens=False)["input_ids"] == [end]
    tokenizer.save_pretrained(tmp_path / "saved")  # the default is not written into the saved tokenizer
    assert "split_special_tokens" not in (tmp_path / "saved" / "tokenizer_config.json").read_text()
