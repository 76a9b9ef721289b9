"""lorapipe: fine-tune a language model on your documents with LoRA, reproducibly, and export it to
GGUF for llama.cpp and Ollama.

The public API is the functions the pipeline's stages call:

    from lorapipe import extract_documents, build_dataset, train_lora
    extract_documents(["data/raw/docs"], "data/extracted_text")

This package face imports nothing eagerly (PEP 562): ``from lorapipe import train_lora`` imports
``lorapipe.train`` only then, so each DVC stage executes only the modules it uses (and its
``deps`` in ``dvc.yaml`` can cover them). Heavy libraries (torch, transformers, docling) load only
when a function that needs them runs.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from typing import Any


class _NoHubKernelHint(logging.Filter):
    """Drops bitsandbytes' warning, on a CPU with avx512_bf16, that it could not fetch a 4-bit kernel
    from the Hugging Face Hub through the ``kernels`` package (bitsandbytes 0.49+, backends/cpu/ops.py):
    lorapipe downloads nothing from a hub at run time, bitsandbytes falls back to its own kernel, and
    the hint to ``pip install kernels`` printed on every run that imports peft, 4-bit or not."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NoHubKernelHint())
# TRL (trl/models/utils.py) reads transformers' deprecated `is_gradient_checkpointing` on every training run:
# a warning between the two libraries that no lorapipe user can act on.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

# Public name -> the module that defines it (the one place the package face names them).
_API = {
    "ParamsError": "lorapipe.params",
    "load_params": "lorapipe.params",
    "prepare_base_model": "lorapipe.models",
    "extract_documents": "lorapipe.extract",
    "build_dataset": "lorapipe.dataset",
    "chunk_text": "lorapipe.dataset",
    "synthesize": "lorapipe.synth",
    "train_lora": "lorapipe.train",
    "train_lora_distributed": "lorapipe.distributed",
    "merge_adapter": "lorapipe.merge",
    "export_gguf": "lorapipe.export",
    "install_converter": "lorapipe.export",
    "evaluate_base": "lorapipe.evaluate",
    "evaluate_models": "lorapipe.evaluate",
    "chat": "lorapipe.generation",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name == "__version__":  # stated once, in pyproject.toml; "unknown" from a tree not installed
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("lorapipe")
        except PackageNotFoundError:
            return "unknown"
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'lorapipe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*_API, "__version__"})
