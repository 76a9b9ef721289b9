"""Data-parallel training: `train.num_processes: 2` runs training under `accelerate launch`, on one
machine or, with an accelerate config of two machines, on two (here: two `lorapipe train` processes
on 127.0.0.1, machine 0 and `--machine-rank 1`, which must train the adapter one machine trains).

Run: .venv/bin/pytest tests/test_distributed.py   (CPU processes over gloo; the three integration-marked
tests take 15 to 75 s each on 2 cores, `-m "not integration"` leaves them out)
"""

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from helpers import ROOT, free_port, read_json
from lorapipe.distributed import (
    DEFAULT_PORT,
    Machines,
    launch_command,
    machines,
    train_lora_distributed,
    wait_for_main_process,
)
from lorapipe.io import write_provenance
from lorapipe.params import LoraParams, TrainParams
from lorapipe.train import job_differences


@pytest.mark.integration  # 10-25 s: a real model, the converter, a timeout or several processes
def test_two_process_ddp_training_on_the_cpu(tmp_path, dataset_dir, tiny_model_dir, capfd):
    result = train_lora_distributed(
        2,
        None,
        dataset_dir=str(dataset_dir),
        base_dir=str(tiny_model_dir),
        out_dir=str(tmp_path / "adapter"),
        lora=LoraParams(rank=4, alpha=8),
        train=TrainParams(
            max_steps=4,
            lr=1e-2,
            batch_size=1,
            log_every=1,
            precision="fp32",
            resume="never",
            save_steps=0,
            eval_steps=0,
            warmup_steps=0,
        ),
        seed=3,
        metrics_path=str(tmp_path / "train.json"),
        loss_path=None,
    )
    out = capfd.readouterr().out
    assert "cpu × 2 processes" in out
    assert out.count("[train] step 4/4 loss") == 1  # only the first process prints
    assert result.metrics.steps == 4 and [s for s, _ in result.history] == [1, 2, 3, 4]
    assert result.resolved.processes == 2
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    metrics = read_json(tmp_path / "train.json")
    assert metrics["steps"] == 4 and metrics["tokens"] > 0


def test_launch_command_without_and_with_an_accelerate_config(tmp_path):
    job, result = Path("job.json"), Path("result.json")
    command = launch_command(4, None, job, result)
    assert command[1:6] == ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "4"]
    assert command[-4:] == ["-m", "lorapipe.distributed", "job.json", "result.json"]
    config = tmp_path / "fsdp.yaml"
    config.write_text("distributed_type: FSDP\n")
    assert launch_command(8, str(config), job, result)[3:7] == ["--config_file", str(config), "--num_processes", "8"]
    with pytest.raises(FileNotFoundError, match="accelerate config"):
        launch_command(2, str(tmp_path / "missing.yaml"), job, result)


# --- across machines --------------------------------------------------------------------------------


def _two_machines(folder: Path, port: int, **settings) -> Path:
    """The README's accelerate config for two machines ("More GPUs, more machines") with machine 0 at
    127.0.0.1:`port`, under data/raw/config/ of `folder` (`settings` replace or add keys; None drops one)."""
    readme = (ROOT / "README.md").read_text()
    text = readme.split("<!-- two-machines-config -->")[1].split("```yaml")[1].split("```")[0]
    config = {**yaml.safe_load(text), "main_process_ip": "127.0.0.1", "main_process_port": port, **settings}
    path = folder / "data" / "raw" / "config" / "two-machines.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({k: v for k, v in config.items() if v is not None}))
    return path


def test_each_machine_launches_with_its_own_rank(tmp_path):
    config = str(_two_machines(tmp_path, 29555))
    job, result = tmp_path / "job.json", tmp_path / "result.json"
    for rank in (0, 1):
        command = launch_command(4, config, job, result, machine_rank=rank)
        assert command[3:9] == ["--config_file", config, "--num_processes", "4", "--machine_rank", str(rank)]
    plan = machines(4, config, 1)
    assert (plan.count, plan.processes_each, plan.main_ip, plan.main_port) == (2, 2, "127.0.0.1", 29555)
    assert machines(2, None) == Machines(1, 2, None, DEFAULT_PORT, None)


@pytest.mark.parametrize(
    ("processes", "rank", "settings", "named"),
    [
        (2, 1, {"main_process_ip": None}, "main_process_ip is missing"),
        (2, 0, {"main_process_port": 0}, "main_process_port 0: set a fixed port"),
        (3, 0, {}, "train.num_processes 3 counts the processes of all 2 machines"),
        (2, 2, {}, "--machine-rank 2 is beyond num_machines 2 (ranks 0 to 1)"),
        (2, 1, {"num_machines": 1}, "--machine-rank 1 joins a training run across machines"),
        (2, 0, {"machine_rank": 1}, "keep machine_rank 0 in the file that every machine shares"),
    ],
)
def test_machine_settings_that_cannot_work_are_named(tmp_path, processes, rank, settings, named):
    config = str(_two_machines(tmp_path, 29555, **settings))
    with pytest.raises(ValueError, match=re.escape(named)) as error:
        machines(processes, config, rank)
    assert "two-machines.yaml (train.accelerate_config)" in str(error.value)


def test_another_machine_needs_a_config_file(tmp_path):
    with pytest.raises(ValueError, match="train.accelerate_config is null"):
        machines(2, None, 1)
    with pytest.raises(FileNotFoundError, match="accelerate config"):
        machines(2, str(tmp_path / "missing.yaml"), 1)


def test_another_machine_waits_for_the_main_process_then_names_it(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:
        wait_for_main_process("127.0.0.1", server.getsockname()[1], 5)  # open: returns at once
    port = free_port()
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"main process 127\.0\.0\.1:{port} \(main_process_ip, ") as error:
        wait_for_main_process("127.0.0.1", port, 1.5, "data/raw/config/two-machines.yaml")
    assert 1.5 <= time.monotonic() - started < 10
    assert "did not answer within 1.5 s" in str(error.value) and f"open TCP port {port}" in str(error.value)


def test_jobs_that_differ_are_named_once_per_machine():
    same = {"machine": 0, "host": "a", "settings": {"lr": 0.01, "batch_size": 4}, "dataset": "d", "base model": "b"}
    same["resume from"] = None
    local = {**same}
    other = {**same, "machine": 1, "host": "b", "dataset": "e", "settings": {"lr": 0.01, "batch_size": 2}}
    assert job_differences([same, local, {**same, "machine": 1, "host": "b"}]) == []
    lines = job_differences([same, local, other, {**other}, {**other, "resume from": "checkpoint-4"}])
    assert lines == ["machine 1 (b, process 2) has another dataset than process 0, has batch_size 2 (process 0: 4)"]
    lines = job_differences([same, {**same, "machine": 1, "resume from": "checkpoint-4"}])
    assert lines == ["machine 1 (a, process 1) resumes from checkpoint-4 (process 0: no checkpoint)"]


def _checkout(folder: Path, dataset_dir: Path, tiny_model_dir: Path, train: dict) -> Path:
    """What a machine holds after `git checkout <commit>` and `dvc pull base dataset`: params.yaml,
    data/dataset and models/base (with the base stage's provenance file)."""
    shutil.copytree(dataset_dir, folder / "data" / "dataset")
    shutil.copytree(tiny_model_dir, folder / "models" / "base")
    write_provenance(folder / "models" / "base", {"model.name": "tiny-llama"})
    steps = {"max_steps": 4, "lr": 1e-2, "batch_size": 1, "log_every": 1, "precision": "fp32", "warmup_steps": 0}
    params = {"lora": {"rank": 4, "alpha": 8}, "train": {**steps, "save_steps": 0, "eval_steps": 0, **train}}
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder


def _start(folder: Path, *flags: str) -> subprocess.Popen:
    """`lorapipe train FLAGS` in `folder` as a machine of its own: its own cache, one thread per process,
    its output in `folder`/train.log."""
    env = {**os.environ, "LORAPIPE_CACHE_DIR": str(folder / "cache"), "OMP_NUM_THREADS": "1"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    with (folder / "train.log").open("w") as log:
        command = [sys.executable, "-m", "lorapipe.cli", "train", *flags]
        return subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)


def _logs(folders: dict[str, Path]) -> str:
    """The end of each machine's train.log that exists, to show with a failure."""
    logs = {name: folder / "train.log" for name, folder in folders.items()}
    return "\n".join(f"--- {name}:\n{log.read_text()[-3000:]}" for name, log in logs.items() if log.is_file())


def _finish(processes: dict[str, subprocess.Popen], folders: dict[str, Path], timeout_s: float) -> dict[str, int]:
    """The exit status of each process, waiting `timeout_s` seconds for all together; whatever still
    runs then, or when the test fails, is killed (each launcher and its workers, by pid: the workers
    run in sessions of their own), and a timeout fails the test with the logs."""
    import psutil

    deadline, late = time.monotonic() + timeout_s, []
    try:
        for name, process in processes.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                late.append(name)
    finally:
        for process in processes.values():
            try:
                family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for member in family:
                with contextlib.suppress(psutil.NoSuchProcess):
                    member.kill()
            psutil.wait_procs(family, timeout=10)
    if late:
        pytest.fail(f"{', '.join(late)} still running after {timeout_s:.0f} s\n{_logs(folders)}")
    return {name: process.wait() for name, process in processes.items()}


def _two_checkouts(tmp_path: Path, dataset_dir: Path, tiny_model_dir: Path) -> dict[str, Path]:
    """Machine 0's and machine 1's checkouts of one commit, with the README's two-machine config."""
    port, folders = free_port(), {name: tmp_path / name for name in ("machine0", "machine1")}
    for folder in folders.values():
        config = _two_machines(folder, port).relative_to(folder)
        _checkout(folder, dataset_dir, tiny_model_dir, {"num_processes": 2, "accelerate_config": str(config)})
    return folders


def _train_on_two_machines(folders: dict[str, Path], timeout_s: float = 600) -> dict[str, int]:
    """Machine 1 first (it waits for machine 0's port), then machine 0, as a team would start them."""
    started = {"machine1": _start(folders["machine1"], "--machine-rank", "1"), "machine0": _start(folders["machine0"])}
    return _finish(started, folders, timeout_s)


@pytest.mark.integration  # about a minute: two 2-process trainings of the tiny model
def test_two_machines_train_the_adapter_of_one_machine_with_two_processes(tmp_path, dataset_dir, tiny_model_dir):
    """Machine 0 runs the train stage (`lorapipe train`, as `dvc repro` does) with an accelerate config of
    two machines, machine 1 `lorapipe train --machine-rank 1` in a copy of the same checkout, one process
    each, gloo over 127.0.0.1; their adapter equals that of one machine with `train.num_processes: 2`."""
    folders = _two_checkouts(tmp_path, dataset_dir, tiny_model_dir)
    folders["one machine"] = _checkout(tmp_path / "one machine", dataset_dir, tiny_model_dir, {"num_processes": 2})
    started = time.monotonic()
    assert _train_on_two_machines(folders) == {"machine1": 0, "machine0": 0}, _logs(folders)
    across_s = time.monotonic() - started
    assert _finish({"one machine": _start(folders["one machine"])}, folders, 600) == {"one machine": 0}, _logs(folders)
    print(f"two machines: {across_s:.0f} s; one machine: {time.monotonic() - started - across_s:.0f} s")

    log0, log1 = [(folders[name] / "train.log").read_text() for name in ("machine0", "machine1")]
    assert "machine 0 of 2, 1 of 2 processes" in log0 and "cpu × 2 processes" in log0
    assert log0.count("[train] step 4/4 loss") == 1
    assert "machine 1 of 2, 1 of 2 processes: joining machine 0 at 127.0.0.1" in log1 and "step 4/4" not in log1
    assert not (folders["machine1"] / "models" / "lora_output").exists()  # machine 0 alone writes
    assert not (folders["machine1"] / "reports").exists()
    assert read_json(folders["machine0"] / "reports" / "train.json")["steps"] == 4

    across = load_file(folders["machine0"] / "models" / "lora_output" / "adapter_model.safetensors")
    single = load_file(folders["one machine"] / "models" / "lora_output" / "adapter_model.safetensors")
    assert across.keys() == single.keys() and across
    differences = {key: (across[key] - single[key]).abs().max().item() for key in single}
    print(f"max abs difference: {max(differences.values()):.3g} over {len(differences)} tensors")
    assert max(differences.values()) <= 1e-5, differences
    assert max(single[key].abs().max().item() for key in single if "lora_B" in key) > 1e-4  # it trained


@pytest.mark.integration  # about 30 s: both machines load the model, compare their jobs and stop
def test_machines_with_different_data_stop_before_training_and_say_so(tmp_path, dataset_dir, tiny_model_dir):
    """Machine 1 holds another dataset (a `dvc pull` of another commit): every process stops before the
    first step, naming the machine and what differs, and neither machine writes an adapter."""
    folders = _two_checkouts(tmp_path, dataset_dir, tiny_model_dir)
    val = folders["machine1"] / "data" / "dataset" / "val.jsonl"
    rows = val.read_text().splitlines(keepends=True)
    val.write_text("".join([*rows, rows[-1]]))  # one validation row more
    statuses = _train_on_two_machines(folders)
    assert statuses["machine0"] != 0 and statuses["machine1"] != 0, _logs(folders)
    for folder in folders.values():
        log = (folder / "train.log").read_text()
        assert "did not build the same training job: machine 1 (" in log and "has another dataset" in log, log[-3000:]
        assert "[train] step 1/" not in log and not (folder / "models" / "lora_output").exists()
