"""Typed schema of `params.yaml`: one section per stage, unknown keys rejected, every problem
reported at once.

    from lorapipe.params import load_params
    params = load_params("params.yaml")      # raises ParamsError listing each bad key
    params.lora.rank
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError,
                      field_validator, model_validator)

from lorapipe import paths


class ParamsError(ValueError):
    """`params.yaml` is invalid; the message names every bad key and how to fix it."""


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):  # YAML's true/false would otherwise pass as 1/0
        raise ValueError("expected a number, not true/false")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or blank")
    return value


# The value types of params.yaml: no bool passes as a number or a number as a bool, no NaN or
# infinity (allow_inf_nan below), no NUL in text, and no integer beyond 32 bits (a typo, and an
# overflow in tensors and seeds).
Int = Annotated[int, BeforeValidator(_not_bool), Field(le=2**31 - 1)]
Float = Annotated[float, BeforeValidator(_not_bool)]
Bool = StrictBool
Text = Annotated[str, AfterValidator(_no_nul)]
Name = Annotated[str, AfterValidator(_no_nul), AfterValidator(_not_blank)]  # text that must say something


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Common(_Section):
    seed: Int = Field(42, ge=0, le=2**32 - 1)


class ModelParams(_Section):
    name: Name = "smollm2-135m-instruct"
    revision: Name | None = None
    trust_remote_code: Bool = False


class ExtractParams(_Section):
    pdf_backend: Literal["auto", "docling", "docling-native", "pdfplumber"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    ocr: Bool = False
    docling_artifacts_path: Name | None = None
    timeout_s: Float = Field(300, gt=0)
    workers: Int = Field(2, ge=1, le=256)
    resume: Bool = True
    min_length: Int = Field(20, ge=0)


LabeledFormat = Literal["auto", "query_data", "instruction", "messages", "conversations", "prompt_completion"]


class TaskParams(_Section):
    name: Name = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    kind: Literal["text", "chat"]
    sources: list[Name] = Field(default_factory=lambda: ["*"], min_length=1)
    format: LabeledFormat = "auto"
    system_prompt: Name | None = None
    fields: dict[Name, Name] = Field(default_factory=dict)


class DatasetParams(_Section):
    mode: Literal["auto", "text", "chat"] = "auto"
    tasks: list[TaskParams] = Field(default_factory=list)
    max_seq_len: Int = Field(512, ge=16, le=131072)
    overlap_tokens: Int = Field(64, ge=0)
    split_by: Literal["document", "chunk"] = "document"
    val_fraction: Float = Field(0.1, gt=0, lt=1)
    system_prompt: Name = "You are a helpful assistant."
    dedup_threshold: Float = Field(0.9, gt=0, le=1)
    max_samples: Int | None = Field(None, ge=2)
    min_tokens: Int = Field(16, ge=1)
    on_overflow: Literal["drop", "truncate", "error"] = "drop"
    on_bad_row: Literal["error", "skip"] = "error"
    labeled_format: LabeledFormat = "auto"
    fields: dict[Name, Name] = Field(default_factory=dict)

    @field_validator("tasks")
    @classmethod
    def _unique_names(cls, value: list[TaskParams]) -> list[TaskParams]:
        names = [t.name for t in value]
        if len(names) != len(set(names)):
            raise ValueError(f"task names must be unique, got {names}")
        return value

    @model_validator(mode="after")
    def _overlap_below_length(self) -> "DatasetParams":
        if self.overlap_tokens >= self.max_seq_len:
            raise ValueError(
                f"dataset.overlap_tokens ({self.overlap_tokens}) must be smaller than dataset.max_seq_len "
                f"({self.max_seq_len})"
            )
        return self


class LoraParams(_Section):
    rank: Int = Field(16, ge=1, le=4096)
    alpha: Float = Field(32, gt=0)
    dropout: Float = Field(0.0, ge=0, lt=1)
    target_modules: Literal["auto"] | list[Name] = "auto"

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("give at least one module name, or 'auto'")
        return value


class TrainParams(_Section):
    epochs: Float = Field(1.0, gt=0)
    max_steps: Int = Field(40, ge=-1)
    lr: Float = Field(2e-4, gt=0, lt=1)
    batch_size: Int = Field(4, ge=1)
    grad_accum: Int = Field(1, ge=1)
    warmup_steps: Int = Field(0, ge=0)
    weight_decay: Float = Field(0.0, ge=0)
    log_every: Int = Field(5, ge=1)
    eval_steps: Int = Field(0, ge=0)
    early_stopping_patience: Int = Field(0, ge=0)
    packing: Bool = True
    torch_compile: Bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    preset: Literal["none", "cpu", "gpu-8gb", "gpu-24gb", "gpu-80gb"] = "none"
    autofit: Bool = False
    save_steps: Int = Field(10, ge=0)
    save_total_limit: Int = Field(2, ge=1)
    resume: Name = "auto"
    num_processes: Int = Field(1, ge=1, le=1024)
    accelerate_config: Name | None = None

    @model_validator(mode="after")
    def _early_stopping_needs_evaluations(self) -> "TrainParams":
        if self.early_stopping_patience and not self.eval_steps:
            raise ValueError("train.early_stopping_patience needs train.eval_steps > 0 (the evaluations it "
                             "compares)")
        return self

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        if value == 0:
            raise ValueError("use -1 to train for `epochs`, or a positive number of steps")
        return value


class QuantParams(_Section):
    load_in_4bit: Literal["auto"] | Bool = "auto"
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: Bool = True


class MergeParams(_Section):
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"


# The names `export.quants` accepts (llama.cpp's LLAMA_FTYPE_MOSTLY_<NAME>, plus F32), each with its
# approximate bits per weight (llama.cpp's quantize table), which the export's disk check uses.
QUANT_BITS: dict[str, float] = {
    "F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.6, "Q5_K_M": 5.7, "Q5_K_S": 5.5, "Q5_1": 6,
    "Q5_0": 5.5, "Q4_K_M": 4.9, "Q4_K_S": 4.6, "Q4_1": 5, "Q4_0": 4.5, "Q3_K_L": 4.3, "Q3_K_M": 3.9,
    "Q3_K_S": 3.5, "Q2_K": 3.4,
}


class ExportParams(_Section):
    name: Name = Field("lorapipe", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    outtype: Literal["f32", "f16", "bf16", "q8_0"] = "f16"
    quants: list[Name] = Field(default_factory=lambda: ["Q4_K_M"], min_length=1)
    llama_cpp_dir: Name | None = None
    lora_gguf: Bool = False
    ollama_name: Name | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")

    @field_validator("quants")
    @classmethod
    def _known_quants(cls, value: list[str]) -> list[str]:
        bad = [q for q in value if q.upper() not in QUANT_BITS]
        if bad:
            raise ValueError(f"unknown quantization {bad}; choose from {sorted(QUANT_BITS)}")
        return [q.upper() for q in value]


class EvalParams(_Section):
    max_samples: Int = Field(32, ge=1)
    num_generations: Int = Field(3, ge=0)
    max_new_tokens: Int = Field(64, ge=1)
    json_schema: Name | None = None
    constrained: Bool = False


class Params(_Section):
    common: Common = Common()
    model: ModelParams = ModelParams()
    extract: ExtractParams = ExtractParams()
    dataset: DatasetParams = DatasetParams()
    lora: LoraParams = LoraParams()
    train: TrainParams = TrainParams()
    quant: QuantParams = QuantParams()
    merge: MergeParams = MergeParams()
    export: ExportParams = ExportParams()
    eval: EvalParams = EvalParams()


# Which params each stage reads: whole sections, or single ``section.key`` entries where a stage
# reads only part of a section. dvc.yaml lists exactly these keys for each stage
# (tests/test_params.py checks it), and each CLI command takes exactly these keys as flags.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "base": ("model",),
    "extract": ("extract",),
    "dataset": ("common", "dataset"),
    "train": ("common", "lora", "train", "quant"),
    "merge": ("merge",),
    "export": ("export",),
    "evaluate_base": ("eval.max_samples", "eval.max_new_tokens"),
    "evaluate": ("eval",),
}


def section_keys(section: str) -> list[str]:
    """Dotted keys of one section, e.g. ``["lora.rank", "lora.alpha", …]``."""
    model = Params.model_fields[section].annotation
    return [f"{section}.{name}" for name in model.model_fields]


def stage_keys(stage: str) -> list[str]:
    """Dotted keys a stage reads, in dvc.yaml order."""
    return [key for entry in STAGE_SECTIONS[stage]
            for key in ([entry] if "." in entry else section_keys(entry))]


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"] if part != "__root__")
    if error["type"] == "extra_forbidden":
        section = str(error["loc"][0]) if len(error["loc"]) > 1 else None
        known = (
            ", ".join(Params.model_fields[section].annotation.model_fields)
            if section in Params.model_fields
            else ", ".join(Params.model_fields)
        )
        return f"{key}: unknown key; known keys here: {known}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{key}: {message} (got {error.get('input')!r})"


def validate_params(raw: dict[str, Any], source: str = str(paths.PARAMS)) -> Params:
    """Validate a params mapping; raise one ParamsError that lists every problem."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(f"  - {_describe(e)}" for e in exc.errors())
        raise ParamsError(
            f"{source} has {exc.error_count()} invalid value(s):\n{problems}\n"
            "Fix these keys (see the parameter reference in README.md) and run again."
        ) from None


def load_params(path: str | Path = paths.PARAMS, overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate `params.yaml`, applying dotted-key `overrides` (``{"lora.rank": 8}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if isinstance(raw, dict):  # anything else is reported by validate_params
        raw = apply_overrides(raw, overrides or {})
    return validate_params(raw, str(path))


def section_dict(params: Params, stage: str) -> dict[str, Any]:
    """The flat ``{"lora.rank": 16, …}`` params a stage reads, for provenance and MLflow."""
    out: dict[str, Any] = {}
    for key in stage_keys(stage):
        section, _, name = key.partition(".")
        out[key] = getattr(getattr(params, section), name)
    return out


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of the params mapping `raw` with dotted-key `overrides` (``{"lora.rank": 8}``) set; a
    section that is missing or not a mapping becomes one. `raw` is left as it was."""
    out = dict(raw)
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        out[section] = {**(out[section] if isinstance(out.get(section), dict) else {}), key: value}
    return out


DEFAULTS = Params()  # every knob's default, for library signatures (`max_samples: int = DEFAULTS.eval.max_samples`)
