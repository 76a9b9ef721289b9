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
import struct
from pathlib import Path
from typing import Any

from lorapipe import paths
from lorapipe.io import hash_file

STATE_FILE = "trainer_state.json"


# Bytes of each tensor read into the fingerprint, at its start and its middle: a tensor that training,
# another revision or another fine-tune changed differs there (a change of a few values inside a tensor
# would not show). A 7B model's ~300 tensors: about 5 MiB read of 14 GB.
TENSOR_SAMPLE_BYTES = 8 << 10  # 8 KiB


def _weight_sample(path: Path, digest) -> None:
    """Add a safetensors file's size, its header (tensor names, dtypes, shapes, offsets) and two
    `TENSOR_SAMPLE_BYTES` blocks of every tensor (at its start and middle) to `digest`; a file whose
    header cannot be read is hashed whole."""
    from lorapipe.models import safetensors_header

    digest.update(str(path.stat().st_size).encode())
    with open(path, "rb") as handle:
        try:
            header, data_start = safetensors_header(handle)
        except (struct.error, ValueError):  # too short, or a header that is no JSON
            header, data_start = None, 0
        handle.seek(0)
        if not isinstance(header, dict):
            hashlib.file_digest(handle, lambda: digest)  # not safetensors as expected: every byte
            return
        digest.update(handle.read(data_start))
        offsets = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict))
        for begin, end in offsets:
            for at in dict.fromkeys((begin, begin + (end - begin) // 2)):
                handle.seek(data_start + at)
                digest.update(handle.read(min(TENSOR_SAMPLE_BYTES, end - at)))


def fingerprint(inputs: dict[str, Any], files: list[Path]) -> str:
    """Hash (20 hex characters) of the run's params and the content of its input files: small files
    whole, ``*.safetensors`` weight files by size, header and two 8 KiB samples of every tensor
    (`_weight_sample`), so a 14 GB base model is not read but any tensor replaced by other weights of
    its shape is told apart. Raises OSError for an unreadable file."""
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
