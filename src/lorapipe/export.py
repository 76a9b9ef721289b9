"""Export a merged model to GGUF for llama.cpp, plus an Ollama Modelfile (the export stage).

    from lorapipe import export_gguf
    export_gguf("models/merged", "data/dataset/prompts.json", "models/gguf", quants=["Q8_0"])

Conversion runs llama.cpp's ``convert_hf_to_gguf.py`` from the source distribution of the installed
``llama-cpp-python`` (same llama.cpp as the runtime) in a subprocess with its own ``gguf-py``;
quantization uses ``llama_cpp.llama_model_quantize``. The converted file is checked against the
merged model's logits before anything is quantized.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from lorapipe import paths
from lorapipe.chat_templates import modelfile_text
from lorapipe.io import atomic_dir, read_json, write_json

# Names accepted in `export.quants` (llama.cpp's LLAMA_FTYPE_MOSTLY_<NAME>, plus F32).
QUANT_TYPES = frozenset({
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0",
    "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K",
})
_CONVERTER_FILES = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "LICENSE")
_CONVERTER_DIRS = ("conversion/", "gguf-py/")
EXPORT_INFO = "export.json"


def _llama_cpp_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("llama-cpp-python is not installed: run `make install`") from None


def install_converter(dest: str | Path | None = None, version: str | None = None) -> Path:
    """Unpack llama.cpp's converter from the llama-cpp-python source distribution (once).

    The sdist of the installed version is fetched with pip (from its cache when present).
    """
    version = version or _llama_cpp_version()
    dest = Path(dest or paths.user_cache_dir() / f"llama.cpp-{version}")
    if (dest / "convert_hf_to_gguf.py").is_file():
        return dest
    print(f"[export] unpacking llama.cpp's converter from llama-cpp-python {version} into {dest}", flush=True)
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={version}", "-d", download],
            check=True,
        )
        archive = next(Path(download).glob("llama_cpp_python-*.tar.gz"))
        with atomic_dir(dest) as tmp, tarfile.open(archive) as tar:
            marker = "/vendor/llama.cpp/"
            for member in tar.getmembers():
                _, found, inner = member.name.partition(marker)
                if found and (inner in _CONVERTER_FILES or inner.startswith(_CONVERTER_DIRS)):
                    member.name = inner
                    tar.extract(member, tmp, filter="data")
            if not (tmp / "convert_hf_to_gguf.py").is_file():
                raise RuntimeError(f"{archive.name} has no vendor/llama.cpp/convert_hf_to_gguf.py")
    return dest


def converter_dir(llama_cpp_dir: str | Path | None = None) -> Path:
    if llama_cpp_dir:
        path = Path(llama_cpp_dir)
        if not (path / "convert_hf_to_gguf.py").is_file():
            raise FileNotFoundError(f"export.llama_cpp_dir={path} has no convert_hf_to_gguf.py (a llama.cpp checkout?)")
        return path
    return install_converter()


def convert_to_gguf(model_dir: Path, outfile: Path, outtype: str, llama_cpp_dir: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": str(llama_cpp_dir / "gguf-py")}
    env.pop("NO_LOCAL_GGUF", None)  # the bundled gguf-py must win over PyPI's `gguf`
    command = [sys.executable, str(llama_cpp_dir / "convert_hf_to_gguf.py"), str(model_dir),
               "--outfile", str(outfile), "--outtype", outtype]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py failed on {model_dir}:\n{result.stderr[-4000:]}")
    return outfile


def quantize_gguf(src: Path, dst: Path, quant: str) -> Path:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_ALL_F32" if quant == "F32" else f"LLAMA_FTYPE_MOSTLY_{quant}")
    code = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if code != 0 or not dst.is_file():
        raise RuntimeError(f"llama_model_quantize({src.name} → {quant}) failed with code {code}")
    return dst


def gguf_logits(gguf_path: str | Path, sequences: list[list[int]]) -> list:
    """llama.cpp's logits for each token sequence (float32 arrays of [tokens, vocab])."""
    import numpy as np
    from llama_cpp import Llama

    n_ctx = max(map(len, sequences)) + 8
    llm = Llama(str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, verbose=False)
    out = []
    for ids in sequences:
        llm.reset()
        llm.eval(ids)
        out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
    llm.close()
    return out


def compare_logits(model_dir: Path, gguf_path: Path, text: str) -> dict[str, float]:
    """Logits of the GGUF under llama.cpp against the Hugging Face model on the same tokens."""
    import numpy as np
    import torch

    from lorapipe.models import load_causal_lm, load_tokenizer

    ids = load_tokenizer(model_dir)(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        reference = load_causal_lm(model_dir)(torch.tensor([ids])).logits[0].float().numpy()
    actual = gguf_logits(gguf_path, [ids])[0]
    return {
        "tokens": len(ids),
        "max_abs_diff": float(np.abs(actual - reference).max()),
        "top1_agreement": float((actual.argmax(-1) == reference.argmax(-1)).mean()),
    }


VERIFY_TEXT = ("LoRA adds small trainable matrices to a frozen model. The merged model and its GGUF "
               "export must give the same next-token predictions on this sentence.")


def export_gguf(
    merged_dir: str | Path = paths.MERGED,
    prompts_path: str | Path = paths.PROMPTS,
    out_dir: str | Path = paths.GGUF,
    quants: list[str] = ("Q4_K_M",),
    outtype: str = "f16",
    name: str = "lorapipe",
    llama_cpp_dir: str | Path | None = None,
    min_top1_agreement: float = 0.9,
) -> dict:
    """Write ``<name>.<QUANT>.gguf`` per quantization and a Modelfile per task into `out_dir`."""
    from lorapipe.models import load_tokenizer

    merged_dir = Path(merged_dir)
    if not (merged_dir / "config.json").is_file():
        raise FileNotFoundError(f"{merged_dir} holds no merged model: run the merge stage first")
    prompts = read_json(prompts_path)
    quants = [q.upper() for q in quants]
    tokenizer = load_tokenizer(merged_dir)
    converter = converter_dir(llama_cpp_dir)
    with atomic_dir(out_dir) as tmp:
        converted = tmp / f"{name}.{outtype.upper()}.gguf"
        print(f"[export] converting {merged_dir} to {converted.name}", flush=True)
        convert_to_gguf(merged_dir, converted, outtype, converter)
        check = compare_logits(merged_dir, converted, VERIFY_TEXT)
        print(f"[export] llama.cpp vs transformers on {check['tokens']} tokens: max |Δlogit| "
              f"{check['max_abs_diff']:.2e}, top-1 agreement {check['top1_agreement']:.0%}", flush=True)
        if outtype in ("f32", "f16", "bf16") and check["top1_agreement"] < min_top1_agreement:
            raise RuntimeError(f"the converted GGUF disagrees with the merged model: {check}")
        files = {}
        for quant in quants:
            target = tmp / f"{name}.{quant}.gguf"
            if target != converted:
                print(f"[export] quantizing to {quant}", flush=True)
                quantize_gguf(converted, target, quant)
            files[quant] = target.name
        if converted.name not in files.values():
            converted.unlink()
        for number, (task, prompt) in enumerate(prompts.items()):
            modelfile = "Modelfile" if number == 0 else f"Modelfile.{task}"
            (tmp / modelfile).write_text(modelfile_text(f"./{files[quants[0]]}", tokenizer, prompt))
        info = {"files": files, "outtype": outtype, "verification": check, "llama_cpp_python": _llama_cpp_version()}
        write_json(tmp / EXPORT_INFO, info)
    print(f"[export] wrote {', '.join(files.values())} and Modelfile into {out_dir}", flush=True)
    if shutil.which("ollama"):
        subprocess.run(["ollama", "create", name, "-f", str(Path(out_dir) / "Modelfile")], check=False)
    return info
