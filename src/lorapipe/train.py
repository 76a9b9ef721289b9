"""LoRA / QLoRA fine-tuning (the train stage).

    from lorapipe import train_lora
    result = train_lora("data/dataset", "models/base", "models/lora_output", rank=8, max_steps=20)

Device policy: CUDA when present, else CPU. On CUDA the default is QLoRA (bitsandbytes nf4 with
double quantization, paged 8-bit AdamW, gradient checkpointing); on the CPU plain LoRA.
`load_in_4bit=True` forces 4-bit on either. The sequence length is read from the dataset's
``stats.json``, never from params.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorapipe import paths
from lorapipe.checkpoints import Checkpoints, fingerprint
from lorapipe.io import atomic_dir, read_json, read_jsonl, write_json, write_provenance, write_text_atomic
from lorapipe.models import copy_tokenizer, load_tokenizer, sequence_nll
from lorapipe.rows import IGNORE, loss_tokens, tokenize_row, truncate


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


def _batches(rows: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int, rng: random.Random):
    """Endless shuffled batches of (input_ids, attention_mask, labels); padding carries no loss."""
    import torch

    while True:
        order = list(range(len(rows)))
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            chunk = [rows[j] for j in order[i : i + batch_size]]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for k, (seq, seq_labels) in enumerate(chunk):
                ids[k, : len(seq)] = torch.tensor(seq)
                labels[k, : len(seq)] = torch.tensor(seq_labels)
                mask[k, : len(seq)] = 1
            yield ids, mask, labels


def tokenize_rows(rows: list[dict], tokenizer, max_seq_len: int) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) of each row, cut to `max_seq_len`; rows left without loss tokens are an error."""
    out = []
    for number, row in enumerate(rows, 1):
        ids, labels = truncate(*tokenize_row(row, tokenizer), max_seq_len)
        if not loss_tokens(labels[1:]):
            raise ValueError(f"row {number} ({row.get('source')}) has no token that carries loss after cutting "
                             f"to {max_seq_len} tokens: rebuild the dataset (dataset.on_overflow)")
        out.append((ids, labels))
    return out


def train_lora(
    dataset_dir: str | Path = paths.DATASET,
    base_dir: str | Path = paths.BASE_MODEL,
    out_dir: str | Path = paths.ADAPTER,
    *,
    rank: int = 16,
    alpha: float = 32,
    dropout: float = 0.05,
    target_modules: str | list[str] = "auto",
    epochs: float = 1.0,
    max_steps: int = -1,
    lr: float = 2e-4,
    batch_size: int = 4,
    grad_accum: int = 1,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    log_every: int = 5,
    precision: str = "auto",
    load_in_4bit: str | bool = "auto",
    quant_type: str = "nf4",
    double_quant: bool = True,
    seed: int = 42,
    autofit: bool = False,
    save_steps: int = 0,
    save_total_limit: int = 2,
    resume: str = "auto",
    checkpoint_dir: str | Path | None = None,
    metrics_path: str | Path | None = paths.TRAIN_METRICS,
    loss_path: str | Path | None = paths.TRAIN_LOSS,
    run_info: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
    on_log: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train a LoRA adapter on ``train.jsonl`` and save it (safetensors) with the tokenizer.

    Every `save_steps` steps a checkpoint goes to the cache (see lorapipe.checkpoints); `resume`
    ``auto`` continues from the latest checkpoint of the same data and params, ``never`` starts
    over, a path continues from that checkpoint.
    """
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup

    dataset_dir = Path(dataset_dir)
    max_seq_len = int(read_json(dataset_dir / paths.DATASET_STATS.name)["max_seq_len"])
    random.seed(seed)
    torch.manual_seed(seed)
    device = resolve_device()
    precision = resolve_precision(precision, device)
    four_bit = resolve_load_in_4bit(load_in_4bit, device)
    tokenizer = load_tokenizer(base_dir)
    batch_size, grad_accum = check_fit(base_dir, device, precision, four_bit, max_seq_len, batch_size, grad_accum,
                                       rank, target_modules, autofit)

    model = AutoModelForCausalLM.from_pretrained(
        base_dir,
        dtype=torch.float32,
        use_safetensors=True,
        quantization_config=quantization_config(four_bit, quant_type, double_quant, precision),
        device_map={"": 0} if device == "cuda" else None,
    )
    if four_bit:
        # No forward pass may run on the 4-bit model before training: inference repacks its weights
        # and later gradients are silently wrong (measured, see DESIGN.md).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=device == "cuda")
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
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                             target_modules=targets, task_type="CAUSAL_LM"))
    model.to(device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    train_ids = tokenize_rows(read_jsonl(dataset_dir / paths.TRAIN_ROWS.name), tokenizer, max_seq_len)
    val_ids = tokenize_rows(read_jsonl(dataset_dir / paths.VAL_ROWS.name), tokenizer, max_seq_len)
    batches_per_epoch = math.ceil(len(train_ids) / batch_size)
    steps = max_steps if max_steps > 0 else max(1, math.ceil(epochs * batches_per_epoch / grad_accum))
    params = [p for p in model.parameters() if p.requires_grad]
    if device == "cuda" and four_bit:
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit(params, lr=lr, weight_decay=weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, warmup_steps, steps)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision == "bf16")
    batches = _batches(train_ids, batch_size, tokenizer.pad_token_id, random.Random(seed))

    run_inputs = {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": targets, "steps": steps, "lr": lr,
                  "batch_size": batch_size, "grad_accum": grad_accum, "warmup_steps": warmup_steps,
                  "weight_decay": weight_decay, "log_every": log_every, "precision": precision, "four_bit": four_bit,
                  "quant_type": quant_type, "double_quant": double_quant, "seed": seed, "max_seq_len": max_seq_len}
    inputs = [dataset_dir / paths.TRAIN_ROWS.name, dataset_dir / paths.VAL_ROWS.name,
              *Path(base_dir).glob("*.json"), *Path(base_dir).glob("*.safetensors")]
    checkpoints = Checkpoints(fingerprint(run_inputs, inputs), save_total_limit, checkpoint_dir)
    loop = {"history": [], "tokens_seen": 0, "window_loss": 0.0, "window_tokens": 0}
    start = _resume_point(resume, checkpoints)
    if start is not None:
        loop = Checkpoints.load(start, model, optimizer, schedule)
        for _ in range(loop["step"] * grad_accum):  # replay the data order up to the checkpoint
            next(batches)
        print(f"[train] resuming from {start} (step {loop['step']} of {steps})", flush=True)
    first_step = loop.get("step", 0) + 1

    print(f"[train] {device}, {precision}, {'QLoRA 4-bit' if four_bit else 'LoRA'} r={rank} on {targets}; "
          f"{trainable / 1e6:.2f} M of {total / 1e6:.1f} M parameters trainable; {len(train_ids)} rows, "
          f"{steps} steps × {batch_size} × {grad_accum} at ≤{max_seq_len} tokens", flush=True)
    history: list[tuple[int, float]] = [tuple(h) for h in loop["history"]]
    window_loss, window_tokens, tokens_seen = loop["window_loss"], loop["window_tokens"], loop["tokens_seen"]
    started = window_start = time.perf_counter()
    model.train()
    for step in range(first_step, steps + 1):
        for _ in range(grad_accum):
            ids, mask, labels = (t.to(device) for t in next(batches))
            with autocast:
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            (loss / grad_accum).backward()
            window_loss += loss.item() / grad_accum
            window_tokens += int((labels[:, 1:] != IGNORE).sum())  # tokens that carry loss
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % log_every == 0 or step == steps:
            done = step % log_every or log_every
            mean = window_loss / done
            elapsed = time.perf_counter() - window_start
            tokens_seen += window_tokens
            speed = window_tokens / max(elapsed, 1e-9)
            eta = (time.perf_counter() - started) / (step - first_step + 1) * (steps - step)
            history.append((step, mean))
            print(f"[train] step {step}/{steps} loss {mean:.4f} lr {schedule.get_last_lr()[0]:.2e} "
                  f"{speed:.0f} tok/s eta {eta:.0f}s", flush=True)
            if on_log:
                on_log(step, {"loss": mean, "learning_rate": schedule.get_last_lr()[0], "grad_norm": grad_norm,
                              "tokens_per_second": speed})
            window_loss, window_tokens, window_start = 0.0, 0, time.perf_counter()
        if save_steps and step % save_steps == 0 and step < steps:
            checkpoints.save(step, model, optimizer, schedule, {"history": history, "tokens_seen": tokens_seen,
                                                                "window_loss": window_loss,
                                                                "window_tokens": window_tokens})
    seconds = time.perf_counter() - started

    model.eval()
    with autocast:
        nll, count = sequence_nll(model, val_ids, device)
    val_loss = nll / max(count, 1)
    metrics = {
        "train_loss": history[-1][1],
        "val_loss": val_loss,
        "val_perplexity": math.exp(min(val_loss, 50)),
        "steps": steps,
        "tokens": tokens_seen,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(tokens_seen / max(seconds, 1e-9), 1),
        "trainable_parameters": trainable,
        "device": device,
        "precision": precision,
        "load_in_4bit": four_bit,
        "target_modules": targets,
    }
    print(f"[train] done in {seconds:.0f}s: train loss {metrics['train_loss']:.4f}, "
          f"val loss {val_loss:.4f} (perplexity {metrics['val_perplexity']:.2f})", flush=True)

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        copy_tokenizer(base_dir, tmp)
        write_json(tmp / paths.RUN_INFO_NAME, run_info or {})
        write_provenance(tmp, {**(provenance or {}), "resolved": {k: metrics[k] for k in
                                                                   ("device", "precision", "load_in_4bit", "target_modules")}})
    if metrics_path:
        write_json(metrics_path, {k: v for k, v in metrics.items() if not isinstance(v, (str, list))})
    if loss_path:
        write_text_atomic(loss_path, "step\tloss\n" + "".join(f"{s}\t{v:.6f}\n" for s, v in history))
    checkpoints.clear()  # the adapter is saved: the crash-recovery checkpoints of this run are done
    return {**metrics, "history": history}


def check_fit(base_dir, device: str, precision: str, four_bit: bool, max_seq_len: int, batch_size: int,
              grad_accum: int, rank: int, target_modules, autofit: bool) -> tuple[int, int]:
    """Estimate peak memory before loading anything; refuse with the fix, or autofit the batch."""
    from lorapipe.plan import autofit as fit_batch
    from lorapipe.plan import available_memory_gb, estimate_memory_gb, load_facts, suggestions, training_settings

    try:
        facts = load_facts(str(base_dir))
    except ValueError as exc:
        print(f"[train] memory check skipped: {exc}", flush=True)
        return batch_size, grad_accum
    settings = training_settings(max_seq_len, rank, target_modules, four_bit, precision, device)
    budget = available_memory_gb(device)
    estimate = estimate_memory_gb(facts, batch_size=batch_size, **settings)
    print(f"[train] estimated peak memory {estimate['total']:.1f} GB of {budget:.1f} GB available on {device}",
          flush=True)
    if estimate["total"] <= budget:
        return batch_size, grad_accum
    if autofit:
        fitted = fit_batch(facts, budget, batch_size, grad_accum, **settings)
        if fitted:
            print(f"[train] train.autofit: batch_size {batch_size} → {fitted[0]}, grad_accum {grad_accum} → "
                  f"{fitted[1]} (same effective batch)", flush=True)
            return fitted
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
        if not (path / "loop.json").is_file():
            raise FileNotFoundError(f"train.resume={resume}: not a lorapipe checkpoint folder (no loop.json)")
        return path
    others = checkpoints.others()
    if others:
        print(f"[train] ignoring {len(others)} checkpoint folder(s) made with other data or params "
              f"in {checkpoints.root}", flush=True)
    return checkpoints.latest()
