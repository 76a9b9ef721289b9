"""Typed schema of `params.yaml`: one section per stage, unknown keys rejected, every problem
reported at once.

    from lorapipe.params import DEFAULTS, load_params
    params = load_params("params.yaml")      # raises ParamsError listing each bad key
    params.lora.rank
    DEFAULTS.lora.rank                       # the schema's default, which library signatures use

Each knob is defined here once: its type, allowed values, default and one-line description.
params.yaml's comments, README.md's parameter reference and the CLI's --help are generated from it;
after editing a description run ``python -m lorapipe.params --write``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from lorapipe import paths
from lorapipe.textfiles import SAVE_AS_UTF8, TextEncodingError, bom_encoding, decode_text


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


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


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
AnyCaseAuto = Annotated[Literal["auto"], BeforeValidator(_lower)]


MAX_SEQ_LEN = 131_072  # tokens: the longest sequence any setting may ask for (128 Ki, the longest contexts)
# The answer length, in tokens, that every user-facing way of asking a model defaults to: lorapipe.chat,
# `lorapipe ask`, `lorapipe chat`, serve's /query and /v1/chat/completions (one number, one behaviour).
ANSWER_MAX_TOKENS = 256


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# Allowed values named once: the schema below, the CLI's choices and the extract readers use these.
PdfBackend = Literal["auto", "docling", "docling-native", "pdfplumber"]
Device = Literal["auto", "cpu", "cuda"]
Preset = Literal["none", "cpu", "gpu-8gb", "gpu-24gb", "gpu-80gb"]
Precision = Literal["auto", "fp32", "bf16"]
Executor = Literal["local", "ray"]
# train.select_metric: eval_loss (lower is better), or a task metric of lorapipe.scoring.flat_scores
# (higher is better) scored on answers the model in training generates for the validation rows.
SelectMetric = Literal[
    "eval_loss", "slot_f1", "exact_rate", "intent_accuracy", "json_parse_rate", "exact_match", "rouge_l"
]
JSON_METRICS = ("slot_f1", "exact_rate", "intent_accuracy", "json_parse_rate")  # need JSON answers
LabeledFormat = Literal["auto", "query_data", "instruction", "messages", "conversations", "prompt_completion"]


class Common(_Section):
    seed: Int = Field(42, ge=0, le=2**32 - 1, description="random seed for the train/val split and for training")


class ModelParams(_Section):
    name: Name = Field(
        "smollm2-135m-instruct",
        description=("the bundled model, a local Hugging Face folder, or a Hub id (needs model.revision)"),
    )
    revision: Name | None = Field(
        None, description=("Hub commit or tag; required for Hub ids so runs are reproducible")
    )
    trust_remote_code: Bool = Field(False, description="run a Hub model's own Python code; only for models you trust")


class ExtractParams(_Section):
    pdf_backend: PdfBackend = Field(
        "auto",
        description=(
            "docling: layout models, tables, optional OCR (needs `lorapipe[layout]`); docling-native: model-free; "
            "auto: docling when its models are available offline, else docling-native; pdfplumber is also the "
            "fallback when docling fails, crashes or times out"
        ),
    )
    device: Device = Field("auto", description="where docling's layout models run")
    ocr: Bool = Field(False, description="OCR pages without a text layer (docling backend only; slow)")
    docling_artifacts_path: Name | None = Field(
        None, description=("folder holding docling's downloaded models; null: the local Hugging Face cache")
    )
    timeout_s: Float = Field(
        300, gt=0, description=("seconds per document before its converter process is killed and pdfplumber tried")
    )
    workers: Int = Field(
        2,
        ge=1,
        le=256,
        description="documents converted in parallel (one process each); with executor ray: the local Ray's CPUs",
    )
    executor: Executor = Field(
        "local",
        description=(
            "local: worker processes on this machine; ray: one Ray task per document on the cluster that "
            "extract.ray_address or RAY_ADDRESS names (else a local Ray started for the run), the same "
            'outputs byte for byte (needs `lorapipe[ray]` on every node; "Document work on a Ray cluster" in README.md)'
        ),
    )
    ray_address: Name | None = Field(
        None, description="with executor ray: the cluster (host:port, ray://host:port, auto); null: RAY_ADDRESS"
    )
    resume: Bool = Field(
        True, description=("reuse texts cached by earlier runs (by file content); false: extract everything again")
    )
    min_length: Int = Field(
        20, ge=0, description=("characters; a document with less text is skipped, with the reason in the manifest")
    )


class TaskParams(_Section):
    name: Name = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
        description=("the task's name (letters, digits, _ and -): the `task` of its rows, its key in prompts.json"),
    )
    kind: Literal["text", "chat"] = Field(description="text: chunks of the documents; chat: labeled examples")
    sources: list[Name] = Field(
        default_factory=lambda: ["*"],
        min_length=1,
        description=("globs of the sources the task reads (documents for text, labeled files for chat)"),
    )
    format: LabeledFormat = Field("auto", description="format of its labeled files; auto: detected per file")
    system_prompt: Name | None = Field(
        None, description=("its system prompt, text or a file under data/raw/config/; null: dataset.system_prompt")
    )
    fields: dict[Name, Name] = Field(
        default_factory=dict, description=("rename its labeled fields, e.g. {query: question}; {}: dataset.fields")
    )


class DatasetParams(_Section):
    mode: Literal["auto", "text", "chat"] = Field(
        "auto",
        description=(
            "text: chunks of the documents; chat: labeled examples from data/raw/labeled; auto: whichever is "
            "present, both in one dataset when both are"
        ),
    )
    tasks: list[TaskParams] = Field(
        default_factory=list,
        description=(
            "[]: one task per kind of data present, named text and chat; or a list of "
            "{name, kind: text|chat, sources: [globs], format, system_prompt, fields}"
        ),
    )
    max_seq_len: Int = Field(
        512, ge=16, le=MAX_SEQ_LEN, description=("tokens per row; longer: more context per step, more memory and time")
    )
    overlap_tokens: Int = Field(
        64, ge=0, description=("tokens shared by consecutive chunks of a document; must be < max_seq_len")
    )
    split_by: Literal["document", "chunk"] = Field(
        "document",
        description=(
            "document: no validation chunk comes from a training document; chunk: chunks are split one by one"
        ),
    )
    val_fraction: Float = Field(0.2, gt=0, lt=1, description="share of rows held back for validation (0 < x < 1)")
    system_prompt: Name = Field(
        "You are a helpful assistant that answers from the documents it was trained on.",
        description=(
            "the system prompt of every task without its own: text, or a file under data/raw/config/; resolved into "
            "prompts.json"
        ),
    )
    dedup_threshold: Float = Field(
        0.9,
        gt=0,
        le=1,
        description=(
            "text chunks at least this similar (Jaccard of word 5-grams, MinHash) are near duplicates; "
            "1: exact duplicates only"
        ),
    )
    max_samples: Int | None = Field(
        None, ge=2, description=("at most this many rows per task (a seeded sample); null: all")
    )
    min_tokens: Int = Field(16, ge=1, description="tokens; text chunks shorter than this are dropped")
    on_overflow: Literal["drop", "truncate", "error"] = Field(
        "drop",
        description=(
            "what happens to a chat row longer than max_seq_len (truncate drops it anyway if no answer token "
            "would remain)"
        ),
    )
    on_bad_row: Literal["error", "skip"] = Field(
        "error",
        description=(
            "a malformed labeled row fails naming file and line (error), or is skipped and counted in stats.json"
        ),
    )
    labeled_format: LabeledFormat = Field("auto", description="format of the labeled files; auto: detected per file")
    fields: dict[Name, Name] = Field(
        default_factory=dict, description=("rename labeled fields, e.g. {query: question, data: answer}")
    )
    span_substitution: Int = Field(
        0,
        ge=0,
        le=16,
        description=(
            "up to this many copies of each training row of a JSON extraction task, its answer's values that are "
            "words of the query swapped (in query and answer) for values of the same key from other training rows "
            "(slot substitution); validation rows are never copied; 0: none (README, A structured task)"
        ),
    )
    rare_key_oversampling: Int = Field(
        1,
        ge=1,
        le=8,
        description=(
            "up to this many times span_substitution's copies for a training row whose rarest answer key is in "
            "fewer rows than the median key (the median's row count over its own, rounded): random oversampling "
            "of rare slot names; 1: every row the same; needs span_substitution"
        ),
    )

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
        if self.rare_key_oversampling > 1 and not self.span_substitution:
            raise ValueError(
                f"dataset.rare_key_oversampling ({self.rare_key_oversampling}) multiplies span-substituted copies, "
                "and dataset.span_substitution is 0: set dataset.span_substitution (e.g. 7) or rare_key_oversampling 1"
            )
        return self


class SynthParams(_Section):
    questions_per_passage: Int = Field(
        2,
        ge=0,
        le=20,
        description=(
            "question–answer pairs the teacher writes per passage (at most); 0: no teacher is asked (the passages "
            "and the retrieval index are still written)"
        ),
    )
    passage_tokens: Int = Field(
        256,
        ge=32,
        le=MAX_SEQ_LEN,
        description=(
            "tokens per passage (the base tokenizer; dataset.chunk_text): what the teacher reads for one "
            "request, and the unit that retrieval returns"
        ),
    )
    overlap_tokens: Int = Field(
        32, ge=0, description="tokens shared by consecutive passages of a document; must be < passage_tokens"
    )
    teacher: Name = Field(
        "base",
        description=(
            "base: llama.cpp on the base model (the bundled GGUF, or models/base converted once and cached by "
            "its content); or the path of a GGUF file (not tracked by DVC: its content hash keys the cache). "
            "Ignored when synth.base_url is set"
        ),
    )
    base_url: Name | None = Field(
        None,
        description=(
            "an OpenAI-compatible endpoint (Ollama http://127.0.0.1:11434/v1, llama.cpp's server, vLLM) that "
            "writes the pairs with synth.model; null: the local teacher"
        ),
    )
    model: Name | None = Field(None, description="the model name at synth.base_url; required with it")
    api_key_env: Name | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description=(
            "the environment variable that holds the endpoint's API key (never printed or written); null: no key"
        ),
    )
    max_new_tokens: Int = Field(
        160, ge=16, le=8192, description="tokens the teacher may write per passage (all its pairs together)"
    )
    temperature: Float = Field(
        0.0, ge=0, le=2, description="teacher sampling temperature; 0: greedy (with common.seed: byte-identical reruns)"
    )
    concurrency: Int = Field(
        1, ge=1, le=64, description="parallel requests to an endpoint; the local llama.cpp teacher runs one at a time"
    )
    executor: Executor = Field(
        "local",
        description=(
            "local: the teacher runs here (or at synth.base_url); ray: the local llama.cpp teacher runs as one "
            "Ray actor per node of the cluster that synth.ray_address or RAY_ADDRESS names (else a local Ray), "
            "the GGUF shipped through Ray's object store; an endpoint teacher scales through the endpoint "
            "(synth.concurrency) instead"
        ),
    )
    ray_address: Name | None = Field(
        None, description="with executor ray: the cluster (host:port, ray://host:port, auto); null: RAY_ADDRESS"
    )
    timeout_s: Float = Field(120, gt=0, description="seconds one teacher request may take before it is retried")
    prompt: Name | None = Field(
        None,
        description=(
            "the teacher's instructions, text or a file under data/raw/config/; null: the built-in prompt "
            "(questions answerable from the passage alone, in its language)"
        ),
    )
    max_question_chars: Int = Field(
        120,
        ge=16,
        le=4096,
        description="characters; the schema's maxLength for a question; one that reaches it was cut: too_long",
    )
    max_answer_chars: Int = Field(
        160,
        ge=8,
        le=8192,
        description="characters; the schema's maxLength for an answer; one that reaches it was cut: too_long",
    )
    min_grounding: Float = Field(
        0.5,
        ge=0,
        le=1,
        description=(
            "an answer is kept when at least this share of its content words (not stopwords) appears in its "
            "passage; 0: keep every answer"
        ),
    )
    dedup_threshold: Float = Field(
        0.8,
        gt=0,
        le=1,
        description=(
            "questions at least this similar (Jaccard of word 3-grams, MinHash, as dataset.dedup_threshold) are "
            "near duplicates; 1: exact duplicates only"
        ),
    )
    eval_fraction: Float = Field(
        0.2,
        ge=0,
        lt=1,
        description=(
            "share of each document's pairs held out as knowledge-evaluation questions (seeded by "
            "common.seed); never trained"
        ),
    )
    resume: Bool = Field(
        True,
        description="reuse pairs cached by earlier runs (by passage, teacher, prompt and params); false: ask again",
    )
    task: Name = Field(
        "qa",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$",
        description="the dataset task the kept training pairs become (a chat task), and its key in prompts.json",
    )
    system_prompt: Name = Field(
        "Answer the question from what you know about the documents.",
        description=(
            "the system prompt of that task (text, or a file under data/raw/config/), in training and evaluation"
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> "SynthParams":
        if self.overlap_tokens >= self.passage_tokens:
            raise ValueError(
                f"synth.overlap_tokens ({self.overlap_tokens}) must be smaller than synth.passage_tokens "
                f"({self.passage_tokens})"
            )
        if self.base_url and not self.model:
            raise ValueError("synth.base_url needs synth.model: the name of the model at that endpoint")
        return self


class LoraParams(_Section):
    rank: Int = Field(16, ge=1, le=4096, description="adapter rank; higher: more capacity, more memory")
    alpha: Float = Field(32, gt=0, description="scaling numerator; the update is scaled by alpha / rank")
    dropout: Float = Field(
        0.0,
        ge=0,
        lt=1,
        description=(
            "dropout on the adapter input, 0 to < 1; on the CPU 0.05 costs about 20% of each step (random masks)"
        ),
    )
    target_modules: Literal["auto"] | list[Name] = Field(
        "auto", description=("auto: every linear projection of attention and MLP; or a list of module names")
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("give at least one module name, or 'auto'")
        return value


class TrainParams(_Section):
    epochs: AnyCaseAuto | Annotated[Float, Field(gt=0)] = Field(
        "auto",
        description=(
            "passes over the training rows; used when max_steps is -1; auto: sized from the data, 1 with document "
            "text, else about 2,100 examples in all (2100 / training rows, 1 to 10: 4 for 531 labeled rows)"
        ),
    )
    max_steps: Int = Field(
        16,
        ge=-1,
        description=(
            "optimizer steps; -1: train for `epochs`. 16 steps × 2 rows of ≤512 tokens ≈ 2 min on 2 CPU cores "
            "(bundled model)"
        ),
    )
    lr: AnyCaseAuto | Annotated[Float, Field(gt=0, lt=1)] = Field(
        "auto",
        description=(
            "peak learning rate (AdamW, linear warm-up and decay); auto: sized from the data, 3e-4 with document "
            "text, else 2e-3 × 576 / the model's hidden size (at most 2e-3: 2e-3 for the bundled model, 2.8e-4 "
            "for a 7B)"
        ),
    )
    batch_size: Int = Field(2, ge=1, description="rows per forward pass; higher: faster per row, more memory")
    grad_accum: Int = Field(
        1,
        ge=1,
        description=("forward passes per optimizer step; effective batch = batch_size × grad_accum × num_processes"),
    )
    warmup_steps: Int = Field(2, ge=0, description="linear warm-up steps before the linear decay")
    weight_decay: Float = Field(0.0, ge=0, description="AdamW weight decay")
    log_every: Int = Field(4, ge=1, description="steps between loss lines on the console and in MLflow")
    eval_steps: Int = Field(
        8,
        ge=0,
        description=(
            "steps between evaluations on the validation rows (eval loss and perplexity, console and MLflow); "
            "0: only the final one"
        ),
    )
    early_stopping_patience: Int = Field(
        0,
        ge=0,
        description=(
            "stop after this many evaluations without a better select_metric, keeping the adapter of the best; "
            "0: never. Needs eval_steps > 0"
        ),
    )
    select_metric: SelectMetric = Field(
        "eval_loss",
        description=(
            "what an evaluation compares: eval_loss (lowest is best), or a task metric scored on greedy answers "
            "the model in training gives to the validation conversations (highest is best; slot_f1, exact_rate, "
            "intent_accuracy, json_parse_rate for JSON answers; exact_match, rouge_l). With a task metric, or "
            "with early stopping, the adapter of the best evaluation is kept; needs eval_steps > 0"
        ),
    )
    packing: Bool = Field(
        True,
        description=(
            "join text rows end to end (EOS between documents) into full max_seq_len blocks, so no step computes "
            "padding (~1.4× faster on the sample corpus); chat rows are never packed"
        ),
    )
    group_by_length: Literal["auto"] | Bool = Field(
        "auto",
        description=(
            "batch rows of similar length together (transformers' LengthGroupedSampler: the rows in random groups "
            "of up to 50 × batch_size × grad_accum, each sorted by length, the longest row first; the order drawn "
            "from train.seed and the epoch, so a resumed run sees the same rows), so steps compute fewer padding "
            "tokens (the Snips rows at batch 4: 17% more tokens computed without it); auto: when the rows have "
            "several lengths (chat rows, text not packed) and a batch holds more than one row"
        ),
    )
    torch_compile: Literal["auto"] | Bool = Field(
        "auto",
        description=(
            "compile the model with torch.compile (inductor): faster steps (CPU in bf16 1.2–1.4×, CUDA 1.5–1.8×; CPU "
            "in fp32 none) after a first step that holds the compiling (CPU 2–3 min, CUDA 1.5; a third of that with "
            "inductor's cache warm); auto: compile when the planned tokens per process reach the measured break-even "
            "(CPU 200 k, CUDA 5 M), the rows have one length (packed text), the model is neither 4-bit nor "
            "checkpointed, and not fp32 on the CPU; on the CPU only with a C++ compiler (README.md, Speed)"
        ),
    )
    precision: Precision = Field("auto", description="auto: bf16 where the hardware flags say it is native")
    preset: Preset = Field(
        "none",
        description=(
            'plan for that hardware (memory budget, 4-bit, checkpointing; see "Will it fit?" in README.md), '
            "with autofit; none: no preset"
        ),
    )
    autofit: Bool = Field(
        False,
        description=(
            "when the memory estimate does not fit: true halves batch_size and doubles grad_accum (same effective "
            "batch) until it does; false refuses with the fix"
        ),
    )
    save_steps: Int = Field(
        10,
        ge=0,
        description=(
            "steps between crash-recovery checkpoints (adapter, optimizer, scheduler, RNG, log) in "
            ".lorapipe-cache/train/; 0: none"
        ),
    )
    save_total_limit: Int = Field(2, ge=1, description="checkpoints kept per run")
    resume: Name = Field(
        "auto",
        description=(
            "auto: continue from the latest checkpoint made with the same data and params (others are ignored, "
            "with a message); never; or a checkpoint folder"
        ),
    )
    num_processes: Int = Field(
        1,
        ge=1,
        le=1024,
        description=(
            "> 1: train data-parallel under `accelerate launch` (DDP; one process per GPU, or CPU processes over "
            "gloo); across machines, the processes of all machines together, a multiple of num_machines in "
            'train.accelerate_config (see "More GPUs, more machines" in README.md)'
        ),
    )
    accelerate_config: Name | None = Field(
        None,
        description=(
            "an accelerate config file under data/raw/config/ (FSDP, DeepSpeed, several machines) for "
            "`accelerate launch`; null: DDP on "
            "this machine"
        ),
    )

    @model_validator(mode="after")
    def _early_stopping_needs_evaluations(self) -> "TrainParams":
        if self.early_stopping_patience and not self.eval_steps:
            raise ValueError("train.early_stopping_patience needs train.eval_steps > 0 (the evaluations it compares)")
        if self.select_metric != "eval_loss" and not self.eval_steps:
            raise ValueError(
                f"train.select_metric {self.select_metric} needs train.eval_steps > 0 (the evaluations it scores)"
            )
        return self

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        if value == 0:
            raise ValueError("use -1 to train for `epochs`, or a positive number of steps")
        return value


class QuantParams(_Section):
    load_in_4bit: Literal["auto"] | Bool = Field(
        "auto", description=("auto: 4-bit QLoRA on CUDA, plain LoRA on the CPU; true/false forces it")
    )
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="bitsandbytes 4-bit data type")
    double_quant: Bool = Field(
        True, description=("also quantize the quantization constants (saves ~0.4 bit per parameter)")
    )


class MergeParams(_Section):
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="dtype of the merged weights")


# export.quants auto: the GGUFs written, from the largest to the smallest; the model is chosen among them.
QUANT_LADDER = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M")
LADDER_ROWS = 32  # validation rows the ladder's perplexities are measured on
# The names `export.quants` accepts (llama.cpp's LLAMA_FTYPE_MOSTLY_<NAME>, plus F32), each with its
# approximate bits per weight (llama.cpp's quantize table), which the export's disk check uses.
QUANT_BITS: dict[str, float] = {
    "F32": 32,
    "F16": 16,
    "BF16": 16,
    "Q8_0": 8.5,
    "Q6_K": 6.6,
    "Q5_K_M": 5.7,
    "Q5_K_S": 5.5,
    "Q5_1": 6,
    "Q5_0": 5.5,
    "Q4_K_M": 4.9,
    "Q4_K_S": 4.6,
    "Q4_1": 5,
    "Q4_0": 4.5,
    "Q3_K_L": 4.3,
    "Q3_K_M": 3.9,
    "Q3_K_S": 3.5,
    "Q2_K": 3.4,
}


class ExportParams(_Section):
    name: Name = Field(
        "lorapipe",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description=("file stem of the GGUF files (`models/gguf/<name>.<QUANT>.gguf`) and the Ollama model name"),
    )
    outtype: Literal["f32", "f16", "bf16", "q8_0"] = Field(
        "f16", description=("precision of the converted GGUF before quantization")
    )
    quants: AnyCaseAuto | Annotated[list[Name], Field(min_length=1)] = Field(
        default_factory=lambda: ["Q4_K_M"],
        description=(
            "one GGUF per entry (Q4_K_M, Q5_K_M, Q8_0, F16, ...); the first is the Modelfile's FROM; auto: the "
            "ladder Q8_0, Q6_K, Q5_K_M, Q4_K_M, and the Modelfile's FROM is the smallest within "
            "export.quant_tolerance of the merged model's validation perplexity"
        ),
    )
    quant_tolerance: Float = Field(
        0.05,
        ge=0,
        le=1,
        description=(
            "with quants auto: how much higher than the merged model's the chosen GGUF's perplexity on the first "
            f"{LADDER_ROWS} validation rows may be (0.05: 5%); the evaluate stage applies it to the task score too "
            "when the export holds several GGUFs (reports/eval.json quant_by_task)"
        ),
    )
    llama_cpp_dir: Name | None = Field(
        None,
        description=("a llama.cpp checkout to convert with; null: the converter of the installed llama-cpp-python"),
    )
    lora_gguf: Bool = Field(
        False, description=("also write `<name>.lora.gguf`, the adapter alone, for llama.cpp's `--lora`")
    )
    ollama_name: Name | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description=("the name `ollama create` gets (run when ollama is on PATH); null: export.name"),
    )

    @field_validator("quants", mode="before")
    @classmethod
    def _one_quant(cls, value: Any) -> Any:
        """One quantization written without a list (``quants: Q4_K_M``) is that one-item list."""
        if isinstance(value, str) and value.lower() != "auto" and value.upper() in QUANT_BITS:
            return [value]
        return value

    @field_validator("quants")
    @classmethod
    def _known_quants(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, str):
            return value
        if [q.lower() for q in value] == ["auto"]:  # `lorapipe export --quant auto` gives a list
            return "auto"
        if "auto" in (q.lower() for q in value):
            raise ValueError("auto stands alone (the whole ladder is written); or list the quantizations")
        bad = [q for q in value if q.upper() not in QUANT_BITS]
        if bad:
            raise ValueError(f"unknown quantization {bad}; choose from {sorted(QUANT_BITS)}")
        upper = [q.upper() for q in value]
        twice = sorted({q for q in upper if upper.count(q) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} listed more than once (names are read in any case); list each once")
        return upper


class EvalParams(_Section):
    max_samples: Int = Field(
        32,
        ge=1,
        description=("validation rows scored (perplexity) and chat rows answered by each model; bounds the cost"),
    )
    num_generations: Int = Field(
        3, ge=0, description=("prompts shown with the base and fine-tuned answers side by side in reports/samples.md")
    )
    max_new_tokens: Literal["auto"] | Annotated[Int, Field(ge=1)] = Field(
        "auto",
        description=(
            "tokens per generated answer; auto: the longest reference answer of the chat rows (train and "
            "validation) + 25% (at least 8), so no answer is cut by the evaluator; 64 without chat rows"
        ),
    )
    json_schema: Name | None = Field(
        None,
        description=(
            "a JSON Schema file under data/raw/config/ that JSON answers are checked against; null: no schema check"
        ),
    )
    knowledge_questions: Int = Field(
        10,
        ge=0,
        description=(
            "at most this many held-out questions per question set (the synth stage's, data/raw/eval_qa.jsonl) "
            "answered by each system in the knowledge evaluation; 0: none"
        ),
    )
    knowledge_max_new_tokens: Int = Field(32, ge=1, description="tokens per answer in the knowledge evaluation")
    retrieval_top_k: Int = Field(
        2,
        ge=1,
        le=64,
        description=(
            "passages (BM25 over data/synth/passages.jsonl) put in the prompt of the retrieval systems and of "
            "serve --retrieval"
        ),
    )
    constrained: Literal["auto"] | Bool = Field(
        "auto",
        description=(
            "also answer JSON tasks with the model GGUF (export.json's `model`) under a llama.cpp grammar built "
            "from eval.json_schema, as `lorapipe serve` answers by default; scored as `<gguf> constrained` beside "
            "the free answers; auto: whenever eval.json_schema is set"
        ),
    )

    span_constraint: Bool = Field(
        False,
        description=(
            "for extraction tasks whose values are words of the query: the constrained answers' free string values "
            "(slot values) may only be spans of the user's message (a grammar built per query; lorapipe serve's "
            "default too); needs constrained decoding"
        ),
    )

    @model_validator(mode="after")
    def _constrained_needs_a_schema(self) -> EvalParams:
        if self.constrained is True and not self.json_schema:
            raise ValueError("eval.constrained needs eval.json_schema: the grammar is built from the schema")
        if self.span_constraint and (self.constrained is False or not self.json_schema):
            raise ValueError(
                "eval.span_constraint rewrites the strings of the schema's grammar: it needs eval.json_schema and "
                "eval.constrained auto or true"
            )
        return self


class Params(_Section):
    common: Common = Common()
    model: ModelParams = ModelParams()
    extract: ExtractParams = ExtractParams()
    synth: SynthParams = SynthParams()
    dataset: DatasetParams = DatasetParams()
    lora: LoraParams = LoraParams()
    train: TrainParams = TrainParams()
    quant: QuantParams = QuantParams()
    merge: MergeParams = MergeParams()
    export: ExportParams = ExportParams()
    eval: EvalParams = EvalParams()


DEFAULTS = Params()  # every default, for library signatures: ``min_length: int = DEFAULTS.extract.min_length``


# Which params each stage reads: whole sections, or single ``section.key`` entries where a stage
# reads only part of a section. dvc.yaml lists exactly these keys for each stage
# (tests/test_params.py checks it), and each CLI command takes exactly these keys as flags.
_QA_KEYS = ("task", "system_prompt")
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "base": ("model",),
    "extract": ("extract",),
    # synth.task and synth.system_prompt shape the dataset's qa task only: editing them reruns no teacher.
    "synth": ("common.seed", "model.name", *(f"synth.{k}" for k in SynthParams.model_fields if k not in _QA_KEYS)),
    "dataset": ("common", "dataset", "synth.task", "synth.system_prompt", "eval.json_schema"),
    "train": ("common", "lora", "train", "quant"),
    "merge": ("merge",),
    "export": ("export",),
    "evaluate_base": (
        "eval.max_samples",
        "eval.max_new_tokens",
        "eval.knowledge_questions",
        "eval.knowledge_max_new_tokens",
        "eval.retrieval_top_k",
    ),
    # The knowledge questions and retrieval prompts are evaluate_base's (its reports are evaluate's deps).
    "evaluate": (
        *(f"eval.{k}" for k in EvalParams.model_fields if k not in ("knowledge_questions", "retrieval_top_k")),
        "export.quant_tolerance",
    ),
}


def section_keys(section: str) -> list[str]:
    """Dotted keys of one section, e.g. ``["lora.rank", "lora.alpha", …]``."""
    model = Params.model_fields[section].annotation
    return [f"{section}.{name}" for name in model.model_fields]


# Keys that change how a stage runs, never what it writes (the outputs are byte-equal whatever their
# value: parallelism, where the work runs, reuse of cached results, crash-recovery checkpoints). A stage
# reads them (its CLI flags, its provenance), but dvc.yaml does not list them: changing one reruns nothing.
RUN_ONLY = frozenset(
    {
        "extract.workers",
        "extract.executor",
        "extract.ray_address",
        "extract.resume",
        "synth.concurrency",
        "synth.resume",
        "train.save_steps",
        "train.save_total_limit",
    }
)
RUN_ONLY_NOTE = "Not a DVC dependency: it changes how the stage runs, not its outputs, so changing it reruns nothing"


def stage_keys(stage: str) -> list[str]:
    """Dotted keys a stage reads (its CLI flags and provenance), in dvc.yaml order."""
    return [key for entry in STAGE_SECTIONS[stage] for key in ([entry] if "." in entry else section_keys(entry))]


def dvc_keys(stage: str) -> list[str]:
    """The params dvc.yaml lists for a stage: `stage_keys` but the `RUN_ONLY` ones, so that a change to
    any of them reruns the stage and a change to anything else does not."""
    return [key for key in stage_keys(stage) if key not in RUN_ONLY]


def _model_of(annotation: Any) -> Any:
    """The pydantic model inside an annotation (``X``, ``X | None``, ``list[X]``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arm in get_args(annotation):
        found = _model_of(arm)
        if found is not None:
            return found
    return None


def _key(error: dict) -> str:
    """The dotted key of an error: field names and list indices, without pydantic's tags for the arms
    of a union (``literal['auto']``, ``function-after[...]``, ``bool``) and what follows; an unknown
    key (extra_forbidden) as written."""
    loc = error["loc"]
    if error["type"] == "extra_forbidden":
        return ".".join(str(part) for part in loc if part != "__root__")
    parts, model = [], Params
    for part in loc:
        if part == "__root__":
            continue
        if isinstance(part, int):
            parts.append(str(part))
            continue
        fields = getattr(model, "model_fields", {}) if model is not None else {}
        if part not in fields:
            break
        parts.append(part)
        model = _model_of(fields[part].annotation)
    return ".".join(parts)


def _describe(error: dict) -> str:
    key = _key(error)
    if error["type"] == "extra_forbidden":
        section = str(error["loc"][0]) if len(error["loc"]) > 1 else None
        known = (
            ", ".join(Params.model_fields[section].annotation.model_fields)
            if section in Params.model_fields
            else ", ".join(Params.model_fields)
        )
        near = difflib.get_close_matches(str(error["loc"][-1]), known.split(", "), n=1, cutoff=0.7)
        hint = f"did you mean {near[0]!r}? " if near else ""
        return f"{key}: unknown key; {hint}known keys here: {known}"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if len(error["loc"]) == 1 and value is None and error["loc"][0] in Params.model_fields:
        return f"{key}: the section is empty (a line `{key}:` with no keys under it): give it keys or remove the line"
    if isinstance(value, dict):  # a rule between keys of a section: its message names them
        return f"{key}: {message}"
    if error["type"] == "string_type" and isinstance(value, (int, float, bool)):
        message += (
            f"; YAML read it as the {type(value).__name__} {value!r} (unquoted digits are a number, and with a "
            "leading 0 an octal one): put the value in quotes"
        )
    return f"{key}: {message} (got {value!r})"


def validate_params(raw: dict[str, Any], source: str = str(paths.PARAMS)) -> Params:
    """Validate a params mapping; raise one ParamsError that lists every problem."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        by_key: dict[str, list[dict]] = {}
        for error in exc.errors():  # a value that fits no arm of a union: one error per arm, one line
            by_key.setdefault(_key(error), []).append(error)
        problems = "\n".join(f"  - {_describe_all(errors)}" for errors in by_key.values())
        raise ParamsError(
            f"{source} has {len(by_key)} invalid value(s):\n{problems}\n"
            "Fix these keys (see the parameter reference in README.md) and run again."
        ) from None


def _describe_all(errors: list[dict]) -> str:
    """One line for the errors of one key: their messages joined with "or" (the arms of a union)."""
    if len(errors) == 1:
        return _describe(errors[0])
    first = errors[0]
    messages = " or ".join(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in errors))
    return f"{_key(first)}: {messages} (got {first.get('input')!r})"


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`raw` params with dotted-key `overrides` (``{"lora.rank": 8}``) set; `raw` itself is not changed.

    A section that is missing or empty in `raw` is created. Raises ParamsError for a key without a
    section (``"rank"``); the values are not validated here (`validate_params` does that).
    """
    out = dict(raw)
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        if not section or not key:
            raise ParamsError(f"override {dotted!r}: expected a dotted key, section.key (e.g. lora.rank)")
        out[section] = {**(out[section] if isinstance(out.get(section), dict) else {}), key: value}
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last one
    silently; DVC, which reads params files itself, stops with "found duplicate key")."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"the key {key!r} is written twice in one section (first on line {seen[key] + 1}); DVC "
                    "refuses such a file, and only the last value would be used: keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> Any:
    """The YAML document in `path` ({} when empty; UTF-8 with or without a byte-order mark). Raises
    FileNotFoundError naming a missing file (a pipe such as /dev/stdin is read), ParamsError naming a
    folder given for the file, and ParamsError naming the file and the fix for another
    encoding (UTF-16/32 too: DVC, which reads params files itself, takes UTF-8 only), or the file,
    line and column of a YAML syntax error or of a key written twice in one section."""
    path = Path(path)
    if path.is_dir():
        raise ParamsError(f"{path} is a folder: name the params file in it ({path / 'params.yaml'})")
    if not path.exists():  # not is_file(): /dev/stdin, a pipe or a process substitution is read too
        raise FileNotFoundError(f"params file not found: {path}")
    data = path.read_bytes()
    encoding = bom_encoding(data)
    if encoding in ("utf-16", "utf-32"):
        raise ParamsError(
            f"{path} is saved as {encoding.upper()}, but DVC reads params files as UTF-8 only "
            f"(dvc repro stops with 'is not valid utf-8'); {SAVE_AS_UTF8}"
        )
    try:
        return yaml.load(decode_text(data, path), Loader=_UniqueKeyLoader) or {}
    except TextEncodingError as exc:
        raise ParamsError(str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ParamsError(f"{path} is not valid YAML{where}: {problem}; fix the file and run again") from None


def load_params(path: str | Path = paths.PARAMS, overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate `params.yaml`, applying dotted-key `overrides` (``{"lora.rank": 8}``).

    Raises FileNotFoundError for a missing file and ParamsError listing every invalid key.
    """
    raw = read_yaml(path)
    if isinstance(raw, dict):  # anything else is reported by validate_params
        raw = apply_overrides(raw, overrides or {})
    given = f" with {', '.join(f'{k}={v!r}' for k, v in overrides.items())}" if overrides else ""
    return validate_params(raw, f"{path}{given}")  # a bad value may come from an override (a CLI flag)


def section_dict(params: Params, stage: str) -> dict[str, Any]:
    """The flat ``{"lora.rank": 16, …}`` params a stage reads, for provenance and MLflow."""
    out: dict[str, Any] = {}
    for key in stage_keys(stage):
        section, _, name = key.partition(".")
        out[key] = getattr(getattr(params, section), name)
    return out


# --- the documentation generated from this schema -------------------------------------------------
# params.yaml's comments, README.md's parameter reference and the CLI's --help for each key are
# rendered from the descriptions and defaults above; tests/test_params.py checks the committed files.

REGENERATE = "python -m lorapipe.params --write"
README = Path("README.md")
TABLE_BEGIN, TABLE_END = "<!-- params:begin -->", "<!-- params:end -->"
_COMMENT_COLUMN = 25  # ``key: value`` is padded to this width before its ``  # description``


def field_info(key: str) -> FieldInfo:
    """The schema field of a dotted key (``"lora.rank"``); KeyError for an unknown key."""
    section, _, name = key.partition(".")
    return Params.model_fields[section].annotation.model_fields[name]


def default(key: str) -> Any:
    """The schema's default of a dotted key."""
    section, _, name = key.partition(".")
    return getattr(getattr(DEFAULTS, section), name)


def choices(key: str) -> tuple[str, ...] | None:
    """The allowed values of a key whose type is a Literal (``extract.device`` → auto, cpu, cuda), else None."""
    annotation = field_info(key).annotation
    return get_args(annotation) if get_origin(annotation) is Literal else None


def describe(key: str, code: str = "{}") -> str:
    """A key's one-line meaning: its allowed values (each formatted by `code`), then its description
    (and, for a `RUN_ONLY` key, that changing it reruns nothing)."""
    allowed = choices(key)
    text = field_info(key).description or ""
    if key in RUN_ONLY:
        text += f". {RUN_ONLY_NOTE}"
    return f"{' | '.join(code.format(c) for c in allowed)}; {text}" if allowed else text


def yaml_value(value: Any) -> str:
    """`value` as one line of YAML (flow style); text with spaces in double quotes."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, list):
        value = [v.model_dump() if isinstance(v, BaseModel) else v for v in value]
    if isinstance(value, str) and " " in value:
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar
    text = yaml.safe_dump(value, default_flow_style=True, width=2**20, allow_unicode=True, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...")  # a scalar document ends with "..."


def flag_help(key: str) -> str:
    """The CLI's --help text of ``--<key>``: description and schema default; the allowed values are the
    flag's metavar (argparse format: % doubled)."""
    return f"{field_info(key).description} (schema default: {yaml_value(default(key))})".replace("%", "%%")


def section_readers(section: str) -> list[str]:
    """The stages that read a section, with the keys where a stage reads only some of it."""
    readers = []
    for stage, entries in STAGE_SECTIONS.items():
        keys = [entry.partition(".")[2] for entry in entries if entry.startswith(f"{section}.")]
        if section in entries:
            readers.append(stage)
        elif keys:
            readers.append(f"{stage} ({', '.join(keys)})")
    return readers


def _commented(line: str, comment: str) -> str:
    return f"{line:<{_COMMENT_COLUMN}}  # {comment}"


def render_yaml(values: Params | dict[str, Any]) -> str:
    """params.yaml with every key and its comment from the schema, section by section.

    `values`: validated params, or a raw mapping (as read from params.yaml), whose values are kept
    as written (``alpha: 32`` stays 32, not 32.0); keys it lacks get their defaults. Raises
    ParamsError when a raw mapping does not validate.
    """
    validated = values if isinstance(values, Params) else validate_params(values)
    raw = values.model_dump() if isinstance(values, Params) else values
    lines = [
        "# lorapipe parameters. Each stage reads only its own sections (see dvc.yaml), so changing a value",
        "# reruns only the stages that read it. The comments are generated from the schema",
        f"# (src/lorapipe/params.py): edit a description there, then run `{REGENERATE}`.",
    ]
    for section in Params.model_fields:
        given = raw.get(section) if isinstance(raw.get(section), dict) else {}
        lines += ["", _commented(f"{section}:", "read by: " + ", ".join(section_readers(section)))]
        for key in section_keys(section):
            name = key.partition(".")[2]
            value = given[name] if name in given else getattr(getattr(validated, section), name)
            lines.append(_commented(f"  {name}: {yaml_value(value)}", describe(key)))
    return "\n".join(lines) + "\n"


def _markdown(text: str) -> str:
    """`text` for a Markdown cell: ``<`` outside `code spans` escaped, so ``<name>`` is not read as HTML."""
    parts = text.split("`")
    return "`".join(part if i % 2 else part.replace("<", "&lt;") for i, part in enumerate(parts))


def render_table() -> str:
    """README.md's parameter reference: a Markdown table of every key, its default and meaning."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for section in Params.model_fields:
        for key in section_keys(section):
            cells = (f"`{key}`", f"`{yaml_value(default(key))}`", _markdown(describe(key, code="`{}`")))
            rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


def replace_table(readme: str) -> str:
    """`readme` with the text between its params markers replaced by `render_table()`.

    Raises ValueError when the markers are missing."""
    head, begin, rest = readme.partition(TABLE_BEGIN)
    _, end, tail = rest.partition(TABLE_END)
    if not begin or not end:
        raise ValueError(f"README.md lacks the markers {TABLE_BEGIN} and {TABLE_END} around the parameter table")
    return f"{head}{TABLE_BEGIN}\n{render_table()}{TABLE_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """``python -m lorapipe.params [--write | --check]``: print, rewrite or check params.yaml's comments
    and README.md's parameter table (params.yaml's values are kept)."""
    parser = argparse.ArgumentParser(prog="python -m lorapipe.params", description=main.__doc__.split(":")[0])
    parser.add_argument("--params", type=Path, default=paths.PARAMS, help="params file (default: params.yaml)")
    parser.add_argument("--readme", type=Path, default=README, help="README with the table (default: README.md)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite both files in place")
    mode.add_argument("--check", action="store_true", help="exit 1 if either file is not as generated")
    args = parser.parse_args(argv)
    try:
        wanted = {
            args.params: render_yaml(read_yaml(args.params)),
            args.readme: replace_table(args.readme.read_text()),
        }
    except (OSError, ValueError) as exc:  # ParamsError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not (args.write or args.check):
        sys.stdout.write(wanted[args.params])
        return 0
    stale = [path for path, text in wanted.items() if path.read_text() != text]
    for path in stale:
        if args.write:
            path.write_text(wanted[path])
        print(f"{'updated' if args.write else 'out of date'}: {path}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
