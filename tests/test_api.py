"""The public Python API: one stage run through `from lorapipe import …`, as a user would, and the
shape of every entry point's signature (data paths positional, knobs keyword-only from the schema).

Run: .venv/bin/pytest tests/test_api.py
"""

import json
import logging

import pytest

import lorapipe
from helpers import SAMPLE_DOCS


def test_public_api_names():
    assert set(lorapipe.__all__) >= {
        "extract_documents",
        "build_dataset",
        "train_lora",
        "merge_adapter",
        "export_gguf",
        "evaluate_base",
        "evaluate_models",
        "prepare_base_model",
        "load_params",
    }
    for name in lorapipe.__all__:
        assert getattr(lorapipe, name).__doc__, f"{name} has no docstring"


def test_extract_then_dataset_through_the_api(tmp_path, tiny_model_dir):
    from lorapipe import build_dataset, extract_documents

    manifest = extract_documents([SAMPLE_DOCS], tmp_path / "text", pdf_backend="pdfplumber")
    assert all(row["status"] == "ok" for row in manifest)
    stats = build_dataset(
        tmp_path / "text",
        tiny_model_dir,
        tmp_path / "dataset",
        max_seq_len=256,
        overlap_tokens=16,
        val_fraction=0.2,
        seed=3,
    )
    assert stats["rows"]["train"] > stats["rows"]["val"] > 0
    rows = [
        json.loads(line)
        for name in ("train.jsonl", "val.jsonl")
        for line in (tmp_path / "dataset" / name).read_text().splitlines()
    ]
    assert {row["source"] for row in rows} == {row["source"] for row in manifest}
    from lorapipe.params import DEFAULTS, Params

    assert DEFAULTS == Params()  # the shared defaults (tasks, fields) were not changed by the calls


# --- entry-point signatures: data paths positional, every knob keyword-only with the schema's default ---

# function → the params sections whose knobs it takes, and the positional parameters that are knobs
# on purpose (prepare_base_model's `name` is what it prepares, as `extract_documents`' folders are).
ENTRY_POINTS = {
    "lorapipe.extract:extract_documents": (("extract",), ()),
    "lorapipe.dataset:build_dataset": (("dataset", "common"), ()),
    "lorapipe.models:prepare_base_model": (("model",), ("name",)),
    "lorapipe.merge:merge_adapter": (("merge",), ()),
    "lorapipe.train:train_lora": (("lora", "train", "quant", "common"), ()),
    "lorapipe.export:export_gguf": (("export",), ()),
    "lorapipe.evaluate:evaluate_base": (("eval",), ()),
    "lorapipe.evaluate:evaluate_models": (("eval",), ()),
}
PROJECT_FOLDERS = {"data", "models", "reports"}


def _entry_point(target):
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _knobs(sections):
    """{parameter name: schema default} of the knobs in `sections`: each field, and each section
    itself (a typed section such as ``lora: LoraParams = DEFAULTS.lora``)."""
    from lorapipe.params import DEFAULTS

    knobs = {}
    for section in sections:
        values = getattr(DEFAULTS, section)
        for name in type(values).model_fields:
            assert name not in knobs, f"{name} is a field of two of {sections}: the table is ambiguous"
            knobs[name] = getattr(values, name)
        knobs[section] = values
    return knobs


def _points_into_project(value) -> bool:
    from pathlib import Path

    from lorapipe import paths

    if not isinstance(value, (str, Path)) or not str(value):
        return False
    constants = {str(v) for v in vars(paths).values() if isinstance(v, Path)}
    return str(value) in constants or Path(value).parts[0] in PROJECT_FOLDERS


@pytest.mark.parametrize("target", sorted(ENTRY_POINTS))
def test_entry_point_takes_knobs_keyword_only_with_schema_defaults(target):
    import inspect

    sections, positional_knobs = ENTRY_POINTS[target]
    knobs = _knobs(sections)
    parameters = inspect.signature(_entry_point(target)).parameters.values()
    for parameter in parameters:
        where = f"{target}({parameter.name})"
        assert not _points_into_project(parameter.default), f"{where} defaults into the project: {parameter.default}"
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            assert parameter.name not in knobs or parameter.name in positional_knobs, (
                f"{where} is a knob before `*`: make it keyword-only"
            )
        elif parameter.kind == parameter.KEYWORD_ONLY and parameter.name in knobs:
            if parameter.default is not parameter.empty:  # a tuple may stand for the schema's list
                default = list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
                assert default == knobs[parameter.name], (
                    f"{where} defaults to {parameter.default!r}, the schema to {knobs[parameter.name]!r}: "
                    "read it from lorapipe.params.DEFAULTS"
                )


def test_the_hub_kernel_hint_of_bitsandbytes_is_dropped_and_its_other_warnings_kept(caplog):
    # bitsandbytes logs this on import on a CPU with avx512_bf16: lorapipe fetches nothing from a hub
    ops = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING):
        ops.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "no kernels")
        ops.warning("another warning")
    assert [r.getMessage() for r in caplog.records] == ["another warning"]
