"""Property-based tests of the params validator: random values for every key of params.yaml, written
to a params file and read back the way every stage reads it (`load_params`). Either the file is
refused with a ParamsError that names the key, or every value that comes out is a well-formed value
of its declared type and bounds, and survives the YAML round trip DVC makes (`dvc exp run -S`).

Run: .venv/bin/pytest tests/test_params_fuzz.py
"""

from __future__ import annotations

import math
import re
import types
import typing
from pathlib import Path

import annotated_types
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from helpers import ROOT
from lorapipe.params import Params, ParamsError, load_params

DEFAULTS = yaml.safe_load((ROOT / "params.yaml").read_text())
KEYS = [f"{section}.{key}" for section, model in Params.model_fields.items() for key in model.annotation.model_fields]

# What a YAML file can hold: scalars of every kind (NaN and infinities, huge and negative numbers,
# any text), and small lists and mappings of them.
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            " ",
            "auto",
            "none",
            "8",
            "2e-4",
            "-1",
            "inf",
            "nan",
            "yes",
            "a\x00b",
            "Q8_0",
            "q4_k_m",
            "text",
            "chat",
            "bf16",
            "f16",
            "float16",
            "nf4",
            "*",
            "drop",
            "skip",
            "messages",
        ]
    ),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=6), SCALARS, max_size=3),
    st.lists(
        st.fixed_dictionaries(
            {"name": st.sampled_from(["docs", "q", "", "a b"]), "kind": st.sampled_from(["text", "chat", "image"])}
        ),
        max_size=2,
    ),
)


def _well_formed(value, annotation, metadata=()) -> bool:
    """Is `value` a clean value of `annotation` (the schema's declared type) within `metadata`'s bounds?"""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _well_formed(value, args[0], [*metadata, *_constraints(args[1:])])
    if origin in (typing.Union, types.UnionType):
        return any(_well_formed(value, arm, metadata) for arm in args)
    if origin is typing.Literal:
        return value in args and type(value) in {type(a) for a in args}
    if annotation is type(None):
        return value is None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return isinstance(value, annotation) and all(
            _well_formed(getattr(value, k), f.annotation, f.metadata) for k, f in annotation.model_fields.items()
        )
    if origin is list:
        return (
            type(value) is list
            and _bounded(len(value), metadata, length=True)
            and all(_well_formed(item, args[0]) for item in value)
        )
    if origin is dict:
        return type(value) is dict and all(
            _well_formed(k, args[0]) and _well_formed(v, args[1]) for k, v in value.items()
        )
    if annotation is bool:
        return type(value) is bool
    if annotation is int:
        return type(value) is int and -(2**31) <= value < 2**32 and _bounded(value, metadata)
    if annotation is float:
        return type(value) is float and math.isfinite(value) and _bounded(value, metadata)
    if annotation is str:
        return (
            type(value) is str
            and "\x00" not in value
            and _bounded(len(value), metadata, length=True)
            and all(re.match(pattern, value) for pattern in _patterns(metadata))
        )
    raise AssertionError(f"the fuzz test does not know the type {annotation!r}: teach _well_formed")


def _constraints(items) -> list:
    out = []
    for item in items:
        out += getattr(item, "metadata", []) or []  # a pydantic Field inside Annotated
        if isinstance(item, annotated_types.BaseMetadata):
            out.append(item)
    return out


def _bounded(number, metadata, length: bool = False) -> bool:
    for bound in metadata:
        if length:
            if isinstance(bound, annotated_types.MinLen) and number < bound.min_length:
                return False
            continue
        for kind, test in (
            (annotated_types.Ge, lambda b: number >= b.ge),
            (annotated_types.Gt, lambda b: number > b.gt),
            (annotated_types.Le, lambda b: number <= b.le),
            (annotated_types.Lt, lambda b: number < b.lt),
        ):
            if isinstance(bound, kind) and not test(bound):
                return False
    return True


def _patterns(metadata) -> list[str]:
    return [m.pattern for m in metadata if getattr(m, "pattern", None)]


def _write(tmp: Path, key: str, value) -> Path:
    section, _, name = key.partition(".")
    raw = yaml.safe_load(yaml.safe_dump(DEFAULTS))
    raw[section][name] = value
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


@pytest.mark.parametrize("key", KEYS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=VALUES)
def test_every_key_either_names_the_problem_or_gives_a_clean_value(tmp_path, key, value):
    path = _write(tmp_path, key, value)
    try:
        params = load_params(path)
    except ParamsError as error:
        assert key in str(error), f"the error does not name {key}:\n{error}"
        return
    section, _, name = key.partition(".")
    field = type(getattr(params, section)).model_fields[name]
    got = getattr(getattr(params, section), name)
    assert _well_formed(got, field.annotation, field.metadata), f"{key}: {value!r} came through as {got!r}"
    # What a stage reads is what DVC would write back for an experiment.
    again = yaml.safe_load(yaml.safe_dump(params.model_dump(), allow_unicode=True))
    assert Params.model_validate(again) == params


def test_the_oracle_refuses_what_the_validator_used_to_let_through():
    """The values that reached stages before the schema's value types (a bool as a rank, an
    infinite alpha, a NUL in a path, a blank prompt) fail `_well_formed`, so the property above checks something."""
    lora, dataset = Params.model_fields["lora"].annotation, Params.model_fields["dataset"].annotation
    rank, alpha = lora.model_fields["rank"], lora.model_fields["alpha"]
    assert not _well_formed(True, rank.annotation, rank.metadata)
    assert not _well_formed(5000, rank.annotation, rank.metadata)
    assert _well_formed(8, rank.annotation, rank.metadata)
    assert not _well_formed(math.inf, alpha.annotation, alpha.metadata)
    assert not _well_formed("a\x00b", Params.model_fields["model"].annotation.model_fields["name"].annotation)
    prompt = dataset.model_fields["system_prompt"]
    assert _well_formed("Answer briefly.", prompt.annotation, prompt.metadata)


@pytest.mark.parametrize(
    "key,value,words",
    [
        ("lora.rank", True, "not true/false"),
        ("lora.alpha", float("inf"), "finite"),
        ("train.lr", float("nan"), "finite"),
        ("model.name", "a\x00b", "NUL"),
        ("dataset.system_prompt", "   ", "blank"),
        ("train.packing", "yes please", "boolean"),
        ("common.seed", 2**33, "less than or equal to 4294967295"),
        ("train.max_steps", 2**40, "less than or equal to 2147483647"),
        ("dataset.max_seq_len", 32, "dataset.overlap_tokens (64) must be smaller"),
    ],
)
def test_values_that_used_to_reach_stages_are_refused(tmp_path, key, value, words):
    with pytest.raises(ParamsError) as error:
        load_params(_write(tmp_path, key, value))
    assert key in str(error.value) and words in str(error.value)
