"""Tracking against a real MLflow server on 127.0.0.1: train a tiny model, read the run back over REST;
and the server's UI, rendered by headless Chromium, opens lorapipe's experiment on its runs and metrics.

Run: .venv/bin/pytest tests/integration/test_tracking_server.py   (the UI test needs Debian's chromium:
`make test-tools` installs it, and the test is skipped where it cannot run)
"""

import json
import html
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

import pytest

from helpers import free_port
from lorapipe import tracking
from lorapipe.params import LoraParams, TrainParams
from lorapipe.train import train_lora


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
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


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no chromium on PATH: `make test-tools` installs Debian's chromium (apt, as root or sudo -n)")
    return found


def _render(url: str, screenshot: Path, budget_ms: int) -> str:
    """The page's text after its scripts ran for `budget_ms` of page time (headless Chromium's DOM,
    scripts and styles left out); a screenshot of it goes to `screenshot`."""
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",  # the tests may run as root, where Chromium's sandbox refuses to start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={screenshot.parent / 'chromium-profile'}",  # a fresh browser: no saved UI choices
        "--window-size=1600,1000",
        f"--virtual-time-budget={budget_ms}",  # page time runs ahead while nothing is fetched
        f"--screenshot={screenshot}",
        "--dump-dom",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "</html>" in result.stdout, result.stderr[-3000:]
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", result.stdout, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", text)))


def test_the_ui_opens_the_experiment_on_its_runs_and_metrics(mlflow_server, monkeypatch, tmp_path):
    """MLflow 3's UI opens an experiment on its GenAI overview ("No data available") unless it is in
    the model training view: the address lorapipe gives must land on the run, by name, and its metrics."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-lora")  # the run's name, as under `dvc exp run`
    run = tracking.start_training_run({"lora.rank": 4, "train.lr": 0.01}, {"dataset_hash": "abc"})
    for step in (1, 2, 3):
        tracking.log_step(run["run_id"], step, {"loss": 4.0 - step, "learning_rate": 0.01})
    tracking.finish_run(run["run_id"], {"val_loss": 1.25})

    url = tracking.runs_page_url(mlflow_server)
    # The charts draw after the UI's timers (debounces, lazy chunks): measured here, 30 s of page time
    # was too little and 120 s enough; a busy machine gets a second try with more.
    page = _render(url, tmp_path / "runs.png", 120_000)
    if " Step " not in page:  # no chart's axis yet
        page = _render(url, tmp_path / "runs.png", 600_000)

    assert "No data available" not in page, page[:2000]
    assert "Model training" in page and "Model metrics" in page, page[:2000]
    assert "tiny-lora" in page, page[:2000]
    for metric in ("loss", "learning_rate", "val_loss", "1.25"):  # each metric's chart; val_loss's bar value
        assert re.search(rf"(^|\s){re.escape(metric)}(\s|$)", page), (metric, page[:2000])
    assert (tmp_path / "runs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
