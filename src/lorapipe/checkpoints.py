"""Training checkpoints that survive a crash, a reboot and DVC's removal of outs.

They live in ``<cache>/train/<fingerprint>/checkpoint-<N>/``, outside the stage's outs; the
fingerprint hashes everything that determines the run (data, base model, hyperparameters, seed), so
a checkpoint is only ever resumed by the run that made it. The trainer writes them (adapter weights,
optimizer and scheduler state, random-number state, ``trainer_state.json`` with the log so far) and
keeps the newest `save_total_limit`; ``trainer_state.json`` is written last, so a folder without it
was cut off mid-save and is never resumed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from lorapipe import paths
from lorapipe.io import hash_file

STATE_FILE = "trainer_state.json"


# Blocks of a weight file read into the fingerprint (with its size and header): replaced weights of the
# same shapes (another revision, another fine-tune, a retrained local model) differ in each of them.
WEIGHT_SAMPLES = 3
WEIGHT_SAMPLE_BYTES = 1 << 20  # 1 MiB


def _weight_sample(path: Path, digest) -> None:
    """Add a safetensors file's size, its header (tensor names, dtypes, shapes) and `WEIGHT_SAMPLES`
    blocks of `WEIGHT_SAMPLE_BYTES` of its data (at its start, middle and end) to `digest`: 3 MiB read
    of a 14 GB file, not all of it."""
    size = path.stat().st_size
    digest.update(str(size).encode())
    with open(path, "rb") as handle:
        head = handle.read(8)
        header_bytes = int.from_bytes(head, "little") if len(head) == 8 else 0
        start = 8 + min(header_bytes, size)
        handle.seek(0)
        digest.update(handle.read(start))
        span = max(size - start - WEIGHT_SAMPLE_BYTES, 0)
        for n in range(WEIGHT_SAMPLES):
            handle.seek(start + span * n // max(WEIGHT_SAMPLES - 1, 1))
            digest.update(handle.read(WEIGHT_SAMPLE_BYTES))


def fingerprint(inputs: dict[str, Any], files: list[Path]) -> str:
    """Hash (20 hex characters) of the run's params and the content of its input files: small files
    whole, ``*.safetensors`` weight files by size, header and three 1 MiB samples of their data
    (`_weight_sample`), so a 14 GB base model is not read but replaced weights of the same shapes are
    told apart. Raises OSError for an unreadable file."""
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode())
    for path in sorted(files):
        digest.update(path.name.encode())
        if path.suffix == ".safetensors":
            _weight_sample(path, digest)
        else:
            hash_file(path, digest)
    return digest.hexdigest()[:20]


def _step(folder: Path) -> int:
    return int(folder.name.rsplit("-", 1)[1])


class Checkpoints:
    def __init__(self, run_fingerprint: str, root: Path | None = None):
        self.root = Path(root or paths.cache_dir() / "train")
        self.folder = self.root / run_fingerprint

    @staticmethod
    def complete(folder: Path) -> bool:
        return (Path(folder) / STATE_FILE).is_file()

    def others(self) -> list[Path]:
        """Checkpoint folders of other runs (other data or params), which are never resumed."""
        return [p for p in self.root.glob("*") if p.is_dir() and p != self.folder] if self.root.is_dir() else []

    def saved(self) -> list[Path]:
        """This run's complete checkpoints, oldest first."""
        return sorted((p for p in self.folder.glob("checkpoint-*") if self.complete(p)), key=_step)

    def latest(self) -> Path | None:
        saved = self.saved()
        return saved[-1] if saved else None

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
