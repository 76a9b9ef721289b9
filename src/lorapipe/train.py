"""LoRA / QLoRA fine-tuning (the train stage), on TRL's SFTTrainer.

    from lorapipe import train_lora
    result = train_lora("data/dataset", "models/base", "models/lora_output", rank=8, max_steps=20)

Device policy: CUDA when present, else CPU. On CUDA the default is QLoRA (bitsandbytes nf4 with
double quantization, paged 8-bit AdamW, gradient checkpointing); on the CPU plain LoRA.
`load_in_4bit=True` forces 4-bit on either. The sequence length is read from the dataset's
``stats.json``, never from params.

Rows reach the trainer tokenized by lorapipe.rows, with their labels (loss on assistant turns only
for chat rows), the same way the dataset and evaluate stages tokenize them; SFTTrainer uses a
``labels`` column as it is. Encoder-decoder models (FLAN-T5) train with transformers' Trainer on
(input, target) pairs, since SFTTrainer takes causal models only.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lorapipe import faults, paths
from lorapipe.checkpoints import FAULT_ENV, Checkpoints, fingerprint
from lorapipe.io import atomic_outputs, read_json, read_jsonl, write_json, write_provenance, write_text_atomic
from lorapipe.models import copy_tokenizer, load_tokenizer, sequence_nll
from lorapipe.rows import loss_tokens, pack_text, tokenize_row, tokenize_seq2seq, truncate


def cpu_has_bf16() -> bool:
    """True when the CPU advertises native bfloat16 matrix instructions (avx512_bf16 or amx_bf16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str, device: str) -> str:
    """`auto` → bf16 where the hardware flags say it is native, else fp32 (never from a timing)."""
    if precision != "auto":
        return precision
    if device == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def resolve_load_in_4bit(load_in_4bit: str | bool, device: str) -> bool:
    return device == "cuda" if load_in_4bit == "auto" else bool(load_in_4bit)


def default_target_modules(model) -> list[str]:
    """Every linear projection of attention and MLP (by module name suffix), not the output head."""
    import torch
    from transformers.pytorch_utils import Conv1D

    # bitsandbytes' 4/8-bit layers subclass torch.nn.Linear, so this finds quantized models' layers too.
    linear_types = (torch.nn.Linear, Conv1D)
    output = model.get_output_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, linear_types) and module is not output}
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


def tokenize_rows(rows: list[dict], tokenizer, max_seq_len: int,
                  seq2seq: bool = False) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of each row, cut to `max_seq_len`; rows left without loss tokens are an error."""
    out = []
    for number, row in enumerate(rows, 1):
        ids, labels = tokenize_seq2seq(row, tokenizer) if seq2seq else tokenize_row(row, tokenizer)
        ids, labels = truncate(ids, labels, max_seq_len)
        if not loss_tokens(labels if seq2seq else labels[1:]):
            raise ValueError(f"row {number} ({row.get('source')}) has no token that carries loss after cutting "
                             f"to {max_seq_len} tokens: rebuild the dataset (dataset.on_overflow)")
        out.append((ids, labels))
    return out


def training_rows(rows: list[dict], tokenizer, max_seq_len: int, packing: bool = False,
                  seq2seq: bool = False) -> list[tuple[list[int], list[int]]]:
    """The (ids, labels) the trainer sees. With `packing`, text rows are joined (EOS-separated) into
    full `max_seq_len` blocks; chat rows are never packed, so no answer is cut or mixed with another."""
    if not packing or seq2seq:
        return tokenize_rows(rows, tokenizer, max_seq_len, seq2seq)
    text = [tokenizer(row["text"])["input_ids"] for row in rows if "messages" not in row]
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


class LossTokens:
    """Counts the tokens that carry loss (label not -100, after the causal shift) in every training
    forward pass of `model`: the numerator of lorapipe's tokens per second, which leaves out
    padding, prompts and each row's first token. The count stays on the device until read."""

    def __init__(self, model, seq2seq: bool = False):
        self.seq2seq, self.total = seq2seq, None
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        labels = kwargs.get("labels")
        if module.training and labels is not None:
            counted = (labels if self.seq2seq else labels[..., 1:]).ne(-100).sum()
            self.total = counted if self.total is None else self.total + counted

    @property
    def value(self) -> int:
        return 0 if self.total is None else int(self.total)


def _fault(kind: str, step: int) -> bool:
    """Tests inject faults through LORAPIPE_TRAIN_FAULT ("kill-after-checkpoint:N", "oom-at-step:N")."""
    name, _, at = os.environ.get(FAULT_ENV, "").partition(":")
    return name == kind and at == str(step)


def _progress_callback(steps: int, on_log: Callable[[int, dict[str, float]], None] | None, counter: LossTokens):
    """Prints progress, keeps the loss history (rebuilt from the trainer state on resume), reports
    metrics to `on_log` (speed in loss-carrying tokens per second, from `counter`), checkpoints
    nothing at the last step (the adapter is saved right after)."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        history: list[tuple[int, float]] = []
        evals: list[tuple[int, float]] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.history = [(log["step"], log["loss"]) for log in state.log_history if "loss" in log]
            self.evals = [(log["step"], log["eval_loss"]) for log in state.log_history if "eval_loss" in log]
            self.first_step = state.global_step
            self.started = self.window_start = time.perf_counter()
            self.window_tokens = counter.value

        def on_step_begin(self, args, state, control, **kwargs):
            if _fault("oom-at-step", state.global_step + 1):
                import torch

                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by a test)")

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == max(1, state.max_steps // 2):
                faults.fault_point("mid")
            if state.global_step >= state.max_steps:
                control.should_log, control.should_save = True, False

        def on_save(self, args, state, control, **kwargs):
            if _fault("kill-after-checkpoint", state.global_step):
                import signal

                os.kill(os.getpid(), signal.SIGKILL)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            step = state.global_step
            if "loss" in logs:
                now, tokens = time.perf_counter(), counter.value
                speed = (tokens - self.window_tokens) / max(now - self.window_start, 1e-9)
                self.window_start, self.window_tokens = now, tokens
                eta = (now - self.started) / max(step - self.first_step, 1) * (steps - step)
                self.history.append((step, logs["loss"]))
                print(f"[train] step {step}/{steps} loss {logs['loss']:.4f} lr {logs['learning_rate']:.2e} "
                      f"{speed:.0f} tok/s eta {eta:.0f}s", flush=True)
                if on_log:
                    on_log(step, {"loss": logs["loss"], "learning_rate": logs["learning_rate"],
                                  "grad_norm": float(logs.get("grad_norm", 0.0)), "tokens_per_second": speed,
                                  "loss_tokens": tokens})
            if "eval_loss" in logs:
                perplexity = math.exp(min(logs["eval_loss"], 50))
                self.evals.append((step, logs["eval_loss"]))
                print(f"[train] step {step}/{steps} eval loss {logs['eval_loss']:.4f} "
                      f"(perplexity {perplexity:.2f})", flush=True)
                if on_log:
                    on_log(step, {"eval_loss": logs["eval_loss"], "eval_perplexity": perplexity})

    return Progress()


def _best_adapter_callback():
    """Keeps a copy of the adapter weights with the lowest eval loss (for early stopping), in memory:
    LoRA weights are megabytes."""
    from transformers import TrainerCallback

    class BestAdapter(TrainerCallback):
        best: tuple[float, int, dict] | None = None

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            from peft import get_peft_model_state_dict

            loss = (metrics or {}).get("eval_loss")
            if loss is not None and (self.best is None or loss < self.best[0]):
                weights = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
                self.best = (loss, state.global_step, weights)

    return BestAdapter()


@contextmanager
def _out_of_memory_advice(estimate_gb: float | None, fixes: list[str]):
    """Turn an out-of-memory error during training into a message that says what to change."""
    import torch

    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        text = str(exc)
        if not isinstance(exc, (torch.OutOfMemoryError, MemoryError)) and \
                "out of memory" not in text.lower() and "can't allocate memory" not in text:
            raise
        estimated = f" (estimated peak {estimate_gb:.1f} GB)" if estimate_gb else ""
        raise MemoryError(
            f"training ran out of memory{estimated}: {text.splitlines()[0] if text else type(exc).__name__}. "
            + (f"Use {' or '.join(fixes)}, or " if fixes else "Use a smaller batch, sequence length or rank, or ")
            + "set train.autofit: true; `lorapipe plan --device-memory-gb <less>` shows what fits") from exc


def train_lora(
    dataset_dir: str | Path = paths.DATASET,
    base_dir: str | Path = paths.BASE_MODEL,
    out_dir: str | Path = paths.ADAPTER,
    *,
    rank: int = 16,
    alpha: float = 32,
    dropout: float = 0.0,
    target_modules: str | list[str] = "auto",
    epochs: float = 1.0,
    max_steps: int = -1,
    lr: float = 2e-4,
    batch_size: int = 4,
    grad_accum: int = 1,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    log_every: int = 5,
    eval_steps: int = 0,
    early_stopping_patience: int = 0,
    packing: bool = True,
    torch_compile: bool = False,
    precision: str = "auto",
    load_in_4bit: str | bool = "auto",
    quant_type: str = "nf4",
    double_quant: bool = True,
    seed: int = 42,
    preset: str = "none",
    autofit: bool = False,
    save_steps: int = 0,
    save_total_limit: int = 2,
    resume: str = "auto",
    task: str | None = None,
    checkpoint_dir: str | Path | None = None,
    metrics_path: str | Path | None = paths.TRAIN_METRICS,
    loss_path: str | Path | None = paths.TRAIN_LOSS,
    plot_path: str | Path | None = None,
    run_info: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
    trainer_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a LoRA adapter on ``train.jsonl`` (one task's rows with `task`) and save it
    (safetensors) with the tokenizer.

    Every `eval_steps` steps the validation rows are scored (eval loss, perplexity); with
    `early_stopping_patience` N, training stops after N evaluations without improvement and the
    adapter with the lowest eval loss is kept. Every `save_steps` steps a checkpoint goes to the
    cache (see lorapipe.checkpoints); `resume` ``auto`` continues from the latest checkpoint of the
    same data and params, ``never`` starts over, a path continues from that checkpoint.
    Run under `accelerate launch`, the trainer trains data-parallel and the main process writes.
    `torch_compile` compiles the model (torch.compile, inductor): faster steps after a first step
    that holds the compiling (1–2 minutes for a 135 M model on 2 CPU cores). `trainer_args` are further SFTConfig
    (TrainingArguments) settings, over lorapipe's own; bench/bench_train.py compares such settings.
    """
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from lorapipe.plan import preset as preset_settings

    dataset_dir = Path(dataset_dir)
    max_seq_len = int(read_json(dataset_dir / paths.DATASET_STATS.name)["max_seq_len"])
    if early_stopping_patience and not eval_steps:
        raise ValueError("train.early_stopping_patience needs train.eval_steps > 0 (evaluations to compare)")
    random.seed(seed)
    torch.manual_seed(seed)
    device = resolve_device()
    precision = resolve_precision(precision, device)
    chosen = preset_settings(preset)
    four_bit = resolve_load_in_4bit(chosen.get("load_in_4bit", "auto") if load_in_4bit == "auto" else load_in_4bit,
                                    device)
    checkpointing = chosen.get("gradient_checkpointing", device == "cuda" and four_bit)
    if chosen:
        autofit = True
        print(f"[train] train.preset {preset}: " + ", ".join(f"{k} {v}" for k, v in chosen.items()
                                                             if v is not None) + ", autofit", flush=True)
    tokenizer = load_tokenizer(base_dir)
    batch_size, grad_accum, fit = check_fit(base_dir, device, precision, four_bit, max_seq_len, batch_size,
                                            grad_accum, rank, target_modules, autofit,
                                            chosen.get("device_memory_gb"), checkpointing)

    config = AutoConfig.from_pretrained(base_dir)
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(
        base_dir,
        dtype=torch.float32,
        use_safetensors=True,
        quantization_config=quantization_config(four_bit, quant_type, double_quant, precision),
        device_map={"": int(os.environ.get("LOCAL_RANK", 0))} if device == "cuda" else None,
    )
    if four_bit:
        # No forward pass may run on the 4-bit model before training: inference repacks its weights
        # and later gradients are silently wrong (measured, see DESIGN.md).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif precision == "bf16":
        hold_frozen_weights_in_bf16(model)
    available = default_target_modules(model)
    targets = available if target_modules == "auto" else list(target_modules)
    unknown = [t for t in targets if t not in available]
    if unknown:
        raise ValueError(f"lora.target_modules {unknown} are not linear layers of {type(model).__name__}; "
                         f"it has {available} (or use auto)")
    context = getattr(model.config, "max_position_embeddings", None)
    if context and max_seq_len > context:
        raise ValueError(f"dataset.max_seq_len {max_seq_len} is beyond the model's context of {context} tokens: "
                         f"lower it to {context} or less and rebuild the dataset")
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                                             task_type="SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM"))
    if precision == "bf16" and not four_bit:
        # The adapter is float32 and peft casts each input to it, which autocast casts straight back to
        # bfloat16 for the product: two copies per adapted projection and pass, for nothing.
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    train_rows = select_task(read_jsonl(dataset_dir / paths.TRAIN_ROWS.name), task, "train")
    val_rows = select_task(read_jsonl(dataset_dir / paths.VAL_ROWS.name), task, "validation")
    packing = packing and not seq2seq and any("messages" not in row for row in train_rows)  # text rows only
    train_ids = training_rows(train_rows, tokenizer, max_seq_len, packing, seq2seq)
    val_ids = tokenize_rows(val_rows, tokenizer, max_seq_len, seq2seq)
    if not train_ids or not val_ids:
        raise ValueError(f"{dataset_dir} has {len(train_ids)} training and {len(val_ids)} validation rows"
                         f"{f' of task {task!r}' if task else ''}: both are needed; rebuild it with the dataset stage")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if len(train_ids) < batch_size * world:
        print(f"[train] only {len(train_ids)} training rows, fewer than one batch of {batch_size * world}: "
              f"every step trains on all of them", flush=True)
    batches_per_epoch = math.ceil(len(train_ids) / (batch_size * world))
    steps = max_steps if max_steps > 0 else max(1, math.ceil(epochs * batches_per_epoch / grad_accum))

    run_inputs = {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": targets, "steps": steps, "lr": lr,
                  "batch_size": batch_size, "grad_accum": grad_accum, "warmup_steps": warmup_steps,
                  "weight_decay": weight_decay, "log_every": log_every, "eval_steps": eval_steps,
                  "early_stopping_patience": early_stopping_patience, "packing": packing, "precision": precision,
                  "four_bit": four_bit, "quant_type": quant_type, "double_quant": double_quant, "seed": seed,
                  "max_seq_len": max_seq_len, "task": task, "world": world, "checkpointing": checkpointing}
    inputs = [dataset_dir / paths.TRAIN_ROWS.name, dataset_dir / paths.VAL_ROWS.name,
              *Path(base_dir).glob("*.json"), *Path(base_dir).glob("*.safetensors")]
    checkpoints = Checkpoints(fingerprint(run_inputs, inputs), checkpoint_dir)
    start = _resume_point(resume, checkpoints)

    counter = LossTokens(model, seq2seq)
    progress = _progress_callback(steps, on_log, counter)
    best = _best_adapter_callback()
    settings = dict(output_dir=str(checkpoints.folder), max_steps=steps, per_device_train_batch_size=batch_size,
                    per_device_eval_batch_size=batch_size, gradient_accumulation_steps=grad_accum,
                    learning_rate=lr, lr_scheduler_type="linear", warmup_steps=warmup_steps,
                    weight_decay=weight_decay, max_grad_norm=1.0, logging_steps=log_every,
                    save_strategy="steps" if save_steps else "no", save_steps=save_steps or 1,
                    save_total_limit=save_total_limit, eval_strategy="steps" if eval_steps else "no",
                    eval_steps=eval_steps or None, metric_for_best_model="eval_loss", greater_is_better=False,
                    bf16=precision == "bf16", use_cpu=device == "cpu", seed=seed, data_seed=seed,
                    optim="paged_adamw_8bit" if device == "cuda" and four_bit else "adamw_torch_fused",
                    activation_checkpointing=checkpointing, torch_compile=torch_compile,
                    activation_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
                    report_to="none", disable_tqdm=True, include_num_input_tokens_seen="non_padding",
                    dataloader_num_workers=0, ddp_find_unused_parameters=False, save_only_model=False)
    settings.update(trainer_args or {})
    trainer = _trainer(model, tokenizer, seq2seq, train_ids, val_ids, [progress, best], early_stopping_patience,
                       **settings)
    main = trainer.is_world_process_zero()
    if main:
        if start is not None:
            print(f"[train] resuming from {start}", flush=True)
        print(f"[train] {device}{f' × {world} processes' if world > 1 else ''}, {precision}, "
              f"{'QLoRA 4-bit' if four_bit else 'LoRA'} r={rank} on {targets}; "
              f"{trainable / 1e6:.2f} M of {total / 1e6:.1f} M parameters trainable; {len(train_ids)} "
              f"{'rows and packed blocks' if packing else 'rows'}, {steps} steps × {batch_size} × "
              f"{grad_accum} at ≤{max_seq_len} tokens", flush=True)
    started = time.perf_counter()
    with _out_of_memory_advice(fit["estimate_gb"], fit["fixes"]):
        output = trainer.train(resume_from_checkpoint=str(start) if start else None)
    seconds = time.perf_counter() - started
    if not main:
        return {}
    stopped_early = trainer.state.global_step < steps
    if early_stopping_patience and best.best is not None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, best.best[2])
        print(f"[train] keeping the adapter of step {best.best[1]} (lowest eval loss {best.best[0]:.4f})"
              + (f"; stopped early at step {trainer.state.global_step}" if stopped_early else ""), flush=True)

    model.eval()
    if seq2seq:
        val_loss = trainer.evaluate()["eval_loss"]
    else:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16"):
            nll, count = sequence_nll(model, val_ids, model.device.type)
        val_loss = nll / max(count, 1)
    tokens = counter.value * world  # each process counts its own batches (equal shares under DDP)
    metrics = {
        "train_loss": progress.history[-1][1] if progress.history else float(output.training_loss),
        "val_loss": val_loss,
        "val_perplexity": math.exp(min(val_loss, 50)),
        "steps": trainer.state.global_step,
        "tokens": tokens,
        "input_tokens": int(trainer.state.num_input_tokens_seen),
        "seconds": round(seconds, 2),
        "tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
        "trainable_parameters": trainable,
        "device": device,
        "precision": precision,
        "load_in_4bit": four_bit,
        "target_modules": targets,
        "seq2seq": seq2seq,
    }
    # What params left open (auto, a preset, autofit) came to; recorded with the adapter and in MLflow.
    resolved = {**{k: metrics[k] for k in ("device", "precision", "load_in_4bit", "target_modules", "seq2seq")},
                "batch_size": batch_size, "grad_accum": grad_accum, "gradient_checkpointing": checkpointing,
                "processes": world}
    print(f"[train] done in {seconds:.0f}s: train loss {metrics['train_loss']:.4f}, "
          f"val loss {val_loss:.4f} (perplexity {metrics['val_perplexity']:.2f})", flush=True)

    with atomic_outputs() as place:  # the adapter and its reports are replaced together
        tmp = place(out_dir, folder=True)
        model.save_pretrained(tmp, safe_serialization=True)
        copy_tokenizer(base_dir, tmp)
        write_json(tmp / paths.RUN_INFO_NAME, run_info or {})
        write_provenance(tmp, {**(provenance or {}), "resolved": resolved})
        if metrics_path:
            write_json(place(metrics_path), {k: v for k, v in metrics.items() if not isinstance(v, (str, list))})
        if loss_path:
            write_text_atomic(place(loss_path),
                              "step\tloss\n" + "".join(f"{s}\t{v:.6f}\n" for s, v in progress.history))
        if plot_path:
            plot_losses(progress.history, progress.evals, place(plot_path))
    checkpoints.clear()  # the adapter is saved: the crash-recovery checkpoints of this run are done
    return {**metrics, "resolved": resolved, "history": progress.history, "eval_history": progress.evals}


def plot_losses(history: list[tuple[int, float]], evals: list[tuple[int, float]], path: str | Path) -> Path:
    """A PNG chart of the training loss and the validation (eval) loss per step."""
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
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp)
    plt.close(figure)
    tmp.replace(path)
    return path


def _trainer(model, tokenizer, seq2seq: bool, train_ids, val_ids, callbacks, early_stopping_patience: int, **args):
    """TRL's SFTTrainer on rows tokenized with their labels; transformers' Trainer for encoder-decoders."""
    import datasets
    from transformers import EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback

    datasets.disable_progress_bars()  # lorapipe prints its own progress lines
    if early_stopping_patience:
        callbacks = [*callbacks, EarlyStoppingCallback(early_stopping_patience)]
    if seq2seq:
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        trainer = Trainer(model=model, args=TrainingArguments(**args), train_dataset=_dataset(train_ids),
                          eval_dataset=_dataset(val_ids), processing_class=tokenizer, callbacks=callbacks,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100))
    else:
        from trl import SFTConfig

        config = SFTConfig(**args, max_length=max(len(ids) for ids, _ in train_ids + val_ids), packing=False)
        trainer = _sft_trainer_class()(model=model, args=config, train_dataset=_dataset(train_ids),
                                       eval_dataset=_dataset(val_ids), processing_class=tokenizer, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    return trainer


def _sft_trainer_class():
    """SFTTrainer, except that on the CPU the loss comes from the model's own forward pass.

    TRL's fused LM head (tiled log-probabilities, with entropy and token accuracy for its metrics)
    saves the logits' memory on GPUs, but on the CPU it took 8.4 s of every 4 × 512-token step of the
    bundled model (torch profiler, 3 steps); the model's own cross-entropy takes 0.6 s. The loss is
    the same: the mean negative log-likelihood of the labels."""
    from transformers import Trainer
    from trl import SFTTrainer

    class LorapipeSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.args.device.type != "cpu":
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return LorapipeSFTTrainer


def check_fit(base_dir, device: str, precision: str, four_bit: bool, max_seq_len: int, batch_size: int,
              grad_accum: int, rank: int, target_modules, autofit: bool, budget_gb: float | None = None,
              gradient_checkpointing: bool | None = None) -> tuple[int, int, dict]:
    """Estimate peak memory before loading anything; refuse with the fix, or autofit the batch.

    Returns the batch size and accumulation to train with, and the estimate with the changes that
    would lower it (for the message if training runs out of memory after all)."""
    from lorapipe.plan import autofit as fit_batch
    from lorapipe.plan import available_memory_gb, estimate_memory_gb, load_facts, suggestions, training_settings

    try:
        facts = load_facts(str(base_dir))
    except ValueError as exc:
        print(f"[train] memory check skipped: {exc}", flush=True)
        return batch_size, grad_accum, {"estimate_gb": None, "fixes": []}
    settings = training_settings(max_seq_len, rank, target_modules, four_bit, precision, device,
                                 gradient_checkpointing)
    budget = budget_gb or available_memory_gb(device)
    estimate = estimate_memory_gb(facts, batch_size=batch_size, **settings)
    print(f"[train] estimated peak memory {estimate['total']:.1f} GB of {budget:.1f} GB "
          f"{'budgeted by the preset' if budget_gb else 'available'} on {device}", flush=True)
    if estimate["total"] <= budget:
        # Should it run out of memory all the same, the fix is what fits in a budget under the estimate.
        fixes = suggestions(facts, estimate["total"] * 0.75, batch_size=batch_size, **settings)
        return batch_size, grad_accum, {"estimate_gb": estimate["total"], "fixes": fixes}
    if autofit:
        fitted = fit_batch(facts, budget, batch_size, grad_accum, **settings)
        if fitted:
            print(f"[train] train.autofit: batch_size {batch_size} → {fitted[0]}, grad_accum {grad_accum} → "
                  f"{fitted[1]} (same effective batch)", flush=True)
            total = estimate_memory_gb(facts, batch_size=fitted[0], **settings)["total"]
            fixes = suggestions(facts, total * 0.75, batch_size=fitted[0], **settings)
            return fitted[0], fitted[1], {"estimate_gb": total, "fixes": fixes}
    fixes = suggestions(facts, budget, batch_size=batch_size, **settings)
    raise MemoryError(
        f"training needs about {estimate['total']:.1f} GB but {budget:.1f} GB are available on {device}: "
        + (f"use {' or '.join(fixes)}" if fixes else "use a smaller model or more memory")
        + (" (or set train.autofit: true)" if not autofit else "") + "; `lorapipe plan` shows the estimate")


def _resume_point(resume: str, checkpoints: Checkpoints) -> Path | None:
    if resume == "never":
        return None
    if resume != "auto":
        path = Path(resume)
        if not Checkpoints.complete(path):
            raise FileNotFoundError(f"train.resume={resume}: not a complete training checkpoint folder "
                                    f"(no trainer_state.json)")
        return path
    others = checkpoints.others()
    if others:
        print(f"[train] ignoring {len(others)} checkpoint folder(s) made with other data or params "
              f"in {checkpoints.root}", flush=True)
    return checkpoints.latest()
