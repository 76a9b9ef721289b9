"""Merge a LoRA adapter into its base model (the merge stage).

    from lorapipe import merge_adapter
    merge_adapter("models/base", "models/lora_output", "models/merged", dtype="float32")

One tensor at a time: the merged model holds one copy of the weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from lorapipe import faults, paths
from lorapipe.io import atomic_dir, hash_file, read_json, read_provenance, write_json
from lorapipe.models import copy_tokenizer
from lorapipe.params import DEFAULTS

MERGE_INFO = paths.MERGE_INFO_NAME


def _fingerprint(base_dir: Path, adapter_dir: Path, dtype: str, selected_step: int | None) -> str:
    """Hash of the inputs that determine the merged folder (weights, adapter config, dtype, and the
    adapter's `adapter_selected_step`, which merge.json carries)."""
    digest = hashlib.sha256(f"{dtype}\0{selected_step}".encode())
    for folder in (base_dir, adapter_dir):
        for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*config.json")):
            digest.update(path.name.encode())
            hash_file(path, digest)
    return digest.hexdigest()


_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def adapter_selected_step(adapter_dir: str | Path) -> int | None:
    """The training step whose adapter was kept because it scored best on the validation rows
    (`lorapipe.train.TrainMetrics.selected_step`, from the adapter's ``lorapipe_params.yaml``); None when
    the adapter is the last step's, or the folder records no such choice."""
    path = Path(adapter_dir) / paths.PROVENANCE_NAME
    return read_provenance(adapter_dir).get("selected_step") if path.is_file() else None


def _read_tensors(path: Path):
    """(name, tensor) of each tensor in a safetensors file, read one at a time with plain reads, not
    a memory map: a mapped file's pages count as the process's memory until the whole file is closed."""
    import torch

    from lorapipe.models import safetensors_header

    with open(path, "rb") as handle:
        header, data_start = safetensors_header(handle)
        for name, entry in sorted(
            header.items(), key=lambda item: item[1]["data_offsets"][0] if item[0] != "__metadata__" else -1
        ):
            if name == "__metadata__":
                continue
            start, end = entry["data_offsets"]
            handle.seek(data_start + start)
            data = bytearray(end - start)
            handle.readinto(data)
            dtype = getattr(torch, _SAFETENSORS_DTYPES[entry["dtype"]])
            tensor = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
            yield name, tensor.reshape(entry["shape"])


def load_converted(model_dir: Path, auto_class, dtype):
    """The model in `dtype`, holding one copy of the weights: built without weights, then each tensor
    is read, converted and put in place before the next is read (peak ≈ the weights in `dtype`)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    from lorapipe.models import check_model_folder

    config = AutoConfig.from_pretrained(model_dir)
    with init_empty_weights(include_buffers=False):  # buffers (rotary tables) are computed, not stored
        model = auto_class.from_config(config, dtype=dtype)
    expected = dict(model.named_parameters())
    for shard in check_model_folder(model_dir, "base"):
        for name, tensor in _read_tensors(shard):
            if name not in expected:
                raise ValueError(f"{shard.name}: tensor {name} is not a parameter of {type(model).__name__}")
            model.load_state_dict({name: tensor.to(dtype)}, strict=False, assign=True)
            del tensor
    model.tie_weights()
    missing = [name for name, param in model.named_parameters() if param.device.type == "meta"]
    if missing:
        raise ValueError(f"{model_dir}: no weights for {missing[:5]}{' …' if len(missing) > 5 else ''}")
    return model.eval()


def merge_adapter(
    base_dir: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype: str = DEFAULTS.merge.dtype,
) -> Path:
    """Write base + adapter as one safetensors model with the tokenizer into `out_dir`; skip if
    `out_dir` was already merged from the same inputs and `dtype` (``merge.dtype``).

    Returns `out_dir`. Raises FileNotFoundError when `base_dir` or `adapter_dir` holds no model."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    for folder, stage in ((base_dir, "base"), (adapter_dir, "train")):
        if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{folder} holds no model: run the {stage} stage first")
    selected_step = adapter_selected_step(adapter_dir)
    fingerprint = _fingerprint(base_dir, adapter_dir, dtype, selected_step)
    info_path = out_dir / MERGE_INFO
    if info_path.is_file() and read_json(info_path).get("fingerprint") == fingerprint:
        print(f"[merge] {out_dir} is already merged from these inputs; nothing to do", flush=True)
        return out_dir

    seq2seq = getattr(AutoConfig.from_pretrained(base_dir), "is_encoder_decoder", False)
    model = load_converted(base_dir, AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM, getattr(torch, dtype))
    model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    faults.fault_point("mid")
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size="2GB")
        copy_tokenizer(adapter_dir, tmp)
        write_json(
            tmp / MERGE_INFO,
            {
                "fingerprint": fingerprint,
                "dtype": dtype,
                "base": str(base_dir),
                "adapter": str(adapter_dir),
                "selected_step": selected_step,
            },
        )
    print(f"[merge] wrote {out_dir} ({dtype})", flush=True)
    return out_dir
