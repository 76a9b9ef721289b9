"""Data-parallel training: `train.num_processes: 2` runs training under `accelerate launch`.

Run: .venv/bin/pytest tests/test_distributed.py   (two CPU processes over gloo, about a minute)
"""

from pathlib import Path

import pytest

from helpers import read_json
from lorapipe.distributed import launch_command, train_lora_distributed
from lorapipe.params import LoraParams, TrainParams


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
