"""lorapipe: fine-tune a language model on your documents with LoRA, reproducibly, and export it to
GGUF for llama.cpp and Ollama.

The public API is the functions the pipeline's stages call:

    from lorapipe import extract_documents, build_dataset, train_lora
    extract_documents(["data/raw/docs"], "data/extracted_text")

Heavy libraries (torch, transformers, docling) load only when a function that needs them runs.
"""

from lorapipe.dataset import build_dataset, chunk_text
from lorapipe.distributed import train_lora_distributed
from lorapipe.evaluate import chat, evaluate_base, evaluate_models
from lorapipe.export import export_gguf, install_converter
from lorapipe.extract import extract_documents
from lorapipe.merge import merge_adapter
from lorapipe.models import prepare_base_model
from lorapipe.params import ParamsError, load_params
from lorapipe.train import train_lora

__version__ = "0.1.0"

__all__ = [
    "ParamsError", "build_dataset", "chat", "chunk_text", "evaluate_base", "evaluate_models", "export_gguf",
    "extract_documents", "install_converter", "load_params", "merge_adapter", "prepare_base_model",
    "train_lora", "train_lora_distributed",
]
