"""Merge a LoRA adapter into its base model (the merge stage).

    from lorapipe import merge_adapter
    merge_adapter("models/base", "models/lora_output", "models/merged", dtype="float32")
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from lorapipe import paths
from lorapipe.io import atomic_dir, read_json, write_json
from lorapipe.models import copy_tokenizer

MERGE_INFO = "merge.json"


def _fingerprint(base_dir: Path, adapter_dir: Path, dtype: str) -> str:
    """Hash of the inputs that determine the merged weights (weights, adapter config, dtype)."""
    digest = hashlib.sha256(dtype.encode())
    for folder in (base_dir, adapter_dir):
        for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*config.json")):
            digest.update(path.name.encode())
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def merge_adapter(
    base_dir: str | Path = paths.BASE_MODEL,
    adapter_dir: str | Path = paths.ADAPTER,
    out_dir: str | Path = paths.MERGED,
    dtype: str = "float32",
) -> Path:
    """Write base + adapter as one safetensors model with the tokenizer; skip if already current."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    for folder, stage in ((base_dir, "base"), (adapter_dir, "train")):
        if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{folder} holds no model: run the {stage} stage first")
    fingerprint = _fingerprint(base_dir, adapter_dir, dtype)
    info_path = out_dir / MERGE_INFO
    if info_path.is_file() and read_json(info_path).get("fingerprint") == fingerprint:
        print(f"[merge] {out_dir} is already merged from these inputs; nothing to do", flush=True)
        return out_dir

    seq2seq = getattr(AutoConfig.from_pretrained(base_dir), "is_encoder_decoder", False)
    model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(
        base_dir, dtype=getattr(torch, dtype), use_safetensors=True)
    model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size="2GB")
        copy_tokenizer(adapter_dir, tmp)
        write_json(tmp / MERGE_INFO, {"fingerprint": fingerprint, "dtype": dtype,
                                      "base": str(base_dir), "adapter": str(adapter_dir)})
    print(f"[merge] wrote {out_dir} ({dtype})", flush=True)
    return out_dir
