"""Training checkpoints that survive a crash, a reboot and DVC's removal of outs.

They live in ``<cache>/train/<fingerprint>/step-<N>/``, outside the stage's outs; the fingerprint
hashes everything that determines the run (data, base model, hyperparameters, seed), so a checkpoint
is only ever resumed by the run that made it. Each holds the adapter weights (safetensors), the
optimizer and scheduler state and the random-number state (``torch.save`` of plain tensors, read back
with ``weights_only=True``), and the loop's counters (JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from lorapipe import paths
from lorapipe.io import atomic_dir

FAULT_ENV = "LORAPIPE_TRAIN_FAULT"  # tests: "kill-after-checkpoint:<step>" SIGKILLs the process there


def fingerprint(inputs: dict[str, Any], files: list[Path]) -> str:
    """Hash of the run's params and the content of its input files (small files hashed whole,
    weight files by name and size, so a 14 GB base model is not read)."""
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode())
    for path in sorted(files):
        digest.update(path.name.encode())
        if path.suffix == ".safetensors":
            digest.update(str(path.stat().st_size).encode())
        else:
            digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


class Checkpoints:
    def __init__(self, run_fingerprint: str, keep: int = 2, root: Path | None = None):
        self.root = Path(root or paths.cache_dir() / "train")
        self.folder = self.root / run_fingerprint
        self.keep = keep

    def others(self) -> list[Path]:
        """Checkpoint folders of other runs (other data or params), which are never resumed."""
        return [p for p in self.root.glob("*") if p.is_dir() and p != self.folder] if self.root.is_dir() else []

    def latest(self) -> Path | None:
        steps = sorted(self.folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        return steps[-1] if steps else None

    def save(self, step: int, model, optimizer, schedule, state: dict[str, Any]) -> Path:
        import torch
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        with atomic_dir(self.folder / f"step-{step}") as tmp:
            weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
            save_file(weights, tmp / "adapter.safetensors")
            torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                        "torch_rng": torch.get_rng_state()}, tmp / "state.pt")
            (tmp / "loop.json").write_text(json.dumps({"step": step, **state}))
        for old in sorted(self.folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        kind, _, at = os.environ.get(FAULT_ENV, "").partition(":")
        if kind == "kill-after-checkpoint" and at == str(step):
            os.kill(os.getpid(), signal.SIGKILL)
        return self.folder / f"step-{step}"

    @staticmethod
    def load(path: Path, model, optimizer, schedule) -> dict[str, Any]:
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(path / "adapter.safetensors"))
        state = torch.load(path / "state.pt", weights_only=True)  # written by lorapipe itself
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["torch_rng"])
        return json.loads((path / "loop.json").read_text())

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
