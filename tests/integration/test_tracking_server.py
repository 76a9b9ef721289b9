"""Tracking against a real MLflow server on 127.0.0.1: train a tiny model, read the run back over REST.

Run: .venv/bin/pytest tests/integration/test_tracking_server.py
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

import pytest

from lorapipe import tracking
from lorapipe.params import LoraParams, TrainParams
from lorapipe.train import train_lora


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_training_run_lands_on_a_remote_server(mlflow_server, monkeypatch, tmp_path, dataset_dir, tiny_model_dir):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    run = tracking.start_training_run({"lora.rank": 4, "train.lr": 0.01}, {"dataset_hash": "abc"})
    result = train_lora(
        dataset_dir,
        tiny_model_dir,
        tmp_path / "adapter",
        lora=LoraParams(rank=4),
        train=TrainParams(
            max_steps=4, log_every=2, lr=1e-2, precision="fp32", save_steps=0, eval_steps=0, warmup_steps=0
        ),
        run_info=run,
        on_log=lambda step, metrics: tracking.log_step(run["run_id"], step, metrics),
    )
    tracking.finish_run(run["run_id"], asdict(result.metrics), {"adapter": tmp_path / "adapter"})

    data = _get(f"{mlflow_server}/api/2.0/mlflow/runs/get?run_id={run['run_id']}")["run"]["data"]
    assert {p["key"]: p["value"] for p in data["params"]}["lora.rank"] == "4"
    assert {m["key"] for m in data["metrics"]} >= {"loss", "grad_norm", "val_loss", "tokens_per_second"}
    history = _get(f"{mlflow_server}/api/2.0/mlflow/metrics/get-history?run_id={run['run_id']}&metric_key=loss")
    assert [m["step"] for m in history["metrics"]] == [2, 4]
    files = _get(f"{mlflow_server}/api/2.0/mlflow/artifacts/list?run_id={run['run_id']}&path=adapter")["files"]
    assert "adapter/adapter_model.safetensors" in {f["path"] for f in files}
