"""Training on several processes: `train.num_processes > 1` runs `train_lora` under `accelerate launch`.

    from lorapipe.distributed import train_lora_distributed
    result = train_lora_distributed(2, None, dataset_dir="data/dataset", base_dir="models/base",
                                    out_dir="models/lora_output", lora=LoraParams(rank=8), ...)

Without an accelerate config file this is DDP on one machine: one process per GPU (NCCL), or CPU
processes over gloo where there is no GPU. An accelerate config file (``accelerate config``) chooses
FSDP, DeepSpeed or several machines instead. Each process trains on its share of every batch; the
first process prints, logs to MLflow and writes the adapter and reports.

The parent process hands the arguments to the workers as a JSON file (the params sections as their
``model_dump()``, rebuilt by the workers) and reads the first worker's result back the same way
(``python -m lorapipe.distributed JOB RESULT``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorapipe.textfiles import plain_utf8

if TYPE_CHECKING:
    from lorapipe.train import TrainResult


def launch_command(num_processes: int, accelerate_config: str | None, job: Path, result: Path) -> list[str]:
    """The `accelerate launch` command line for the workers."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        if not Path(accelerate_config).is_file():
            raise FileNotFoundError(
                f"train.accelerate_config: {accelerate_config} does not exist "
                "(write one with `accelerate config --config_file FILE`)"
            )
        # accelerate reads the file itself, as UTF-8 without a byte-order mark: give it such a copy
        config = plain_utf8(accelerate_config, job.parent)
        command += ["--config_file", str(config), "--num_processes", str(num_processes)]
    else:
        # --multi_gpu means DDP through torch.distributed.run; without a GPU accelerate uses gloo on the CPU.
        command += [
            "--multi_gpu",
            "--num_processes",
            str(num_processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]
    return [*command, "-m", "lorapipe.distributed", str(job), str(result)]


def train_lora_distributed(
    num_processes: int, accelerate_config: str | None = None, *, mlflow_run_id: str | None = None, **kwargs: Any
) -> TrainResult:
    """Run `lorapipe.train.train_lora(**kwargs)` on `num_processes` processes and return the first
    process's result. `kwargs` are train_lora's arguments by name (``dataset_dir=…``, ``lora=…``; no
    `on_log`): paths, JSON values and the params sections. With `mlflow_run_id`, the first process
    logs each step's metrics to that run. Raises RuntimeError when the workers fail."""
    from lorapipe.train import TrainResult

    sent = {
        key: value.model_dump(mode="json") if hasattr(value, "model_dump") else value for key, value in kwargs.items()
    }
    with tempfile.TemporaryDirectory(prefix="lorapipe-ddp-") as folder:
        job, result = Path(folder, "job.json"), Path(folder, "result.json")
        job.write_text(json.dumps({"kwargs": sent, "mlflow_run_id": mlflow_run_id}, default=str))
        env = dict(os.environ)
        if "OMP_NUM_THREADS" not in env:  # share the cores instead of each process taking all of them
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_processes))
        command = launch_command(num_processes, accelerate_config, job, result)
        print(f"[train] {num_processes} processes: {' '.join(command[1:4])} … -m lorapipe.distributed", flush=True)
        done = subprocess.run(command, env=env)
        if done.returncode != 0 or not result.is_file():
            raise RuntimeError(
                f"distributed training failed (accelerate launch exit status {done.returncode}); "
                "the workers' errors are printed above"
            )
        return TrainResult.from_dict(json.loads(result.read_text()))


def _worker(job_path: str, result_path: str) -> None:
    from lorapipe.params import LoraParams, QuantParams, TrainParams
    from lorapipe.train import train_lora

    sections = {"lora": LoraParams, "train": TrainParams, "quant": QuantParams}  # sent as model_dump()
    job = json.loads(Path(job_path).read_text())
    kwargs = {
        key: sections[key].model_validate(value) if key in sections else value for key, value in job["kwargs"].items()
    }
    main = int(os.environ.get("RANK", "0")) == 0
    if not main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - one process prints the progress
    on_log = None
    if main and job["mlflow_run_id"]:
        from lorapipe import tracking

        on_log = lambda step, metrics: tracking.log_step(job["mlflow_run_id"], step, metrics)  # noqa: E731
    result = train_lora(**kwargs, on_log=on_log)
    if main:
        Path(result_path).write_text(json.dumps(asdict(result)))


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
