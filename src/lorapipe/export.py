"""Export a merged model to GGUF for llama.cpp, plus an Ollama Modelfile (the export stage).

    from lorapipe.export import export_gguf
    export_gguf("models/merged", "data/dataset/prompts.json", "models/gguf", quants=["Q8_0"])

Conversion runs llama.cpp's ``convert_hf_to_gguf.py`` from the source distribution of the installed
``llama-cpp-python`` (same llama.cpp as the runtime) in a subprocess with its own ``gguf-py``;
quantization uses ``llama_cpp.llama_model_quantize``. The converted file is checked against the
merged model's logits before anything is quantized. ``export.json`` in the output folder records the
files, the verification and which GGUF is the model (``lorapipe.artifacts.model_gguf`` reads it).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lorapipe import faults, paths
from lorapipe.artifacts import EXPORT_INFO
from lorapipe.chat_templates import ModelfileError, modelfile_text
from lorapipe.io import atomic_dir, read_json, read_jsonl, write_json
from lorapipe.llama import gguf_logits
from lorapipe.models import check_model_folder, load_causal_lm, load_tokenizer
from lorapipe.params import DEFAULTS, LADDER_ROWS, QUANT_BITS, QUANT_LADDER, ExportParams, validate_params
from lorapipe.perplexities import choose_quant, gguf_perplexity, hf_perplexity, relative, val_sequences

_CONVERTER_FILES = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "LICENSE")
_CONVERTER_DIRS = ("conversion/", "gguf-py/")


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
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={version}",
                "-d",
                download,
            ],
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
    """The folder holding llama.cpp's ``convert_hf_to_gguf.py`` (and its ``gguf-py``): `llama_cpp_dir`
    (a llama.cpp checkout) when given, else the converter of the installed llama-cpp-python, unpacked
    once into the user cache by `install_converter` (which needs pip and network the first time).

    Raises FileNotFoundError when `llama_cpp_dir` has no convert_hf_to_gguf.py."""
    if llama_cpp_dir:
        path = Path(llama_cpp_dir)
        if not (path / "convert_hf_to_gguf.py").is_file():
            raise FileNotFoundError(f"export.llama_cpp_dir={path} has no convert_hf_to_gguf.py (a llama.cpp checkout?)")
        return path
    return install_converter()


# Runs a llama.cpp converter script with extra string keys added to every GGUF it writes (the
# lineage of the file), by wrapping gguf-py's GGUFWriter.write_header_to_file: no second copy of a
# multi-gigabyte file is needed. llama_model_quantize copies these keys into each quantized file.
_CONVERT_WITH_METADATA = """
import json, os, runpy, sys
script, gguf_py = sys.argv[1], sys.argv[2]
sys.path[:0] = [os.path.dirname(script), gguf_py]  # as `python script.py` would, with its own gguf-py
import gguf
extra = json.loads(os.environ["LORAPIPE_GGUF_METADATA"])
write_header = gguf.GGUFWriter.write_header_to_file
def with_lineage(self, *args, **kwargs):
    for key, value in extra.items():
        self.add_string(key, value)
    return write_header(self, *args, **kwargs)
gguf.GGUFWriter.write_header_to_file = with_lineage
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


def _converter_env(llama_cpp_dir: Path) -> dict[str, str]:
    """The environment a converter script runs in: its own bundled gguf-py first on the path (with
    PyPI's `gguf` 0.19 the converter fails: no attribute 'LazyChunkedTensor')."""
    env = {**os.environ, "PYTHONPATH": str(llama_cpp_dir / "gguf-py")}
    env.pop("NO_LOCAL_GGUF", None)  # would make the converter prefer an installed `gguf`
    return env


def _run_converter(
    llama_cpp_dir: Path, script: str, args: list[str], metadata: dict[str, str] | None, what: str
) -> None:
    env = {
        **_converter_env(llama_cpp_dir),
        "LORAPIPE_GGUF_METADATA": json.dumps({k: str(v) for k, v in (metadata or {}).items() if v}),
    }
    command = [
        sys.executable,
        "-c",
        _CONVERT_WITH_METADATA,
        str(llama_cpp_dir / script),
        str(llama_cpp_dir / "gguf-py"),
        *args,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{script} failed on {what}:\n{result.stderr[-4000:]}")


def convert_to_gguf(
    model_dir: Path, outfile: Path, outtype: str, llama_cpp_dir: Path, metadata: dict[str, str] | None = None
) -> Path:
    """llama.cpp's convert_hf_to_gguf.py; `metadata` adds string keys (lineage) to the file."""
    _run_converter(
        Path(llama_cpp_dir),
        "convert_hf_to_gguf.py",
        [str(model_dir), "--outfile", str(outfile), "--outtype", outtype],
        metadata,
        str(model_dir),
    )
    return outfile


def convert_lora_to_gguf(
    adapter_dir: Path,
    base_dir: Path,
    outfile: Path,
    llama_cpp_dir: Path,
    metadata: dict[str, str] | None = None,
    outtype: str = "f32",
) -> Path:
    """A LoRA-only GGUF of a PEFT adapter, for `llama-cli -m <base>.gguf --lora <adapter>.gguf`."""
    _run_converter(
        Path(llama_cpp_dir),
        "convert_lora_to_gguf.py",
        ["--base", str(base_dir), "--outfile", str(outfile), "--outtype", outtype, str(adapter_dir)],
        metadata,
        str(adapter_dir),
    )
    return outfile


_SUPPORTED: dict[Path, frozenset[str]] = {}


def supported_architectures(llama_cpp_dir: Path) -> frozenset[str]:
    """The Hugging Face architectures (``config.json`` ``architectures``) the converter knows, from
    ``convert_hf_to_gguf.py --print-supported-models`` (cached per folder once read).

    Raises RuntimeError, with the converter's output, when it fails or lists no text model: a check
    that cannot run is an error, never skipped."""
    llama_cpp_dir = Path(llama_cpp_dir)
    if llama_cpp_dir in _SUPPORTED:
        return _SUPPORTED[llama_cpp_dir]
    command = [sys.executable, str(llama_cpp_dir / "convert_hf_to_gguf.py"), "--print-supported-models"]
    try:
        listed = subprocess.run(command, env=_converter_env(llama_cpp_dir), capture_output=True, text=True, check=True)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"{' '.join(command[1:])} failed (exit {exc.returncode}), so the model's architecture "
            f"cannot be checked:\n{(exc.stderr or exc.stdout)[-2000:]}"
        ) from None
    names, section = set(), None
    for line in (listed.stdout + listed.stderr).splitlines():
        if line.strip().endswith("models:"):
            section = line.strip()
        elif line.strip().startswith("- ") and section == "TEXT models:":
            names.add(line.strip()[2:])
    if not names:
        raise RuntimeError(
            f"{' '.join(command[1:])} listed no TEXT models, so the model's architecture cannot be "
            f"checked; its output was:\n{(listed.stdout + listed.stderr)[-2000:]}"
        )
    _SUPPORTED[llama_cpp_dir] = frozenset(names)
    return _SUPPORTED[llama_cpp_dir]


def quantize_gguf(src: Path, dst: Path, quant: str) -> Path:
    """Write `dst`, the GGUF `src` quantized to `quant` (a name of params.QUANT_BITS, e.g. ``Q4_K_M``),
    with ``llama_cpp.llama_model_quantize``; the metadata keys of `src` are copied. Returns `dst`.

    Raises RuntimeError when llama.cpp reports a failure or writes no file."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_ALL_F32" if quant == "F32" else f"LLAMA_FTYPE_MOSTLY_{quant}")
    code = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if code != 0 or not dst.is_file():
        raise RuntimeError(f"llama_model_quantize({src.name} → {quant}) failed with code {code}")
    return dst


TIE_LOGITS = 0.1  # the widest logit gap compare_logits calls a near tie


def compare_logits(model_dir: Path, gguf_path: Path, text: str) -> dict[str, float]:
    """Logits of the GGUF under llama.cpp against the Hugging Face model on the same tokens."""
    import torch

    ids = load_tokenizer(model_dir)(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        reference = load_causal_lm(model_dir)(torch.tensor([ids])).logits[0].float().numpy()
    return {"tokens": len(ids), **logit_agreement(reference, gguf_logits(gguf_path, [ids])[0])}


def logit_agreement(reference, actual) -> dict[str, float]:
    """How far two (tokens × vocabulary) logit arrays agree: the largest difference, the share of tokens
    with the same top-1, and that share counting a different top-1 at a near tie as the same (the
    reference's logit for `actual`'s choice within TIE_LOGITS of its own best: rounding, not a broken
    conversion). Rounding noise alone cannot bound the tie: moving the top-1 across a gap g takes a
    difference of at least g / 2, so every different top-1 lies within 2 × the largest difference."""
    import numpy as np

    chosen = actual.argmax(-1)
    gap = reference.max(-1) - np.take_along_axis(reference, chosen[:, None], -1)[:, 0]
    return {
        "max_abs_diff": float(np.abs(actual - reference).max()),
        "top1_agreement": float((chosen == reference.argmax(-1)).mean()),
        "top1_agreement_beyond_ties": float((gap <= TIE_LOGITS).mean()),
    }


VERIFY_TEXT = (
    "LoRA adds small trainable matrices to a frozen model. The merged model and its GGUF "
    "export must give the same next-token predictions on this sentence."
)


def parameter_count(weights: list[Path]) -> int:
    """Number of weights in safetensors files, from the shapes in their headers (no tensor is loaded)."""
    from safetensors import safe_open

    total = 0
    for path in weights:
        with safe_open(str(path), framework="numpy") as handle:
            total += sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())
    return total


def check_disk_space(out_dir: Path, parameters: int, outtype: str, quants: Sequence[str], extra_bytes: int = 0) -> int:
    """Raise OSError before writing anything if the output folder's disk cannot hold the files (the
    converted `outtype` and each of `quants`, sized by params.QUANT_BITS, plus 5% and `extra_bytes`);
    return the bytes needed."""
    files = dict.fromkeys([outtype.upper(), *quants])
    needed = int(sum(parameters * QUANT_BITS[q] / 8 for q in files) * 1.05) + extra_bytes
    target = Path(out_dir).resolve()
    while not target.exists():
        target = target.parent
    free = shutil.disk_usage(target).free
    if free < needed:
        raise OSError(
            f"not enough free disk for the export: about {needed / 2**30:.1f} GiB is needed "
            f"({', '.join(files)} of {parameters / 1e9:.2f} B weights) and {free / 2**30:.1f} GiB is free "
            f"on {target}; free some space (e.g. `dvc gc`) or export fewer quantizations"
        )
    return needed


def check_architecture(model_dir: Path, llama_cpp_dir: Path) -> str:
    """The model's architecture, if llama.cpp's converter supports it; else an error listing those it does."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    architecture = (config.get("architectures") or ["unknown"])[0]
    supported = supported_architectures(llama_cpp_dir)
    if architecture not in supported:
        raise ValueError(
            f"llama.cpp's converter does not support {architecture}; it supports: " + ", ".join(sorted(supported))
        )
    return architecture


def modelfile_texts(prompts: dict[str, str], tokenizer, model_file: str) -> dict[str, str]:
    """The Modelfile of each task of ``prompts.json`` ({task: text}), FROM ``./<model_file>``; made
    before any conversion, so that a prompt or template the Modelfile cannot hold stops the export
    before its slow work. Raises ValueError naming the task (ModelfileError: a value Ollama would
    not read back exactly; or a chat template no Modelfile TEMPLATE can express)."""
    texts = {}
    for task, prompt in prompts.items():
        try:
            texts[task] = modelfile_text(f"./{model_file}", tokenizer, prompt)
        except ModelfileError as exc:
            raise ModelfileError(
                f"task {task!r} of prompts.json: {exc}; change the prompt and rebuild the dataset (dvc repro dataset)"
            ) from None
    return texts


def ollama_create(out_dir: Path, modelfiles: dict[str, str], name: str) -> list[list[str]]:
    """`ollama create` for each Modelfile when `ollama` is on PATH (first task: `name`, others:
    `name-<task>`); a failure is reported, not raised, since the files are written."""
    ollama = shutil.which("ollama")
    models = {
        name if number == 0 else f"{name}-{task}": modelfile
        for number, (task, modelfile) in enumerate(modelfiles.items())
    }
    if not ollama:
        creates = " && ".join(f"ollama create {model} -f {modelfile}" for model, modelfile in models.items())
        print(f"[export] ollama is not on PATH; to use the model in Ollama: cd {out_dir} && {creates}", flush=True)
        return []
    commands = []
    for model, modelfile in models.items():
        command = [ollama, "create", model, "-f", modelfile]
        done = subprocess.run(command, cwd=out_dir, capture_output=True, text=True)
        print(
            f"[export] {' '.join(['ollama', *command[1:]])}: "
            + ("done" if done.returncode == 0 else f"failed ({(done.stderr or done.stdout).strip()[-300:]})"),
            flush=True,
        )
        commands.append(command)
    return commands


MIN_TOP1_AGREEMENT = 0.99  # share of tokens whose top-1 a f32/f16/bf16 GGUF must share with the merged model
MAX_F32_LOGIT_DIFF = 1e-2  # largest |Δlogit| an f32 GGUF may show against the merged model


def _verify(
    merged_dir: Path, converted: Path, outtype: str, min_top1_agreement: float, max_f32_logit_diff: float
) -> dict[str, float]:
    """compare_logits on VERIFY_TEXT; raise RuntimeError when an unquantized file disagrees."""
    check = compare_logits(merged_dir, converted, VERIFY_TEXT)
    print(
        f"[export] llama.cpp vs transformers on {check['tokens']} tokens: max |Δlogit| "
        f"{check['max_abs_diff']:.2e}, top-1 agreement {check['top1_agreement']:.0%} "
        f"({check['top1_agreement_beyond_ties']:.0%} counting near ties, within {TIE_LOGITS} logits, as agreeing; "
        f"at least {min_top1_agreement:.0%} needed)",
        flush=True,
    )
    unquantized = outtype in ("f32", "f16", "bf16")
    if (unquantized and check["top1_agreement_beyond_ties"] < min_top1_agreement) or (
        outtype == "f32" and check["max_abs_diff"] > max_f32_logit_diff
    ):
        raise RuntimeError(f"the converted GGUF disagrees with the merged model: {check}")
    return check


def _quantize_all(converted: Path, folder: Path, name: str, quants: list[str]) -> dict[str, str]:
    """``<name>.<QUANT>.gguf`` for each of `quants` in `folder`, from the converted file (which is kept
    only when one of `quants` is its own type); {quant: file name}, in the order of `quants`."""
    files = {}
    for quant in quants:
        target = folder / f"{name}.{quant}.gguf"
        if target != converted:
            print(f"[export] quantizing to {quant}", flush=True)
            quantize_gguf(converted, target, quant)
        files[quant] = target.name
    if converted.name not in files.values():
        converted.unlink()
    return files


def _preflight(
    merged_dir: Path, out_dir: Path, knobs: ExportParams, adapter_dir: str | Path | None
) -> tuple[Path, str, int]:
    """The checks before anything is written: a complete merged folder, an architecture the converter
    supports, enough disk. Returns the converter folder, the architecture and the number of weights."""
    weights = check_model_folder(merged_dir, "merge")
    converter = converter_dir(knobs.llama_cpp_dir)
    architecture = check_architecture(merged_dir, converter)
    parameters = parameter_count(weights)
    adapter_bytes = sum(f.stat().st_size for f in Path(adapter_dir).glob("*.safetensors")) if knobs.lora_gguf else 0
    check_disk_space(out_dir, parameters, knobs.outtype, _quants(knobs), adapter_bytes * 2)
    return converter, architecture, parameters


def _quants(knobs: ExportParams) -> list[str]:
    """The quantizations to write: export.quants, or QUANT_LADDER for ``auto``."""
    return list(QUANT_LADDER) if knobs.quants == "auto" else list(knobs.quants)


def _ladder(merged_dir: Path, tokenizer, folder: Path, files: dict[str, str], val_path: Path, tolerance: float) -> dict:
    """export.quants auto: the perplexity of the merged model and of each GGUF in `folder` on the first
    LADDER_ROWS rows of `val_path`, and the one choose_quant picks: ``{"rows", "merged_perplexity",
    "tolerance", "quants": {quant: {"perplexity", "vs_merged", "bytes"}}, "chosen", "why"}``."""
    sequences = val_sequences(val_path, tokenizer, LADDER_ROWS)
    merged = hf_perplexity(merged_dir, sequences)["perplexity"]
    quants = {}
    for quant, file in files.items():
        score = gguf_perplexity(folder / file, sequences)["perplexity"]
        quants[quant] = {
            "perplexity": score,
            "vs_merged": relative(score, merged),
            "bytes": (folder / file).stat().st_size,
        }
    chosen, why = choose_quant(quants, tolerance)
    table = ", ".join(f"{q} {m['perplexity']:.3f} ({m['vs_merged']:+.1%})" for q, m in quants.items())
    print(f"[export] perplexity on {len(sequences)} validation rows: merged {merged:.3f}, {table}", flush=True)
    print(f"[export] the model is {files[chosen]}: {why}", flush=True)
    return {
        "rows": len(sequences),
        "merged_perplexity": merged,
        "tolerance": tolerance,
        "quants": quants,
        "chosen": chosen,
        "why": why,
    }


def _checked_knobs(
    quants: Sequence[str] | str,
    outtype: str,
    name: str,
    llama_cpp_dir: str | Path | None,
    lora_gguf: bool,
    ollama_name: str | None,
) -> ExportParams:
    """The knobs, validated by the params schema (the one list of quantization names)."""
    knobs = {
        "quants": quants if isinstance(quants, str) else list(quants),
        "outtype": outtype,
        "name": name,
        "lora_gguf": lora_gguf,
        "llama_cpp_dir": str(llama_cpp_dir) if llama_cpp_dir else None,
        "ollama_name": ollama_name,
    }
    return validate_params({"export": knobs}, "export_gguf's arguments").export


def export_gguf(
    merged_dir: str | Path,
    prompts_path: str | Path,
    out_dir: str | Path,
    *,
    quants: Sequence[str] | str = tuple(DEFAULTS.export.quants),
    quant_tolerance: float = DEFAULTS.export.quant_tolerance,
    val_path: str | Path | None = None,
    outtype: str = DEFAULTS.export.outtype,
    name: str = DEFAULTS.export.name,
    llama_cpp_dir: str | Path | None = DEFAULTS.export.llama_cpp_dir,
    lora_gguf: bool = DEFAULTS.export.lora_gguf,
    ollama_name: str | None = DEFAULTS.export.ollama_name,
    adapter_dir: str | Path | None = None,
    base_dir: str | Path | None = None,
    metadata: dict[str, str] | None = None,
    min_top1_agreement: float = MIN_TOP1_AGREEMENT,
    max_f32_logit_diff: float = MAX_F32_LOGIT_DIFF,
) -> dict:
    """Write ``<name>.<QUANT>.gguf`` per quantization, a Modelfile per task of ``prompts.json``
    (``Modelfile`` for the first, ``Modelfile.<task>`` for the others) and ``export.json`` into `out_dir`,
    replacing it as a whole; then ``ollama create`` where ollama is on PATH.

    The first of `quants` is the model: the Modelfiles' ``FROM`` and ``export.json``'s ``model``. With
    `quants` ``"auto"``, the ladder QUANT_LADDER is written and the model is the smallest GGUF whose
    perplexity on the first LADDER_ROWS rows of `val_path` is at most `quant_tolerance` (a share) above
    the merged model's (perplexities.choose_quant); ``export.json``'s ``ladder`` says what was measured
    and why.
    `metadata` (string keys, e.g. ``lorapipe.git_commit``; see artifacts.lineage) is written into
    every GGUF. With `lora_gguf`, ``<name>.lora.gguf`` holds the adapter in `adapter_dir` alone, on
    `base_dir` (for ``llama-cli --lora``). The converted file must agree with the merged model: top-1
    next-token agreement of at least `min_top1_agreement` for f32/f16/bf16 (a different choice at a
    near tie, within TIE_LOGITS of the merged model's best logit, counts as agreeing), and a max
    |Δlogit| of at most `max_f32_logit_diff` for f32.

    Returns what ``export.json`` holds (``model``, ``files``, ``verification``, …) plus ``ollama``,
    the commands run. Raises, before writing anything: ValueError (ParamsError) for a bad knob,
    lora_gguf without adapter_dir and base_dir, ``auto`` without val_path or with one that has no rows,
    an architecture the converter lacks, or a prompt or chat template a Modelfile cannot hold
    (modelfile_texts); FileNotFoundError for an incomplete merged folder or a missing `val_path` with
    ``auto``; OSError for too little disk. RuntimeError when the converted file disagrees with the
    merged model (`out_dir` is then left as it was).
    """
    knobs = _checked_knobs(quants, outtype, name, llama_cpp_dir, lora_gguf, ollama_name)
    if knobs.lora_gguf and (adapter_dir is None or base_dir is None):
        raise ValueError("lora_gguf needs adapter_dir and base_dir (the adapter and the model it was trained on)")
    merged_dir, out_dir = Path(merged_dir), Path(out_dir)
    if knobs.quants == "auto" and val_path is None:
        raise ValueError("export.quants auto chooses a GGUF by validation perplexity: give val_path (val.jsonl)")
    if knobs.quants == "auto" and not read_jsonl(paths.require(val_path, made_by="dvc repro dataset")):
        raise ValueError(f"{val_path} has no rows: export.quants auto measures the ladder on validation rows")
    converter, architecture, parameters = _preflight(merged_dir, out_dir, knobs, adapter_dir)
    prompts, tokenizer = read_json(prompts_path), load_tokenizer(merged_dir)
    modelfiles = {task: "Modelfile" if number == 0 else f"Modelfile.{task}" for number, task in enumerate(prompts)}
    modelfile_texts(prompts, tokenizer, f"{knobs.name}.{_quants(knobs)[0]}.gguf")  # refused before converting
    with atomic_dir(out_dir) as tmp:
        converted = tmp / f"{knobs.name}.{knobs.outtype.upper()}.gguf"
        print(
            f"[export] converting {merged_dir} ({architecture}, {parameters / 1e6:.0f} M weights) to {converted.name}",
            flush=True,
        )
        convert_to_gguf(merged_dir, converted, knobs.outtype, converter, metadata)
        check = _verify(merged_dir, converted, knobs.outtype, min_top1_agreement, max_f32_logit_diff)
        faults.fault_point("mid")
        files = _quantize_all(converted, tmp, knobs.name, _quants(knobs))
        auto = knobs.quants == "auto"
        ladder = _ladder(merged_dir, tokenizer, tmp, files, Path(val_path), quant_tolerance) if auto else None
        model = files[ladder["chosen"] if ladder else knobs.quants[0]]  # "the model" (artifacts.model_gguf)
        if knobs.lora_gguf:
            lora = tmp / f"{knobs.name}.lora.gguf"
            print(f"[export] converting the adapter {adapter_dir} to {lora.name}", flush=True)
            convert_lora_to_gguf(Path(adapter_dir), Path(base_dir), lora, converter, metadata)
            files["lora"] = lora.name
        texts = modelfile_texts(prompts, tokenizer, model)
        for task, modelfile in modelfiles.items():
            (tmp / modelfile).write_text(texts[task], encoding="utf-8")
        info = {
            "model": model,
            "files": files,
            "outtype": knobs.outtype,
            "architecture": architecture,
            "parameters": parameters,
            "verification": check,
            **({"ladder": ladder} if ladder else {}),
            "metadata": metadata or {},
            "llama_cpp_python": _llama_cpp_version(),
        }
        write_json(tmp / EXPORT_INFO, info)
    print(f"[export] wrote {', '.join(files.values())} and {', '.join(modelfiles.values())} into {out_dir}", flush=True)
    info["ollama"] = ollama_create(out_dir, modelfiles, knobs.ollama_name or knobs.name)
    return info
