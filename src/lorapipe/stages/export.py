"""DVC stage ``export``: the merged model converted to GGUF, quantized (``export.*``), checked
against the merged model's logits, with an Ollama ``Modelfile`` per task, into ``models/gguf``.

Run: ``dvc repro export`` (or ``python -m lorapipe.stages.export``; ``lorapipe export --quant Q8_0``).
"""

from __future__ import annotations

from pathlib import Path

from lorapipe import paths, tracking
from lorapipe.artifacts import lineage
from lorapipe.export import export_gguf
from lorapipe.params import Params, section_dict
from lorapipe.stages import main


def run(
    p: Params,
    merged_dir: Path = paths.MERGED,
    out_dir: Path = paths.GGUF,
    *,
    dataset_dir: Path = paths.DATASET,
    adapter_dir: Path = paths.ADAPTER,
    base_dir: Path = paths.BASE_MODEL,
) -> None:
    e = p.export
    info = export_gguf(
        merged_dir,
        Path(dataset_dir) / paths.PROMPTS.name,
        out_dir,
        quants=e.quants,
        quant_tolerance=e.quant_tolerance,
        val_path=Path(dataset_dir) / paths.VAL_ROWS.name,
        outtype=e.outtype,
        name=e.name,
        llama_cpp_dir=e.llama_cpp_dir,
        lora_gguf=e.lora_gguf,
        ollama_name=e.ollama_name,
        adapter_dir=adapter_dir,
        base_dir=base_dir,
        metadata=lineage(adapter_dir, base_dir),
    )
    tracking.log_stage(
        Path(adapter_dir) / paths.RUN_INFO_NAME,
        "export",
        section_dict(p, "export"),
        {"export": info["verification"]},
        {"gguf": Path(out_dir) / "Modelfile"},
    )


if __name__ == "__main__":
    raise SystemExit(main("export", run))
