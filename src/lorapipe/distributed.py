"""Training on several processes: `train.num_processes > 1` runs `train_lora` under `accelerate launch`.

    from lorapipe.distributed import train_lora_distributed
    result = train_lora_distributed(2, None, dataset_dir="data/dataset", base_dir="models/base",
                                    out_dir="models/lora_output", lora=LoraParams(rank=8), ...)

Without an accelerate config file this is DDP on one machine: one process per GPU (NCCL), or CPU
processes over gloo where there is no GPU. An accelerate config file (``accelerate config``) chooses
FSDP, DeepSpeed or several machines instead. Each process trains on its share of every batch; the
first process prints, logs to MLflow and writes the adapter and reports.

Several machines: the config file says ``num_machines`` (≥ 2), ``main_process_ip`` and
``main_process_port``, and ``train.num_processes`` counts the processes of all machines together.
Machine 0 runs the train stage (``dvc repro``), which launches with ``--machine_rank 0`` and writes
everything; each other machine runs ``lorapipe train --machine-rank R`` (`join_training`) in a checkout
of the same commit with the same ``data/dataset`` and ``models/base`` (``dvc pull``), which builds the
same job from its own params.yaml and launches with ``--machine_rank R``. lorapipe passes the machine rank
itself, so the one committed config file serves every machine. Every process checks that all of
them built the same job (lorapipe.train.check_same_job) before the first step.

The parent process hands the arguments to the workers as a JSON file (the params sections as their
``model_dump()``, rebuilt by the workers) and reads the first worker's result back the same way
(``python -m lorapipe.distributed JOB RESULT``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorapipe.textfiles import plain_utf8, read_text

if TYPE_CHECKING:
    from lorapipe.params import Params
    from lorapipe.train import TrainResult

DEFAULT_PORT = 29500  # accelerate's main_process_port when a config file names none
# Seconds a machine of rank ≥ 1 waits for machine 0 to open its port: torch's static rendezvous
# waits as long for the other machines (then machine 0 gives up too).
JOIN_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Machines:
    """The machines of a run, from the accelerate config file `train.accelerate_config` (one machine
    without a file)."""

    count: int  # num_machines
    processes_each: int  # train.num_processes / num_machines
    main_ip: str | None  # main_process_ip: machine 0's address, as the other machines reach it
    main_port: int  # main_process_port (TCP): machine 0's rendezvous
    config: str | None  # the file these came from


def machines(num_processes: int, accelerate_config: str | None, machine_rank: int = 0) -> Machines:
    """Read the machine settings of `accelerate_config` (YAML or JSON, accelerate's own keys) for a run
    of `num_processes` processes in all, as seen from machine `machine_rank`.

    Raises FileNotFoundError for a config file that does not exist, ValueError, naming the file, the
    key and the fix, when: a rank ≥ 1 is given without a config of num_machines ≥ 2, or beyond
    num_machines - 1; num_machines ≥ 2 lacks main_process_ip or sets main_process_port 0 (a free
    port picked on each machine, which the machines cannot agree on); `num_processes` is not a
    multiple of num_machines; the file's machine_rank is another machine's."""
    if machine_rank < 0:
        raise ValueError(f"--machine-rank {machine_rank}: machine ranks count from 0 (machine 0 runs `dvc repro`)")
    if not accelerate_config:
        if machine_rank:
            raise ValueError(
                f"--machine-rank {machine_rank} joins a training run across machines, and train.accelerate_config "
                "is null: name an accelerate config file under data/raw/config/ with num_machines, main_process_ip "
                'and main_process_port (README.md, "More GPUs, more machines")'
            )
        return Machines(1, num_processes, None, DEFAULT_PORT, None)
    if not Path(accelerate_config).is_file():
        raise FileNotFoundError(
            f"train.accelerate_config: {accelerate_config} does not exist "
            "(write one with `accelerate config --config_file FILE`)"
        )
    import yaml

    settings = yaml.safe_load(read_text(accelerate_config)) or {}
    count = int(settings.get("num_machines") or 1)
    where = f"{accelerate_config} (train.accelerate_config)"
    if count < 2:
        if machine_rank:
            raise ValueError(
                f"--machine-rank {machine_rank} joins a training run across machines, and {where} has "
                f"num_machines {count}: set num_machines to the number of machines"
            )
        return Machines(1, num_processes, settings.get("main_process_ip"), DEFAULT_PORT, accelerate_config)
    problems = []
    if machine_rank >= count:
        problems.append(f"--machine-rank {machine_rank} is beyond num_machines {count} (ranks 0 to {count - 1})")
    ip, port = settings.get("main_process_ip"), settings.get("main_process_port")
    port = DEFAULT_PORT if port is None else int(port)  # accelerate's default for a missing or null port
    if not ip:
        problems.append("main_process_ip is missing: set it to machine 0's address that the other machines reach")
    if port <= 0:
        problems.append(
            f"main_process_port {port}: set a fixed port, open between the machines (e.g. {DEFAULT_PORT}); "
            "0 picks a free port on each machine, which the machines cannot agree on"
        )
    if num_processes % count or num_processes < count:
        problems.append(
            f"train.num_processes {num_processes} counts the processes of all {count} machines together: make it "
            f"a multiple of num_machines (processes per machine × {count})"
        )
    if settings.get("machine_rank") not in (None, 0, machine_rank):
        problems.append(
            f"machine_rank {settings['machine_rank']} in the file, and this is machine {machine_rank}: keep "
            "machine_rank 0 in the file that every machine shares (lorapipe passes each machine's rank to "
            "accelerate: 0 under `dvc repro`, R under `lorapipe train --machine-rank R`)"
        )
    if problems:
        raise ValueError(f"{where}: " + "; ".join(problems))
    return Machines(count, num_processes // count, str(ip), port, accelerate_config)


def launch_command(
    num_processes: int, accelerate_config: str | None, job: Path, result: Path, machine_rank: int = 0
) -> list[str]:
    """The `accelerate launch` command line for the workers of machine `machine_rank` (0: the only
    machine, or the first of several; `machines` checks the rank against the config file)."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        several = machines(num_processes, accelerate_config, machine_rank).count > 1
        # accelerate reads the file itself, as UTF-8 without a byte-order mark: give it such a copy
        config = plain_utf8(accelerate_config, job.parent)
        command += ["--config_file", str(config), "--num_processes", str(num_processes)]
        if several:  # the file is shared by all machines: each machine's rank comes from here
            command += ["--machine_rank", str(machine_rank)]
    else:
        machines(num_processes, None, machine_rank)  # a rank ≥ 1 needs a config file
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


def wait_for_main_process(ip: str, port: int, timeout_s: float, config: str | None = None) -> None:
    """Return once machine 0's rendezvous port `ip`:`port` accepts a TCP connection (it opens when
    machine 0's train stage starts its workers), polling once a second for up to `timeout_s` seconds.
    Raises ConnectionError naming the address, the keys of `config` it came from and the fix, when
    the name does not resolve (at once) or the port stays closed."""
    source = f" (main_process_ip, main_process_port in {config})" if config else ""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((ip, port), timeout=min(5.0, max(timeout_s, 0.1))):
                return
        except socket.gaierror as exc:
            raise ConnectionError(f"main process {ip}:{port}{source}: {ip} does not resolve ({exc})") from None
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ConnectionError(
                    f"main process {ip}:{port}{source} did not answer within {timeout_s:g} s ({exc}): start the "
                    f"train stage on machine 0 (`dvc repro`), and open TCP port {port} on machine 0 to this machine"
                ) from None
        time.sleep(1.0)


def train_lora_distributed(
    num_processes: int,
    accelerate_config: str | None = None,
    *,
    machine_rank: int = 0,
    mlflow_run_id: str | None = None,
    join_timeout_s: float = JOIN_TIMEOUT_S,
    **kwargs: Any,
) -> TrainResult | None:
    """Run `lorapipe.train.train_lora(**kwargs)` on `num_processes` processes (all machines together)
    and return the first process's result. `kwargs` are train_lora's arguments by name
    (``dataset_dir=…``, ``lora=…``; no `on_log`): paths, JSON values and the params sections. With
    `mlflow_run_id`, the first process logs each step's metrics to that run.

    Across machines (`accelerate_config` with num_machines ≥ 2), this is machine `machine_rank`.
    Machine 0 returns the result; a machine of rank ≥ 1 first waits up to `join_timeout_s` seconds for
    machine 0's port (`wait_for_main_process`), trains its share, writes nothing and returns None.

    Raises ValueError/FileNotFoundError for the config file (`machines`), ConnectionError when machine
    0 does not answer, RuntimeError when the workers fail."""
    from lorapipe.train import TrainResult

    plan = machines(num_processes, accelerate_config, machine_rank)
    sent = {
        key: value.model_dump(mode="json") if hasattr(value, "model_dump") else value for key, value in kwargs.items()
    }
    with tempfile.TemporaryDirectory(prefix="lorapipe-ddp-") as folder:
        job, result = Path(folder, "job.json"), Path(folder, "result.json")
        job.write_text(json.dumps({"kwargs": sent, "mlflow_run_id": mlflow_run_id}, default=str))
        env = dict(os.environ)
        if "OMP_NUM_THREADS" not in env:  # share the cores instead of each process taking all of them
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // plan.processes_each))
        command = launch_command(num_processes, accelerate_config, job, result, machine_rank)
        _announce(plan, machine_rank, command)
        if machine_rank:
            wait_for_main_process(plan.main_ip, plan.main_port, join_timeout_s, plan.config)
        done = subprocess.run(command, env=env)
        if done.returncode != 0 or not (machine_rank or result.is_file()):
            hint = (
                f"; a rendezvous timeout means not every machine joined at {plan.main_ip}:{plan.main_port}"
                if plan.count > 1
                else ""
            )
            raise RuntimeError(
                f"distributed training failed (accelerate launch exit status {done.returncode}); "
                f"the workers' errors are printed above{hint}"
            )
        if machine_rank:
            print(f"[train] machine {machine_rank}: done; machine 0 wrote the adapter and the reports", flush=True)
            return None
        return TrainResult.from_dict(json.loads(result.read_text()))


def join_training(
    p: Params, machine_rank: int, task: str | None = None, *, dataset_dir: str | Path, base_dir: str | Path
) -> None:
    """Train as machine `machine_rank` (≥ 1) of a run across machines (`lorapipe train --machine-rank
    R`), beside machine 0's train stage: the job the stage builds (lorapipe.stages.train.run), from this
    checkout's params `p` and the rows in `dataset_dir` over `base_dir` (of one `task`, when given);
    every process checks that it matches machine 0's (lorapipe.train.check_same_job). Machine 0 alone
    writes the adapter, the reports and the MLflow run; this machine writes nothing. Raises as
    `train_lora_distributed` does."""
    from lorapipe import paths

    sections = {"lora": p.lora, "train": p.train, "quant": p.quant, "seed": p.common.seed, "task": task}
    data = {"dataset_dir": dataset_dir, "base_dir": base_dir, "out_dir": paths.train_outputs(task)[0]}
    launch = (p.train.num_processes, p.train.accelerate_config)
    train_lora_distributed(*launch, machine_rank=machine_rank, **data, **sections)


def _announce(plan: Machines, machine_rank: int, command: list[str]) -> None:
    """Say what this machine launches, and on several machines what the others must run."""
    num_processes = plan.count * plan.processes_each
    if plan.count == 1:
        print(f"[train] {num_processes} processes: {' '.join(command[1:4])} … -m lorapipe.distributed", flush=True)
    elif machine_rank == 0:
        print(
            f"[train] machine 0 of {plan.count}, {plan.processes_each} of {num_processes} processes: waiting up to "
            f"{JOIN_TIMEOUT_S:.0f} s on port {plan.main_port} for the other machines (on each, in a checkout of "
            f"this commit after `dvc pull base dataset`: lorapipe train --machine-rank R, R = 1 to {plan.count - 1})",
            flush=True,
        )
    else:
        print(
            f"[train] machine {machine_rank} of {plan.count}, {plan.processes_each} of {num_processes} processes: "
            f"joining machine 0 at {plan.main_ip}:{plan.main_port}; machine 0 prints the progress and writes "
            "the adapter",
            flush=True,
        )


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
