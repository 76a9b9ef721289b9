"""LoRA / QLoRA fine-tuning (the train stage), on TRL's SFTTrainer.

    from lorapipe.params import LoraParams, TrainParams
    from lorapipe.train import train_lora
    result = train_lora("data/dataset", "models/base", "models/lora_output",
                        lora=LoraParams(rank=8), train=TrainParams(max_steps=20))
    result.metrics.val_loss, result.resolved.device, result.history

Device policy (lorapipe.hardware): CUDA when present, else CPU. On CUDA the default is QLoRA
(bitsandbytes nf4 with double quantization, paged 8-bit AdamW, gradient checkpointing); on the CPU
plain LoRA. `quant.load_in_4bit: true` forces 4-bit on either. The sequence length is read from the
dataset's ``stats.json``, never from params.

Rows reach the trainer tokenized by lorapipe.rows, with their labels (loss on assistant turns only
for chat rows), the same way the dataset and evaluate stages tokenize them; SFTTrainer uses a
``labels`` column as it is. Encoder-decoder models (FLAN-T5) train with transformers' Trainer on
(input, target) pairs, since SFTTrainer takes causal models only.

`train_lora` is a sequence of steps: resolve the hardware settings and check the memory fit
(lorapipe.plan), load the model with its adapter, tokenize the rows, build the trainer with
lorapipe's callbacks (lorapipe.train_callbacks), train, score the validation rows, save. torch,
transformers and peft are imported inside the functions that use them.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lorapipe import faults, paths
from lorapipe.checkpoints import Checkpoints, fingerprint
from lorapipe.hardware import resolve_device, resolve_load_in_4bit, resolve_precision
from lorapipe.io import atomic_outputs, read_json, read_jsonl, write_json, write_provenance, write_text_atomic
from lorapipe.models import copy_tokenizer, load_tokenizer
from lorapipe.params import DEFAULTS, LoraParams, QuantParams, TrainParams
from lorapipe.plan import (
    COMPILE_BREAK_EVEN_TOKENS,
    SIZED_LR_TEXT,
    Fit,
    check_fit,
    compile_blockers,
    compile_pays,
    preset,
    sized_epochs,
    sized_lr,
    training_steps,
    warn_warmup,
)
from lorapipe.rows import loss_tokens, pack_text, text_ids, tokenize_row, tokenize_seq2seq, truncate
from lorapipe.textfiles import read_text
from lorapipe.likelihood import perplexity, sequence_nll

Pairs = list[tuple[list[int], list[int]]]  # (input ids, labels) per row; label -100: no loss


@dataclass(frozen=True)
class TrainMetrics:
    """The numbers of a finished run; `metrics_path` (reports/train.json) and MLflow get them."""

    train_loss: float  # the last logged training loss: mean NLL per loss-carrying token, nats
    val_loss: float  # mean NLL per loss-carrying token of the validation rows, saved adapter, nats
    val_perplexity: float  # exp(val_loss), lorapipe.likelihood.perplexity
    steps: int  # optimizer steps done (fewer than planned when early stopping stopped the run)
    tokens: int  # tokens that carried loss, all processes together (no padding, prompts, first tokens)
    input_tokens: int  # non-padding input tokens the trainer saw
    seconds: float  # wall time of the training loop (model loading and saving not included)
    tokens_per_second: float  # tokens / seconds
    trainable_parameters: int  # the adapter's parameters
    # The step whose adapter was kept because it scored best on the validation rows (early stopping or a
    # task metric): those rows then chose the model, and scores on them are optimistic. None: the last
    # step's adapter, no choice made on them.
    selected_step: int | None = None


@dataclass(frozen=True)
class ResolvedSettings:
    """What params left open (auto values, a preset, autofit) came to in this run: recorded beside
    the adapter (``lorapipe_params.yaml``, key ``resolved``) and as MLflow tags ``resolved.<name>``."""

    device: str  # "cuda" or "cpu"
    precision: str  # "bf16" or "fp32"
    load_in_4bit: bool  # QLoRA (quant.load_in_4bit, or the preset, or auto)
    target_modules: list[str]  # the projections that got an adapter
    seq2seq: bool  # an encoder-decoder, trained with transformers' Trainer
    batch_size: int  # rows per forward pass and process, after autofit
    grad_accum: int  # forward passes per optimizer step, after autofit
    gradient_checkpointing: bool
    processes: int  # data-parallel processes (WORLD_SIZE)
    autofit: bool  # in effect: train.autofit, or true because a train.preset turns it on
    packing: bool  # in effect: train.packing and the data has text rows to pack (not seq2seq)
    torch_compile: bool = False  # train.torch_compile, auto decided from the plan (lorapipe.plan.compile_pays)
    group_by_length: bool = False  # train.group_by_length, auto: rows of several lengths, batches of several rows
    epochs: float = 1.0  # train.epochs, auto sized from the data (lorapipe.plan.sized_epochs)
    lr: float = SIZED_LR_TEXT  # train.lr, auto sized from the data and the model (lorapipe.plan.sized_lr)


@dataclass(frozen=True)
class TrainResult:
    """What `train_lora` returns (on the first process of a distributed run; the others get None)."""

    metrics: TrainMetrics
    resolved: ResolvedSettings
    history: list[tuple[int, float]]  # (optimizer step, training loss) at every logged step
    eval_history: list[tuple[int, float]]  # (optimizer step, eval loss) at every evaluation

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        """Rebuild a result from ``dataclasses.asdict(result)`` that went through JSON."""
        return cls(
            TrainMetrics(**data["metrics"]),
            ResolvedSettings(**data["resolved"]),
            [(int(s), float(v)) for s, v in data["history"]],
            [(int(s), float(v)) for s, v in data["eval_history"]],
        )


@dataclass(frozen=True)
class _Hardware:
    """Settings decided before the model loads: from the hardware, params and `train.preset`."""

    device: str
    precision: str
    load_in_4bit: bool
    gradient_checkpointing: bool
    autofit: bool
    budget_gib: float | None  # the preset's memory budget; None: what the device has free


@dataclass(frozen=True)
class _Data:
    train: Pairs
    val: Pairs
    packed: bool  # text rows were packed into full blocks
    labeled_only: bool  # every training row is a conversation (no document text)
    rows: int  # training rows before packing


def train_lora(
    dataset_dir: str | Path,
    base_dir: str | Path,
    out_dir: str | Path,
    *,
    lora: LoraParams = DEFAULTS.lora,
    train: TrainParams = DEFAULTS.train,
    quant: QuantParams = DEFAULTS.quant,
    seed: int = DEFAULTS.common.seed,
    task: str | None = None,
    checkpoint_dir: str | Path | None = None,
    metrics_path: str | Path | None = None,
    loss_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    run_info: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    trainer_args: dict[str, Any] | None = None,
) -> TrainResult | None:
    """Train a LoRA adapter on `dataset_dir`'s ``train.jsonl`` (only task `task`'s rows when given)
    and save it (safetensors) with the tokenizer into `out_dir`, replacing it whole.

    Every `train.eval_steps` steps the validation rows are scored: eval loss, and with a task metric as
    `train.select_metric` (slot_f1, exact_rate, …: scoring.flat_scores) that metric of the greedy
    answers the model in training gives to the validation conversations (train_callbacks.TaskMetric;
    the last step is evaluated too). With `train.early_stopping_patience` N, training stops after N
    evaluations without improvement of `select_metric`; with early stopping or a task metric, the
    adapter of the best evaluation is kept. Every `train.save_steps` steps a checkpoint goes to
    `checkpoint_dir` (default: the cache; lorapipe.checkpoints), which `train.resume` ``auto``
    continues from. Under `accelerate launch` the trainer trains data-parallel and the first process
    writes; before the first step the processes compare their jobs (`check_same_job`:
    settings, dataset, base model, checkpoint resumed), which matters across machines. Written only when given:
    `metrics_path` (JSON), `loss_path` (TSV: step, loss), `plot_path` (PNG). `run_info` goes into the
    adapter's ``run.json``, `provenance` (plus the resolved settings) into ``lorapipe_params.yaml``;
    `on_log(step, metrics)` gets each logged step's and evaluation's numbers.

    `trainer_args` is for benchmarks (bench/bench_train.py): TrainingArguments/SFTConfig settings over
    lorapipe's own, to measure options no param offers; part of the checkpoint fingerprint. Pipelines
    leave it None.

    Raises ValueError for data it cannot train on (no rows of `task`, a row without loss tokens,
    unknown `lora.target_modules`, sequences beyond the model's context, a task `select_metric`
    without validation conversations, a JSON one whose answers are not JSON, or on an encoder-decoder),
    FileNotFoundError for a `train.resume` path that is no checkpoint, MemoryError when the estimate
    does not fit or training runs out of memory (naming what to change), RuntimeError on every process
    when the processes of a distributed run built different jobs (naming what differs)."""
    import torch

    faults.active()  # a malformed LORAPIPE_FAULT is refused before any work
    dataset_dir = Path(dataset_dir)
    max_seq_len = int(read_json(dataset_dir / paths.DATASET_STATS.name)["max_seq_len"])
    random.seed(seed)
    torch.manual_seed(seed)
    hardware = _resolve_hardware(train, quant)
    tokenizer = load_tokenizer(base_dir)
    fit = _check_fit(base_dir, lora, train, hardware, max_seq_len)
    model, seq2seq, targets = _load_model(base_dir, lora, quant, hardware, max_seq_len)
    data = _tokenize(dataset_dir, tokenizer, task, max_seq_len, train.packing, seq2seq)
    context = getattr(model.config, "max_position_embeddings", None)
    selector = _task_metric(dataset_dir, tokenizer, task, train.select_metric, seq2seq, context, on_log)
    text_config = model.config.get_text_config()  # a multimodal model's (Gemma 3): its text decoder's
    train = _sized(train, data, getattr(text_config, "hidden_size", None))
    resolved = ResolvedSettings(
        hardware.device,
        hardware.precision,
        hardware.load_in_4bit,
        targets,
        seq2seq,
        fit.batch_size,
        fit.grad_accum,
        hardware.gradient_checkpointing,
        int(os.environ.get("WORLD_SIZE", 1)),
        hardware.autofit,
        data.packed,
        epochs=train.epochs,
        lr=train.lr,
    )
    steps = _steps(len(data.train), train, resolved)
    warn_warmup(train.warmup_steps, steps)
    resolved = replace(
        resolved,
        torch_compile=_compile(train.torch_compile, data.train, resolved, steps),
        group_by_length=_group_by_length(train.group_by_length, data.train, resolved),
    )
    settings = _run_settings(lora, train, quant, seed, task, resolved, steps, max_seq_len, trainer_args)
    inputs = _input_files(dataset_dir, base_dir)
    checkpoints = Checkpoints(fingerprint(settings, [*inputs["dataset"], *inputs["base model"]]), checkpoint_dir)
    start = _resume_point(train.resume, checkpoints)
    session = _Session.start(
        model, tokenizer, data, train, resolved, steps, checkpoints.folder, seed, on_log, trainer_args, selector
    )
    if resolved.processes > 1:  # the trainer has started the process group: compare the processes' jobs
        check_same_job(_job_identity(settings, inputs, start))
    session.best.resume(start)  # the best adapter of the evaluations before a kill
    if not session.trainer.is_world_process_zero():
        session.run(start, fit)
        return None
    _announce(start, resolved, lora.rank, model, data, steps, max_seq_len)
    result = session.finish(*session.run(start, fit), data.val, resolved, steps)
    _save(
        result,
        model,
        base_dir,
        out_dir,
        run_info=run_info,
        provenance=provenance,
        metrics_path=metrics_path,
        loss_path=loss_path,
        plot_path=plot_path,
    )
    checkpoints.clear()  # the adapter is saved: the crash-recovery checkpoints of this run are done
    return result


def _resolve_hardware(train: TrainParams, quant: QuantParams) -> _Hardware:
    """Device, precision and 4-bit from the hardware and params; a `train.preset` sets 4-bit (where
    `quant.load_in_4bit` is auto), gradient checkpointing and a memory budget, and turns autofit on."""
    device = resolve_device()
    chosen = preset(train.preset)
    four_bit = resolve_load_in_4bit(
        chosen.get("load_in_4bit", "auto") if quant.load_in_4bit == "auto" else quant.load_in_4bit, device
    )
    hardware = _Hardware(
        device=device,
        precision=resolve_precision(train.precision, device),
        load_in_4bit=four_bit,
        gradient_checkpointing=chosen.get("gradient_checkpointing", device == "cuda" and four_bit),
        autofit=train.autofit or bool(chosen),
        budget_gib=chosen.get("device_memory_gib"),
    )
    if chosen:
        print(
            f"[train] train.preset {train.preset}: "
            + ", ".join(f"{k} {v}" for k, v in chosen.items() if v is not None)
            + ", autofit"
            + ("" if train.autofit else " (on for the preset, although train.autofit is false)"),
            flush=True,
        )
    return hardware


def _check_fit(
    base_dir: str | Path, lora: LoraParams, train: TrainParams, hardware: _Hardware, max_seq_len: int
) -> Fit:
    """lorapipe.plan.check_fit for this run: the batch to train with, or a MemoryError with the fix."""
    return check_fit(
        base_dir,
        device=hardware.device,
        precision=hardware.precision,
        load_in_4bit=hardware.load_in_4bit,
        max_seq_len=max_seq_len,
        batch_size=train.batch_size,
        grad_accum=train.grad_accum,
        lora_rank=lora.rank,
        target_modules=lora.target_modules,
        autofit=hardware.autofit,
        budget_gib=hardware.budget_gib,
        gradient_checkpointing=hardware.gradient_checkpointing,
    )


def _load_model(
    base_dir: str | Path, lora: LoraParams, quant: QuantParams, hardware: _Hardware, max_seq_len: int
) -> tuple[Any, bool, list[str]]:
    """The base model with a fresh LoRA adapter: (peft model, whether it is seq2seq, adapted modules)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    seq2seq = bool(getattr(AutoConfig.from_pretrained(base_dir), "is_encoder_decoder", False))
    model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(
        base_dir,
        dtype=torch.float32,
        use_safetensors=True,
        quantization_config=quantization_config(
            hardware.load_in_4bit, quant.quant_type, quant.double_quant, hardware.precision
        ),
        device_map={"": int(os.environ.get("LOCAL_RANK", 0))} if hardware.device == "cuda" else None,
    )
    if hardware.load_in_4bit:
        # No forward pass may run on the 4-bit model before training: inference repacks its weights
        # and later gradients are silently wrong (measured, see DESIGN.md). Evaluations run mid-training
        # (train.eval_steps, a task select_metric), so the repacking is switched off for the whole run.
        keep_4bit_weights_trainable(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=hardware.gradient_checkpointing)
    elif hardware.precision == "bf16":
        hold_frozen_weights_in_bf16(model)
    targets = _target_modules(model, lora.target_modules)
    context = getattr(model.config, "max_position_embeddings", None)
    if context and max_seq_len > context:
        raise ValueError(
            f"dataset.max_seq_len {max_seq_len} is beyond the model's context of {context} tokens: "
            f"lower it to {context} or less and rebuild the dataset"
        )
    model = get_peft_model(
        model,
        LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=targets,
            task_type="SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM",
        ),
    )
    if hardware.precision == "bf16" and not hardware.load_in_4bit:
        # The adapter is float32 and peft casts each input to it, which autocast casts straight back to
        # bfloat16 for the product: two copies per adapted projection and pass, for nothing.
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    return model, seq2seq, targets


def _output_layer_names(model) -> set[str]:
    """The names (last part, as lora.target_modules gives them) of the model's output layer."""
    output = model.get_output_embeddings()
    if output is None:
        return set()
    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if module is output}


def _target_modules(model, wanted: str | list[str]) -> list[str]:
    """`lora.target_modules` made concrete: ``auto`` → every linear projection; names are checked.

    Raises ValueError naming the modules: the output layer (lm_head) is refused with the reason (with
    tied embeddings it shares its weight with the input embeddings, so the merged model would not be
    the trained adapter); any other unknown name with the linear layers the model has."""
    available = default_target_modules(model)
    targets = available if wanted == "auto" else list(wanted)
    head = sorted(_output_layer_names(model) & set(targets))
    if head:
        tied = bool(getattr(model.config, "tie_word_embeddings", False))
        why = (
            "it is tied to the input embeddings (tie_word_embeddings: true): both are one weight matrix, so a "
            "LoRA update merged into it would change the input embeddings as well, and the merged model and "
            "its GGUF would no longer compute what the adapter was trained to compute"
            if tied
            else "lorapipe adapts the attention and MLP projections only (what auto chooses), not the output layer"
        )
        raise ValueError(
            f"lora.target_modules {head}: {head[0]} is the output layer of {type(model).__name__}, and {why}. "
            f"Leave it out: set lora.target_modules to auto or to some of {available}"
        )
    unknown = [t for t in targets if t not in available]
    if unknown:
        raise ValueError(
            f"lora.target_modules {unknown} are not linear layers of {type(model).__name__}; "
            f"it has {available} (or use auto)"
        )
    return targets


def _tokenize(dataset_dir: Path, tokenizer, task: str | None, max_seq_len: int, packing: bool, seq2seq: bool) -> _Data:
    """The training and validation (ids, labels); text rows packed when `packing` and not seq2seq."""
    train_rows = select_task(read_jsonl(dataset_dir / paths.TRAIN_ROWS.name), task, "train")
    val_rows = select_task(read_jsonl(dataset_dir / paths.VAL_ROWS.name), task, "validation")
    packed = packing and not seq2seq and any("messages" not in row for row in train_rows)  # text rows only
    train_ids = training_rows(train_rows, tokenizer, max_seq_len, packed, seq2seq)
    val_ids = tokenize_rows(val_rows, tokenizer, max_seq_len, seq2seq)
    if not train_ids or not val_ids:
        raise ValueError(
            f"{dataset_dir} has {len(train_ids)} training and {len(val_ids)} validation rows"
            f"{f' of task {task!r}' if task else ''}: both are needed; rebuild it with the dataset stage"
        )
    return _Data(train_ids, val_ids, packed, all("messages" in row for row in train_rows), len(train_rows))


def _sized(train: TrainParams, data: _Data, hidden_size: int | None) -> TrainParams:
    """`train` with epochs and lr auto made concrete from the data (lorapipe.plan.sized_epochs, sized_lr),
    said when either was auto."""
    epochs = sized_epochs(data.rows, data.labeled_only) if train.epochs == "auto" else train.epochs
    lr = sized_lr(hidden_size, data.labeled_only) if train.lr == "auto" else train.lr
    said = [f"epochs {epochs:g}"] * (train.epochs == "auto") + [f"lr {lr:.2g}"] * (train.lr == "auto")
    if said:
        what = "labeled rows only" if data.labeled_only else "document text in the data"
        print(
            f"[train] sized from the data ({data.rows} training rows, {what}): {', '.join(said)}"
            + (" (epochs apply with train.max_steps -1)" if train.epochs == "auto" and train.max_steps > 0 else ""),
            flush=True,
        )
    return train.model_copy(update={"epochs": epochs, "lr": lr})


def _steps(rows: int, train: TrainParams, resolved: ResolvedSettings) -> int:
    """The run's optimizer steps (lorapipe.plan.training_steps); says so when one batch takes every row."""
    batch = resolved.batch_size * resolved.processes
    if rows < batch:
        print(
            f"[train] only {rows} training rows, fewer than one batch of {batch}: every step trains on all of them",
            flush=True,
        )
    return training_steps(
        rows,
        batch_size=resolved.batch_size,
        grad_accum=resolved.grad_accum,
        epochs=train.epochs,
        max_steps=train.max_steps,
        processes=resolved.processes,
    )


def _group_by_length(wanted: str | bool, rows: Pairs, resolved: ResolvedSettings) -> bool:
    """`train.group_by_length` made concrete: true/false as given; auto: on when a batch holds more than
    one row and the rows have more than one length (packed text: all blocks but the last are full, so
    there is no padding to save)."""
    if wanted != "auto":
        return bool(wanted)
    lengths = {len(ids) for ids, _ in rows}
    return resolved.batch_size > 1 and len(lengths) > (2 if resolved.packing else 1)


def _compile(wanted: str | bool, rows: Pairs, resolved: ResolvedSettings, steps: int) -> bool:
    """`train.torch_compile` made concrete: true/false as given; auto from the plan (compile_pays: steps ×
    rows a step × mean tokens a row, per process; rows of one length; not 4-bit or checkpointed; not
    float32 on the CPU), and on
    the CPU only where inductor finds a C++ compiler. Compiling, inductor's cache goes to lorapipe's cache
    folder (unless TORCHINDUCTOR_CACHE_DIR is set), so a sweep or a resumed run compiles once."""
    if wanted == "auto":
        mean = sum(len(ids) for ids, _ in rows) / max(len(rows), 1)
        tokens = steps * resolved.batch_size * resolved.grad_accum * mean
        longest = max((len(ids) for ids, _ in rows), default=0)
        one_length = sum(len(ids) != longest for ids, _ in rows) <= 1  # packed text: the last block may be short
        checkpointing, four_bit = resolved.gradient_checkpointing, resolved.load_in_4bit
        wanted = compile_pays(resolved.device, tokens, four_bit, one_length, checkpointing, resolved.precision)
        why = compile_blockers(four_bit, one_length, checkpointing, resolved.device, resolved.precision)
        if wanted and resolved.device == "cpu" and not _cpp_compiler():
            wanted, why = False, ["no C++ compiler for inductor on this machine"]
        print(
            f"[train] train.torch_compile auto: {'on' if wanted else 'off'} ({tokens / 1e3:,.0f} k planned tokens "
            f"per process on {resolved.device}, break-even "
            f"{COMPILE_BREAK_EVEN_TOKENS.get(resolved.device, 0) / 1e3:,.0f} k"
            + "".join(f"; {reason}" for reason in why)
            + ")",
            flush=True,
        )
    if wanted:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(paths.cache_dir() / "inductor"))
    return bool(wanted)


def _cpp_compiler() -> str | None:
    """The C++ compiler torch's inductor would build CPU kernels with, or None where it finds none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:  # inductor raises its own error types for a missing or broken compiler
        return None


def _run_settings(
    lora: LoraParams,
    train: TrainParams,
    quant: QuantParams,
    seed: int,
    task: str | None,
    resolved: ResolvedSettings,
    steps: int,
    max_seq_len: int,
    trainer_args: dict[str, Any] | None,
) -> dict[str, Any]:
    """Every setting that decides the run's numbers; with the input files (`_input_files`), the
    checkpoint folder's key (lorapipe.checkpoints.fingerprint)."""
    run_inputs = {
        "rank": lora.rank,
        "alpha": lora.alpha,
        "dropout": lora.dropout,
        "targets": resolved.target_modules,
        "steps": steps,
        "lr": train.lr,
        "batch_size": resolved.batch_size,
        "grad_accum": resolved.grad_accum,
        "warmup_steps": train.warmup_steps,
        "weight_decay": train.weight_decay,
        "log_every": train.log_every,
        "eval_steps": train.eval_steps,
        "early_stopping_patience": train.early_stopping_patience,
        "select_metric": train.select_metric,
        "packing": resolved.packing,
        "precision": resolved.precision,
        "four_bit": resolved.load_in_4bit,
        "quant_type": quant.quant_type,
        "double_quant": quant.double_quant,
        "seed": seed,
        "max_seq_len": max_seq_len,
        "task": task,
        "world": resolved.processes,
        "checkpointing": resolved.gradient_checkpointing,
        "compile": resolved.torch_compile,  # compiled and plain runs reach slightly different losses
    }
    if resolved.group_by_length:  # another order of the rows (only then: checkpoints of before stay valid)
        run_inputs["group_by_length"] = True
    if trainer_args:
        run_inputs["trainer_args"] = trainer_args
    if train.accelerate_config:  # DDP, FSDP or DeepSpeed save other checkpoints; the machines' addresses do not count
        run_inputs["accelerate"] = accelerate_settings(train.accelerate_config)
    return run_inputs


# Keys of an accelerate config that place a run on machines and do not change what it computes.
PLACEMENT_KEYS = ("machine_rank", "main_process_ip", "main_process_port", "rdzv_backend", "same_network")


def accelerate_settings(accelerate_config: str | Path) -> dict[str, Any]:
    """The settings of accelerate config file `accelerate_config` (YAML or JSON) that decide what a run
    computes and how it saves checkpoints (``distributed_type``, ``fsdp_config``, ``deepspeed_config``,
    ``mixed_precision``, …): every key but the machines' addresses and ranks (`PLACEMENT_KEYS`).
    {} when the file does not exist (`machines` names it before any training)."""
    import yaml

    if not Path(accelerate_config).is_file():
        return {}
    settings = yaml.safe_load(read_text(accelerate_config)) or {}
    return {k: v for k, v in settings.items() if k not in PLACEMENT_KEYS} if isinstance(settings, dict) else {}


def _input_files(dataset_dir: Path, base_dir: str | Path) -> dict[str, list[Path]]:
    """The files whose content decides the run: the dataset's rows, and every file of the base model
    folder (weights, configs, the tokenizer and its chat template, and ``lorapipe_params.yaml``, which
    names the model and revision it came from)."""
    return {
        "dataset": [dataset_dir / paths.TRAIN_ROWS.name, dataset_dir / paths.VAL_ROWS.name],
        "base model": sorted(p for p in Path(base_dir).iterdir() if p.is_file()),
    }


def _job_identity(settings: dict[str, Any], inputs: dict[str, list[Path]], start: Path | None) -> dict[str, Any]:
    """What every process of a distributed run must agree on (`check_same_job`): the
    settings, hashes of the input files (as the checkpoint fingerprint reads them), the checkpoint resumed
    (by name: the cache may sit at other paths on other machines), and where the process runs."""
    import socket

    return {
        "machine": int(os.environ.get("GROUP_RANK", 0)),  # torchrun's machine (node) rank
        "host": socket.gethostname(),
        "settings": json.loads(json.dumps(settings, default=str)),
        **{name: fingerprint({}, files) for name, files in inputs.items()},
        "resume from": start.name if start else None,
    }


def job_differences(identities: list[dict[str, Any]]) -> list[str]:
    """How the processes' jobs differ from process 0's, once per machine: `identities`
    are the processes' job identities (`_job_identity`) in rank order (``{"machine": …, "host": …,
    "settings": {…}, "dataset": hash, "base model": hash, "resume from": …}``); [] when all agree."""
    first, lines = identities[0], []
    for rank, other in enumerate(identities[1:], start=1):
        where = f"machine {other['machine']} ({other['host']}, process {rank})"
        found = [f"has another {key} than process 0" for key in ("dataset", "base model") if other[key] != first[key]]
        mine, theirs = other["settings"], first["settings"]
        found += [
            f"has {key} {mine.get(key)!r} (process 0: {theirs.get(key)!r})"
            for key in sorted({*mine, *theirs})
            if mine.get(key) != theirs.get(key)
        ]
        if other["resume from"] != first["resume from"]:
            resumes = [identity["resume from"] or "no checkpoint" for identity in (other, first)]
            found.append(f"resumes from {resumes[0]} (process 0: {resumes[1]})")
        if found and not any(line.startswith(f"machine {other['machine']} (") for line in lines):
            lines.append(f"{where} {', '.join(found)}")
    return lines


def check_same_job(identity: dict[str, Any]) -> None:
    """Gather every process's job identity (`_job_identity`) and raise RuntimeError, on every
    process alike, when any differs from process 0's: machines that trained different data, base
    models, settings or checkpoints would average gradients of different jobs. The message says how to
    make the machines agree. Needs the process group up (the trainer starts it); a no-op without one."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    identities: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(identities, identity)
    differences = job_differences(identities)
    if differences:
        resumes = any("resumes from" in line for line in differences)
        raise RuntimeError(
            "the processes did not build the same training job: "
            + "; ".join(differences)
            + ". Every machine must train the same commit, data and base model: `git checkout <commit>` and "
            "`dvc pull base dataset` on each"
            + (
                "; resuming across machines needs the checkpoint cache on a filesystem every machine mounts "
                "(LORAPIPE_CACHE_DIR), else set train.resume: never"
                if resumes
                else ""
            )
        )


def _trainer_settings(
    train: TrainParams, resolved: ResolvedSettings, steps: int, folder: Path, seed: int
) -> dict[str, Any]:
    """lorapipe's TrainingArguments/SFTConfig settings for the run."""
    checkpointing = resolved.gradient_checkpointing
    four_bit_on_gpu = resolved.device == "cuda" and resolved.load_in_4bit
    return dict(
        output_dir=str(folder),
        max_steps=steps,
        per_device_train_batch_size=resolved.batch_size,
        per_device_eval_batch_size=resolved.batch_size,
        gradient_accumulation_steps=resolved.grad_accum,
        learning_rate=train.lr,
        lr_scheduler_type="linear",
        warmup_steps=train.warmup_steps,
        weight_decay=train.weight_decay,
        max_grad_norm=1.0,
        logging_steps=train.log_every,
        save_strategy="steps" if train.save_steps else "no",
        save_steps=train.save_steps or 1,
        save_total_limit=train.save_total_limit,
        eval_strategy="steps" if train.eval_steps else "no",
        eval_steps=train.eval_steps or None,
        metric_for_best_model=_metric_key(train.select_metric),
        greater_is_better=train.select_metric != "eval_loss",
        bf16=resolved.precision == "bf16",
        use_cpu=resolved.device == "cpu",
        seed=seed,
        data_seed=seed,
        optim="paged_adamw_8bit" if four_bit_on_gpu else "adamw_torch_fused",
        activation_checkpointing=checkpointing,
        torch_compile=resolved.torch_compile,
        activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        save_only_model=False,
    )


def _announce(
    start: Path | None, resolved: ResolvedSettings, rank: int, model, data: _Data, steps: int, max_seq_len: int
) -> None:
    """The run's first progress lines: where it resumes from, and what it trains."""
    if start is not None:
        print(f"[train] resuming from {start}", flush=True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    world = resolved.processes
    print(
        f"[train] {resolved.device}{f' × {world} processes' if world > 1 else ''}, {resolved.precision}, "
        f"{'QLoRA 4-bit' if resolved.load_in_4bit else 'LoRA'} r={rank} on {resolved.target_modules}; "
        f"{trainable / 1e6:.2f} M of {total / 1e6:.1f} M parameters trainable; {len(data.train)} "
        f"{'rows and packed blocks' if data.packed else 'rows'}, {steps} steps × {resolved.batch_size} × "
        f"{resolved.grad_accum} at ≤{max_seq_len} tokens"
        + (", batched by length (train.group_by_length)" if resolved.group_by_length else ""),
        flush=True,
    )


@dataclass
class _Session:
    """The trainer with lorapipe's callbacks (lorapipe.train_callbacks) around one model."""

    trainer: Any
    model: Any
    counter: Any  # train_callbacks.LossTokens
    progress: Any  # train_callbacks.Progress
    best: Any  # train_callbacks.BestAdapter

    @classmethod
    def start(
        cls,
        model,
        tokenizer,
        data: _Data,
        train: TrainParams,
        resolved: ResolvedSettings,
        steps: int,
        folder: Path,
        seed: int,
        on_log,
        trainer_args: dict[str, Any] | None,
        selector=None,
    ) -> _Session:
        """`selector`: the TaskMetric callback of a task `train.select_metric` (before BestAdapter and
        early stopping, which read the metric it adds), or None."""
        from lorapipe.train_callbacks import BestAdapter, FaultPoints, LossTokens, Progress

        counter = LossTokens(model, resolved.seq2seq)
        progress = Progress(steps, counter, on_log)
        keep_best = bool(train.early_stopping_patience) or selector is not None
        best = BestAdapter(_metric_key(train.select_metric), greater_is_better=selector is not None, keep=keep_best)
        settings = {**_trainer_settings(train, resolved, steps, folder, seed), **(trainer_args or {})}
        trainer = _trainer(
            model,
            tokenizer,
            resolved.seq2seq,
            data.train,
            data.val,
            [progress, *([selector] if selector else []), best, FaultPoints()],
            train.early_stopping_patience,
            group_seed=seed if resolved.group_by_length else None,
            **settings,
        )
        return cls(trainer, model, counter, progress, best)

    def run(self, start: Path | None, fit: Fit) -> tuple[float, Any]:
        """Train (from checkpoint `start`); (seconds, the trainer's output). Out of memory becomes a
        MemoryError that names the fit check's fixes."""
        from lorapipe.train_callbacks import out_of_memory_advice

        started = time.perf_counter()
        with out_of_memory_advice(fit.estimate_gib, fit.fixes):
            output = self.trainer.train(resume_from_checkpoint=str(start) if start else None)
        return time.perf_counter() - started, output

    def finish(self, seconds: float, output, val: Pairs, resolved: ResolvedSettings, steps: int) -> TrainResult:
        """Keep the best adapter (when BestAdapter.keep: early stopping or a task metric), score the
        validation rows, and sum the run up."""
        last = self.trainer.state.global_step
        if self.best.keep and self.best.best is not None:
            _restore(self.model, self.best.best, self.best.metric, last, steps)
        val_loss = _validation_loss(self.trainer, self.model, val, resolved)
        tokens = self.counter.value * resolved.processes  # each process counts its own batches (equal shares)
        history = self.progress.history
        metrics = TrainMetrics(
            train_loss=history[-1][1] if history else float(output.training_loss),
            val_loss=val_loss,
            val_perplexity=perplexity(val_loss),
            steps=last,
            tokens=tokens,
            input_tokens=int(self.trainer.state.num_input_tokens_seen),
            seconds=round(seconds, 2),
            tokens_per_second=round(tokens / max(seconds, 1e-9), 1),
            trainable_parameters=sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            selected_step=self.best.best.step if self.best.keep and self.best.best is not None else None,
        )
        print(
            f"[train] done in {seconds:.0f}s: train loss {metrics.train_loss:.4f}, "
            f"val loss {val_loss:.4f} (perplexity {metrics.val_perplexity:.2f})",
            flush=True,
        )
        return TrainResult(metrics, resolved, history, self.progress.evals)


def _restore(model, best, metric: str, last_step: int, steps: int) -> None:
    """Put the adapter weights of the best evaluation (train_callbacks.Best; by `metric`) back."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(model, best.weights)
    print(
        f"[train] keeping the adapter of step {best.step} "
        f"({'lowest eval loss' if metric == 'eval_loss' else 'highest ' + metric.removeprefix('eval_')} "
        f"{best.value:.4f})" + (f"; stopped early at step {last_step}" if last_step < steps else ""),
        flush=True,
    )


def _metric_key(select_metric: str) -> str:
    """The evaluation metrics' key of `train.select_metric`: eval_loss, or eval_<task metric>."""
    return select_metric if select_metric == "eval_loss" else f"eval_{select_metric}"


def _task_metric(
    dataset_dir: Path, tokenizer, task: str | None, metric: str, seq2seq: bool, context: int | None, on_log
):
    """The TaskMetric callback for a task `train.select_metric` (None for eval_loss): the validation
    conversations (of `task` when given) with their system prompts from ``prompts.json``, their answers
    as references, and the answer token limit eval.max_new_tokens auto derives from the data
    (generation.answer_token_budget). Raises ValueError, before training, when there are no such
    conversations, when a JSON metric meets answers that are not JSON (or slot_f1/intent_accuracy meet
    JSON without ``slots``/``intent``), when the longest prompt plus that limit exceeds the model's
    `context` (tokens), and on an encoder-decoder."""
    from lorapipe.chat_encoder import encode_chat, hf_codec
    from lorapipe.generation import answer_token_budget, evaluation_requests
    from lorapipe.params import JSON_METRICS
    from lorapipe.scoring import is_json_task, parse_json
    from lorapipe.train_callbacks import TaskMetric

    if metric == "eval_loss":
        return None
    if seq2seq:
        raise ValueError(f"train.select_metric {metric} scores a causal LM's answers; use eval_loss for this model")
    rows = select_task(read_jsonl(dataset_dir / paths.VAL_ROWS.name), task, "validation")
    chat = [row for row in rows if "messages" in row]
    if not chat:
        raise ValueError(
            f"train.select_metric {metric} scores answers to the validation conversations, and "
            f"{dataset_dir / paths.VAL_ROWS.name} has none{f' of task {task!r}' if task else ''} (text rows only): "
            "use eval_loss, or add a chat task (dataset.tasks, data/raw/labeled)"
        )
    requests = evaluation_requests(chat, read_json(dataset_dir / paths.PROMPTS.name))
    expected = [answer for _, answer in requests]
    if metric in JSON_METRICS and not is_json_task(expected):
        raise ValueError(
            f"train.select_metric {metric} scores JSON answers, and the validation conversations' answers in "
            f"{dataset_dir / paths.VAL_ROWS.name} are not all JSON: use exact_match or rouge_l"
        )
    shape = {"slot_f1": "slots", "intent_accuracy": "intent"}.get(metric)
    answers = list(map(parse_json, expected))
    if shape and not all(isinstance(d, dict) and shape in d for d in answers):
        raise ValueError(
            f"train.select_metric {metric} reads the intent-and-slots shape, and not every validation answer in "
            f"{dataset_dir / paths.VAL_ROWS.name} has {shape!r}: use exact_rate (every field equal) or json_parse_rate"
        )
    if metric == "slot_f1" and not any(d["slots"] for d in answers):
        raise ValueError(
            f"train.select_metric slot_f1: no validation answer in {dataset_dir / paths.VAL_ROWS.name} has a slot, "
            "so there is no slot F1 to compare (it is left out of the scores): use exact_rate or intent_accuracy"
        )
    rows_files = [dataset_dir / paths.TRAIN_ROWS.name, dataset_dir / paths.VAL_ROWS.name]
    budget, reason = answer_token_budget("auto", rows_files, tokenizer)
    codec = hf_codec(tokenizer)
    longest = max(len(encode_chat(messages, codec)) for messages, _ in requests)
    if context and longest + budget > context:
        raise ValueError(
            f"train.select_metric {metric}: a validation prompt of {longest} tokens plus answers of up to {budget} "
            f"({reason}) exceed the model's context of {context} tokens: use eval_loss, or shorten the prompts "
            "(dataset.system_prompt) or the answers"
        )
    print(
        f"[train] select_metric {metric}: {len(requests)} validation conversations answered at each evaluation "
        f"({reason})",
        flush=True,
    )
    return TaskMetric(metric, tokenizer, [messages for messages, _ in requests], expected, budget, on_log)


def _validation_loss(trainer, model, val: Pairs, resolved: ResolvedSettings) -> float:
    """Mean NLL per loss-carrying token of the validation rows, with the adapter as it will be saved."""
    import torch

    model.eval()
    if resolved.seq2seq:
        return trainer.evaluate()["eval_loss"]
    with torch.autocast(device_type=resolved.device, dtype=torch.bfloat16, enabled=resolved.precision == "bf16"):
        nll, count = sequence_nll(model, val, model.device.type)
    return nll / max(count, 1)


def _save(
    result: TrainResult,
    model,
    base_dir: str | Path,
    out_dir: str | Path,
    *,
    run_info: dict | None,
    provenance: dict | None,
    metrics_path: str | Path | None,
    loss_path: str | Path | None,
    plot_path: str | Path | None,
) -> None:
    """The adapter folder and the reports that were asked for, replaced together (io.atomic_outputs)."""
    with atomic_outputs() as place:
        tmp = place(out_dir, folder=True)
        model.save_pretrained(tmp, safe_serialization=True)
        copy_tokenizer(base_dir, tmp)
        write_json(tmp / paths.RUN_INFO_NAME, run_info or {})
        write_provenance(
            tmp,
            {**(provenance or {}), "resolved": asdict(result.resolved), "selected_step": result.metrics.selected_step},
        )
        if metrics_path:
            # load_in_4bit and seq2seq sit beside the numbers in train.json, as they always have
            write_json(
                place(metrics_path),
                {
                    **asdict(result.metrics),
                    "load_in_4bit": result.resolved.load_in_4bit,
                    "seq2seq": result.resolved.seq2seq,
                },
            )
        if loss_path:
            write_text_atomic(place(loss_path), "step\tloss\n" + "".join(f"{s}\t{v:.6f}\n" for s, v in result.history))
        if plot_path:
            plot_losses(result.history, result.eval_history, place(plot_path))


def plot_losses(history: list[tuple[int, float]], evals: list[tuple[int, float]], path: str | Path) -> Path:
    """Write a PNG chart of the training loss and the validation (eval) loss per step to `path`
    (as it is: callers that need an atomic write give a temporary path)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    if history:
        axes.plot(*zip(*history), marker="o", markersize=3, label="training loss")
    if evals:
        axes.plot(*zip(*evals), marker="s", markersize=4, label="validation loss")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title("lorapipe training")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    plt.close(figure)
    return path


def default_target_modules(model) -> list[str]:
    """Every linear projection of attention and MLP (by module name suffix), not the output head."""
    import torch
    from transformers.pytorch_utils import Conv1D

    # bitsandbytes' 4/8-bit layers subclass torch.nn.Linear, so this finds quantized models' layers too.
    linear_types = (torch.nn.Linear, Conv1D)
    output = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, linear_types) and module is not output
    }
    if not names:
        raise ValueError(f"no linear layers found in {type(model).__name__}: set lora.target_modules")
    return sorted(names)


def hold_frozen_weights_in_bf16(model) -> int:
    """Store the frozen linear projections in bfloat16 (the adapter, embeddings, norms and LM head
    stay float32); returns how many. Under bf16 autocast every projection runs in bfloat16 anyway,
    so the numbers do not change, but autocast no longer casts each weight on every forward pass
    and keeps no bfloat16 copy for the backward pass: 12% faster steps in a plain training loop on
    the CPU (within the noise of bench/bench_train.py's trainer runs), and two bytes per weight less
    memory. The residual stream stays float32."""
    import torch

    output = model.get_output_embeddings()
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear and m is not output]
    for module in linears:
        module.to(torch.bfloat16)
    return len(linears)


def keep_4bit_weights_trainable(model) -> int:
    """Stop bitsandbytes repacking the model's 4-bit weights for CPU inference; returns how many layers.

    On a CPU with avx512_bf16, a 4-bit layer's first forward pass in eval mode without gradients (an
    evaluation, a generation) rewrites its weights into a layout for a fast inference kernel, and keeps
    them so: in that layout the layer's product has no backward, so the gradients of every later
    training step miss the frozen weights' part, silently. Only a ``state_dict`` call turns them back
    (lossily with double quantization: the constants are quantized again). With the repacking off,
    every pass takes the training path, evaluations a little slower. The switch is the layers'
    ``support_avx512bf16_for_cpu`` (bitsandbytes 0.50); a version without it has nothing to switch off."""
    layers = [m for m in model.modules() if getattr(m, "support_avx512bf16_for_cpu", None) is not None]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def quantization_config(load_in_4bit: bool, quant_type: str, double_quant: bool, compute_dtype: str):
    if not load_in_4bit:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_type,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=torch.bfloat16 if compute_dtype == "bf16" else torch.float32,
    )


def tokenize_rows(
    rows: list[dict], tokenizer, max_seq_len: int, seq2seq: bool = False
) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of each row, cut to `max_seq_len`; rows left without loss tokens are an error."""
    out = []
    for number, row in enumerate(rows, 1):
        ids, labels = tokenize_seq2seq(row, tokenizer) if seq2seq else tokenize_row(row, tokenizer)
        ids, labels = truncate(ids, labels, max_seq_len)
        if not loss_tokens(labels if seq2seq else labels[1:]):
            raise ValueError(
                f"row {number} ({row.get('source')}) has no token that carries loss after cutting "
                f"to {max_seq_len} tokens: rebuild the dataset (dataset.on_overflow)"
            )
        out.append((ids, labels))
    return out


def training_rows(
    rows: list[dict], tokenizer, max_seq_len: int, packing: bool = False, seq2seq: bool = False
) -> list[tuple[list[int], list[int]]]:
    """The (ids, labels) the trainer sees. With `packing`, text rows are joined (EOS-separated) into
    full `max_seq_len` blocks; chat rows are never packed, so no answer is cut or mixed with another.
    Text is read as literal characters (rows.text_ids): the only control tokens in a text row are the
    BOS/EOS the tokenizer adds and the EOS lorapipe puts between packed documents."""
    if not packing or seq2seq:
        return tokenize_rows(rows, tokenizer, max_seq_len, seq2seq)
    text = [text_ids(tokenizer, row["text"]) for row in rows if "messages" not in row]
    chat = tokenize_rows([row for row in rows if "messages" in row], tokenizer, max_seq_len)
    return pack_text(text, tokenizer.eos_token_id, max_seq_len) + chat


def select_task(rows: list[dict], task: str | None, split: str) -> list[dict]:
    """The rows of one task (`train --task NAME`), or all rows."""
    if task is None:
        return rows
    chosen = [row for row in rows if row.get("task") == task]
    if not chosen:
        known = sorted({str(row.get("task")) for row in rows})
        raise ValueError(f"no {split} rows of task {task!r}; the dataset has tasks {known}")
    return chosen


def _dataset(pairs: list[tuple[list[int], list[int]]]):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": [ids for ids, _ in pairs], "labels": [labels for _, labels in pairs]})


def _trainer(
    model,
    tokenizer,
    seq2seq: bool,
    train_ids,
    val_ids,
    callbacks,
    early_stopping_patience: int,
    group_seed: int | None = None,
    **args,
):
    """TRL's SFTTrainer on rows tokenized with their labels; transformers' Trainer for encoder-decoders.
    With `group_seed`, training batches rows of similar length (length_grouped_sampler); evaluation
    keeps the rows' order."""
    import datasets
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback

    datasets.disable_progress_bars()  # lorapipe prints its own progress lines
    if early_stopping_patience:
        callbacks = [*callbacks, EarlyStoppingCallback(early_stopping_patience)]
    if seq2seq:
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        trainer = _length_grouping(Trainer)(
            model=model,
            args=TrainingArguments(**args),
            train_dataset=_dataset(train_ids),
            eval_dataset=_dataset(val_ids),
            processing_class=tokenizer,
            callbacks=callbacks,
            data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        )
    else:
        from trl import SFTConfig

        config = SFTConfig(**args, max_length=max(len(ids) for ids, _ in train_ids + val_ids), packing=False)
        trainer = _sft_trainer_class()(
            model=model,
            args=config,
            train_dataset=_dataset(train_ids),
            eval_dataset=_dataset(val_ids),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
    trainer.remove_callback(PrinterCallback)
    trainer.lorapipe_group_seed = group_seed
    return trainer


def length_grouped_sampler(lengths: list[int], batch_rows: int, seed: int):
    """transformers' LengthGroupedSampler over rows of `lengths` tokens, in an order fixed by (`seed`,
    epoch): the rows in random groups of up to 50 × `batch_rows` (fewer for small datasets), each group
    sorted by length, the longest row first. transformers draws its order from the process's global
    random state, which a resumed run (it skips the first batches of the epoch it resumes in) and the
    processes of a distributed run do not share; here each epoch's order comes from a generator seeded
    with `seed` + epoch (``set_epoch``, which lorapipe's trainer calls before each epoch: accelerate's
    wrappers of a resumed or distributed run's loader do not pass it down), so a resumed run sees the
    rows an uninterrupted one does and every process draws the same order."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
        def __init__(self) -> None:
            super().__init__(batch_rows, lengths=list(lengths), generator=torch.Generator().manual_seed(seed))

        def set_epoch(self, epoch: int) -> None:
            self.generator = torch.Generator().manual_seed(seed + epoch)

    return EpochSeededLengthGroupedSampler()


def _length_grouping(trainer_class):
    """`trainer_class` whose training sampler is length_grouped_sampler when the trainer's
    ``lorapipe_group_seed`` is set (train.group_by_length), else the class's own (random order)."""

    class LengthGrouping(trainer_class):
        lorapipe_group_seed: int | None = None
        _lorapipe_sampler = None

        def _get_train_sampler(self, train_dataset=None):
            dataset = self.train_dataset if train_dataset is None else train_dataset
            if self.lorapipe_group_seed is None or dataset is None:
                return super()._get_train_sampler(train_dataset)
            rows = self.args.train_batch_size * self.args.gradient_accumulation_steps  # as transformers groups
            lengths = [len(ids) for ids in dataset["input_ids"]]
            self._lorapipe_sampler = length_grouped_sampler(lengths, rows, self.lorapipe_group_seed)
            return self._lorapipe_sampler

        def _run_epoch(self, *args, **kwargs):
            # The epoch's order, set here: accelerate's wrappers (a distributed run's BatchSamplerShard, a
            # resumed run's SkipBatchSampler over it) do not pass set_epoch down to the sampler.
            if self._lorapipe_sampler is not None:
                self._lorapipe_sampler.set_epoch(kwargs["epoch"] if "epoch" in kwargs else args[1])
            return super()._run_epoch(*args, **kwargs)

    return LengthGrouping


def hub_telemetry_off() -> bool:
    """Switch off huggingface_hub's usage telemetry (``send_telemetry``, which TRL's trainers call) in this
    process and its children, unless the user set ``HF_HUB_DISABLE_TELEMETRY`` (then theirs holds, read
    as huggingface_hub reads it: ``0`` allows it). Returns whether it is off. huggingface_hub reads the
    variable once, at import, so its constant is set from it again here."""
    from huggingface_hub import constants

    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # huggingface_hub's own reading of the variable, now (it read it at import, maybe before it was set)
    constants.HF_HUB_DISABLE_TELEMETRY = (
        os.environ["HF_HUB_DISABLE_TELEMETRY"].upper() in constants.ENV_VARS_TRUE_VALUES
    )
    return bool(constants.HF_HUB_DISABLE_TELEMETRY)


def _sft_trainer_class():
    """SFTTrainer, except that on the CPU the loss comes from the model's own forward pass, and that
    with train.group_by_length it batches by length in lorapipe's order (_length_grouping).

    TRL's fused LM head (tiled log-probabilities, with entropy and token accuracy for its metrics)
    saves the logits' memory on GPUs, but on the CPU it took 8.4 s of every 4 × 512-token step of the
    bundled model (torch profiler, 3 steps); the model's own cross-entropy takes 0.6 s. The loss is
    the same: the mean negative log-likelihood of the labels.

    TRL's trainers send a usage ping to the Hugging Face Hub when built (trl BaseTrainer._send_telemetry:
    a HEAD request naming the model's architecture and the dataset's source); lorapipe sends nothing
    anywhere unless asked, so it is off (`hub_telemetry_off`) unless HF_HUB_DISABLE_TELEMETRY is set."""
    from transformers import Trainer
    from trl import SFTTrainer

    hub_telemetry_off()

    class LorapipeSFTTrainer(_length_grouping(SFTTrainer)):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.args.device.type != "cpu":
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return LorapipeSFTTrainer


def _resume_point(resume: str, checkpoints: Checkpoints) -> Path | None:
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume)
        if not Checkpoints.complete(path):
            raise FileNotFoundError(
                f"train.resume={resume}: not a complete training checkpoint folder (no trainer_state.json)"
            )
        return path
    others = checkpoints.others()
    if others:
        print(
            f"[train] ignoring {len(others)} checkpoint folder(s) made with other data or params in {checkpoints.root}",
            flush=True,
        )
    return checkpoints.latest()
