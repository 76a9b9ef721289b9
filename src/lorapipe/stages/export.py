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


def run(p: Params, merged_dir: Path = paths.MERGED, out_dir: Path = paths.GGUF) -> None:
    e = p.export
    info = export_gguf(
        merged_dir,
        paths.PROMPTS,
        out_dir,
        quants=e.quants,
        outtype=e.outtype,
        name=e.name,
        llama_cpp_dir=e.llama_cpp_dir,
        lora_gguf=e.lora_gguf,
        ollama_name=e.ollama_name,
        adapter_dir=paths.ADAPTER,
        base_dir=paths.BASE_MODEL,
        metadata=lineage(paths.ADAPTER, paths.BASE_MODEL),
    )
    tracking.log_stage(
        paths.ADAPTER / paths.RUN_INFO_NAME,
        "export",
        section_dict(p, "export"),
        {"export": info["verification"]},
        {"gguf": Path(out_dir) / "Modelfile"},
    )


if __name__ == "__main__":
    raise SystemExit(main("export", run))
