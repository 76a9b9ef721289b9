"""Will this training fit, and how long will it take? Estimated from the model's config alone.

    lorapipe plan --model mistralai/Mistral-7B-Instruct-v0.2 --max-seq-len 1024 --load-in-4bit --device-memory-gb 8

Memory is in GiB (2**30 bytes), as CUDA reports a device's memory.

Peak memory = runtime + weights + adapter (weights, gradients, optimizer state) + activations kept
for the backward pass + logits. The activation and logit coefficients were fitted to peak resident
memory measured on this project's CPU machine (bench/MEASURED.md), and the CUDA runtime, activation
share and speed to peaks and speeds measured on one H200 (bench/gpu_check.py, bench/BENCHMARKS.md:
an 8B shape in QLoRA and a 1B shape in bf16 LoRA); they are estimates, not promises.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lorapipe import paths
from lorapipe.hardware import (
    GiB,
    available_memory_gib,
    cuda_available,
    peak_matmul_flops,
    resolve_device,
    resolve_load_in_4bit,
    resolve_precision,
)
from lorapipe.models import BUNDLED
from lorapipe.textfiles import read_text

FACTS = Path(__file__).with_name("model_facts")
_BUNDLED_FACTS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_ALIASES = {
    "meta-llama/Llama-3.1-8B": "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen/Qwen2.5-7B": "Qwen/Qwen2.5-7B-Instruct",
}

# python, torch, transformers, TRL and its trainer before the model, GiB: fitted on this CPU; on CUDA,
# the CUDA context (0.58 GiB) + what torch's caching allocator reserves beyond its peak allocation
# (0.31-0.44 GiB), measured on an H200 with torch 2.11 (bench/gpu_check.py, bench/BENCHMARKS.md)
RUNTIME_GIB = {"cpu": 0.52, "cuda": 0.96}
ACT_ELEMENTS = 9.0  # float32 elements kept per token, layer and (hidden + intermediate) width (fitted)
# Activation memory on each device relative to ACT_ELEMENTS (fitted on the CPU): on CUDA 0.41 for a
# Llama-3.1-8B shape in QLoRA with gradient checkpointing and 0.39 for a Llama-3.2-1B shape in bf16
# LoRA without (bench/gpu_check.py on an H200: SDPA's fused attention kernels keep less than the CPU's)
ACT_SHARE = {"cpu": 1.0, "cuda": 0.40}
# Float32 logits' worth kept per token: on the CPU the model's own cross-entropy (logits, their log-
# softmax, its gradient; fitted); on CUDA TRL's fused LM head, which keeps about one (lorapipe.train).
LOGIT_COPIES = {"cpu": 3, "cuda": 1}
BF16_ACT_SHARE = 0.67  # activation memory under bf16 autocast relative to float32 (fitted)
# Achieved model FLOP/s ÷ peak_matmul_flops (a 1024² product, bf16: ~380 GFLOP/s here), LoRA training of the
# bundled model on the CPU: 211 tokens/s × 0.60 GFLOP (bench/bench_train.py, 2026-11-22)
CPU_EFFICIENCY = 0.33
# On CUDA, ÷ peak_matmul_flops (an 8192² bf16 product: 784 TFLOP/s on an H200), by the model's hidden
# size: 0.117 for a Llama-3.2-1B shape (bf16 LoRA, 2048 tokens per step) and 0.19 for a Llama-3.1-8B
# shape (QLoRA, gradient checkpointing), measured with bench/gpu_check.py on an H200 (2026-11-30).
# Small models leave a large GPU idle between kernels; between the two, interpolated in log(hidden),
# outside them the nearer value (an assumption: no other size was measured).
GPU_EFFICIENCY = ((2048, 0.117), (4096, 0.19))
# What an 8192² bf16 product reaches of a card's datasheet dense bf16 peak: 788-800 of 989 TFLOP/s on an
# H200 (bench/gpu_check.py; the datasheet's H100/H200 SXM figure). A peak given to `lorapipe plan
# --peak-tflops` (a datasheet figure) is scaled by it before the efficiency applies.
DATASHEET_REACHED = 0.80


@dataclass(frozen=True)
class Facts:
    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool
    max_position_embeddings: int

    @property
    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear projection of one decoder layer."""
        h, q, kv, i = (
            self.hidden_size,
            self.num_attention_heads * self.head_dim,
            self.num_key_value_heads * self.head_dim,
            self.intermediate_size,
        )
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def embedding_parameters(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def parameters(self) -> int:
        per_layer = sum(a * b for a, b in self.projections.values()) + 2 * self.hidden_size
        return self.num_hidden_layers * per_layer + self.embedding_parameters + self.hidden_size


def load_facts(model: str) -> Facts:
    """Facts of a bundled model, a shipped Hub model, or a local folder's config.json."""
    if Path(model, "config.json").is_file():
        config = json.loads(read_text(Path(model, "config.json")))
        config = config.get("text_config", config)
    else:
        hub_id = _ALIASES.get(model, _BUNDLED_FACTS.get(model, model))
        path = FACTS / f"{hub_id.replace('/', '__')}.json"
        if not path.is_file():
            known = sorted([*BUNDLED, *(p.stem.replace("__", "/") for p in FACTS.glob("*.json"))])
            raise ValueError(f"no facts for {model!r} offline: give a local model folder, or one of {known}")
        config = json.loads(path.read_text())
    needed = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [key for key in needed if key not in config]
    if missing:
        raise ValueError(f"{model}: its config has no {', '.join(missing)}; plan knows Llama-style decoders only")
    heads = config["num_attention_heads"]
    return Facts(
        name=config.get("name", model),
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=config.get("num_key_value_heads", heads),
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        tie_word_embeddings=config.get("tie_word_embeddings", False),
        max_position_embeddings=config.get("max_position_embeddings", 2048),
    )


# `train.preset`: the hardware a run is planned for. A preset sets the memory budget the fit check
# uses (GiB: a card sold as "8 GB" has 8 GiB), 4-bit loading and gradient checkpointing, and turns
# autofit on; params set explicitly (not `auto`) win. `cpu` budgets the memory available now.
PRESETS: dict[str, dict] = {
    "cpu": {"device_memory_gib": None, "load_in_4bit": False, "gradient_checkpointing": False},
    "gpu-8gb": {"device_memory_gib": 8, "load_in_4bit": True, "gradient_checkpointing": True},
    "gpu-24gb": {"device_memory_gib": 24, "load_in_4bit": True, "gradient_checkpointing": True},
    "gpu-80gb": {"device_memory_gib": 80, "load_in_4bit": False, "gradient_checkpointing": True},
}


def preset(name: str | None) -> dict:
    """The settings of a `train.preset` (``none``: nothing is preset)."""
    if name in (None, "none"):
        return {}
    if name not in PRESETS:
        raise ValueError(f"unknown train.preset {name!r}; choose from none, {', '.join(PRESETS)}")
    return PRESETS[name]


def training_settings(
    max_seq_len: int,
    lora_rank: int,
    target_modules,
    load_in_4bit: bool,
    precision: str,
    device: str,
    gradient_checkpointing: bool | None = None,
) -> dict:
    """The estimate's arguments for how the train stage runs: 4-bit on CUDA means gradient
    checkpointing (unless a preset says otherwise) and paged 8-bit AdamW (lorapipe.train)."""
    qlora_on_gpu = load_in_4bit and device == "cuda"
    return {
        "max_seq_len": max_seq_len,
        "lora_rank": lora_rank,
        "target_modules": target_modules,
        "load_in_4bit": load_in_4bit,
        "precision": precision,
        "gradient_checkpointing": qlora_on_gpu if gradient_checkpointing is None else gradient_checkpointing,
        "device": device,
        "paged_8bit_optimizer": qlora_on_gpu,
    }


def estimate_memory_gib(
    facts: Facts,
    *,
    max_seq_len: int,
    batch_size: int,
    lora_rank: int,
    target_modules: list[str] | str = "auto",
    load_in_4bit: bool = False,
    precision: str = "fp32",
    gradient_checkpointing: bool = False,
    device: str = "cpu",
    paged_8bit_optimizer: bool = False,
) -> dict[str, float]:
    """Estimated peak memory of one training step, by part (runtime, weights, adapter, activations,
    logits) and in ``total``, in GiB; also ``lora_parameters`` and ``parameters`` (counts)."""
    targets = (
        facts.projections
        if target_modules == "auto"
        else {k: v for k, v in facts.projections.items() if k in target_modules}
    )
    lora = facts.num_hidden_layers * sum(lora_rank * (a + b) for a, b in targets.values())
    body = facts.parameters - facts.embedding_parameters
    # Weights load in float32; 4-bit nf4 with double quantization is about 0.52 byte per weight; in
    # bf16 the projections are held in bfloat16 (lorapipe.train.hold_frozen_weights_in_bf16).
    body_bytes = 0.52 if load_in_4bit else 2 if precision == "bf16" else 4
    weights = body * body_bytes + facts.embedding_parameters * 4
    adapter = lora * (4 + 4 + (2 if paged_8bit_optimizer else 8))  # weights, gradients, Adam moments
    tokens = max_seq_len * batch_size
    # SDPA attention keeps no attention-probability matrix, so activations grow linearly with tokens.
    per_layer = ACT_ELEMENTS * (facts.hidden_size + facts.intermediate_size) * 4 * ACT_SHARE[device]
    if precision == "bf16":
        per_layer *= BF16_ACT_SHARE
    layers_kept = facts.num_hidden_layers
    if gradient_checkpointing:  # only each layer's input is kept, plus one layer being recomputed
        per_layer_total = facts.num_hidden_layers * facts.hidden_size * 4 * ACT_SHARE[device] + per_layer
    else:
        per_layer_total = layers_kept * per_layer
    activations = tokens * per_layer_total
    logits = tokens * facts.vocab_size * 4 * LOGIT_COPIES[device]
    parts = {
        "runtime": RUNTIME_GIB[device] * GiB,
        "weights": weights,
        "adapter": adapter,
        "activations": activations,
        "logits": logits,
    }
    out = {k: round(v / GiB, 3) for k, v in parts.items()}
    out["total"] = round(sum(parts.values()) / GiB, 3)
    out["lora_parameters"] = lora
    out["parameters"] = facts.parameters
    return out


def training_flops_per_token(
    facts: Facts, seq_len: int, lora_parameters: int = 0, gradient_checkpointing: bool = False
) -> float:
    """Model FLOPs of one trained token, LoRA on a frozen base (the MFU numerator, defined once).

    Every weight matrix (the LM head included, the embedding lookup not) costs 2 FLOPs per token
    forward and 2 backward (the gradient through the activations; frozen weights get none): 4 × its
    parameters. The adapter's own matrices cost 6 (they also get weight gradients). Causal attention
    adds its two matrix products, QKᵀ and AV, over on average seq_len / 2 earlier positions: 2 × 2 ×
    layers × heads × head_dim × seq_len / 2 forward, twice that backward. Gradient checkpointing
    repeats the forward pass."""
    matrices = (
        facts.num_hidden_layers * sum(a * b for a, b in facts.projections.values())
        + facts.vocab_size * facts.hidden_size
    )  # the LM head; the input embedding is a lookup
    attention_forward = 2 * facts.num_hidden_layers * facts.num_attention_heads * facts.head_dim * seq_len
    forward = 2 * matrices + 2 * lora_parameters + attention_forward
    backward = 2 * matrices + 4 * lora_parameters + 2 * attention_forward
    return forward * (2 if gradient_checkpointing else 1) + backward


def training_efficiency(device: str, hidden_size: int = 4096) -> float:
    """Share of the matrix-multiply peak (peak_matmul_flops) that training reaches, 0-1: CPU_EFFICIENCY,
    measured on the bundled model (bench/bench_train.py); on CUDA GPU_EFFICIENCY at the model's hidden
    size, measured on an H200 for two sizes (bench/gpu_check.py) and interpolated in log(hidden)."""
    if device != "cuda":
        return CPU_EFFICIENCY
    (small, low), (large, high) = GPU_EFFICIENCY
    if hidden_size <= small:
        return low
    if hidden_size >= large:
        return high
    return low + (high - low) * math.log(hidden_size / small) / math.log(large / small)


def estimate_tokens_per_second(
    flops_per_token: float, device: str, peak_flops: float, hidden_size: int = 4096
) -> float:
    """Training speed in tokens/s for `flops_per_token` (training_flops_per_token) at the device's share
    of its peak FLOP/s (training_efficiency at `hidden_size`)."""
    return training_efficiency(device, hidden_size) * peak_flops / flops_per_token


# Planned tokens per process from which torch.compile (train.torch_compile: auto) wins back its first
# step: compiling with inductor's cache cold, against the tokens each later step saves. CPU: about 133 s
# of compiling, 0.68 ms saved a token (bundled model, 4 × 512 tokens a step, bf16; bench/MEASURED.md,
# issue 8); CUDA: 82-90 s, 23-19 µs saved a token (a Llama-3.2-1B shape, 4 × 512, bf16, H200;
# bench/gpu_check.py, 1,700-2,400 steps). A larger model saves more per token for a similar compiling
# time, so these are conservative for it. Measured on rows of one length (packed text): rows of many
# lengths compile again for new shapes (8 steps of the tiny model: 114 s compiled against 14 s plain),
# gradient checkpointing breaks the graph (82 s to compile against 21), and a 4-bit model was not
# measured compiled: auto compiles none of those. Nor float32 on the CPU (a CPU without native bfloat16,
# where train.precision auto is fp32): 40 steps of 4 × 512 there ran at 121 tokens/s compiled against 126
# plain after 165 s of compiling (cold cache; bench/MEASURED.md, issue 19), so it never paid back: the
# profile of a step shows inductor's fused kernels taking 3.3 s where eager's separate passes took 3.5.
COMPILE_BREAK_EVEN_TOKENS = {"cpu": 200_000, "cuda": 5_000_000}


def compile_blockers(
    load_in_4bit: bool, one_length: bool, gradient_checkpointing: bool, device: str = "cpu", precision: str = "bf16"
) -> list[str]:
    """Why `train.torch_compile: auto` would not compile whatever the run's length (none: it may): a
    4-bit model, gradient checkpointing, rows of several lengths (not `one_length`), float32 on the CPU
    (`device` "cpu" and `precision` "fp32": measured no faster compiled)."""
    return [
        *(["4-bit"] if load_in_4bit else []),
        *(["gradient checkpointing"] if gradient_checkpointing else []),
        *([] if one_length else ["rows of several lengths"]),
        *(["float32 on the CPU (compiled steps measured no faster)"] if (device, precision) == ("cpu", "fp32") else []),
    ]


def compile_pays(
    device: str,
    tokens_per_process: float,
    load_in_4bit: bool = False,
    one_length: bool = True,
    gradient_checkpointing: bool = False,
    precision: str = "bf16",
) -> bool:
    """Whether `train.torch_compile: auto` compiles: the planned training's tokens per process
    (optimizer steps × batch_size × grad_accum × mean tokens per row, from the data, not timed) reach
    COMPILE_BREAK_EVEN_TOKENS for the device type, the training rows have one length (`one_length`:
    packed text, all blocks but the last full, so steps bring no new shapes), the model is neither
    4-bit nor checkpointed, and it does not train in float32 on the CPU (`precision`, train.precision
    resolved: compile_blockers)."""
    if compile_blockers(load_in_4bit, one_length, gradient_checkpointing, device, precision):
        return False
    return tokens_per_process >= COMPILE_BREAK_EVEN_TOKENS.get(device, math.inf)


def suggestions(facts: Facts, budget_gib: float, **kwargs) -> list[str]:
    """Changes that would make the run fit: single changes first, else the first combination that does."""
    names = {
        "batch_size": "train.batch_size",
        "max_seq_len": "dataset.max_seq_len",
        "lora_rank": "lora.rank",
        "load_in_4bit": "quant.load_in_4bit",
    }
    steps = [
        ("batch_size", max(1, kwargs["batch_size"] // 2)),
        ("batch_size", 1),
        ("max_seq_len", kwargs["max_seq_len"] // 2),
        ("lora_rank", min(8, kwargs["lora_rank"])),
        ("max_seq_len", kwargs["max_seq_len"] // 4),
        ("load_in_4bit", True),
    ]
    steps = [(k, v) for k, v in steps if v != kwargs[k] and (k != "max_seq_len" or v >= 64)]
    fits = lambda change: estimate_memory_gib(facts, **{**kwargs, **change})["total"] <= budget_gib  # noqa: E731
    single = [f"{names[k]} {str(v).lower()}" for k, v in steps if fits({k: v})]
    if single:
        return list(dict.fromkeys(single))[:3]
    combined: dict = {}
    for key, value in steps:
        combined[key] = value
        if fits(combined):
            return [" and ".join(f"{names[k]} {str(v).lower()}" for k, v in combined.items())]
    return []


def fit_batch(facts: Facts, budget_gib: float, batch_size: int, grad_accum: int, **kwargs) -> tuple[int, int] | None:
    """Halve the batch and double the accumulation until it fits; the effective batch stays the same."""
    while batch_size >= 1:
        if estimate_memory_gib(facts, batch_size=batch_size, **kwargs)["total"] <= budget_gib:
            return batch_size, grad_accum
        if batch_size == 1:
            return None
        batch_size, grad_accum = math.ceil(batch_size / 2), grad_accum * 2
    return None


# train.epochs auto and train.lr auto: the run sized from its data. Measured on the Snips queries with the
# bundled model (bench/structured.jsonl, bench/BENCHMARKS.md): the best recipes passed over about 2,100
# examples (4 epochs of 531 labeled queries; 1 epoch of those and 1,574 span-substituted copies) at a peak
# learning rate of 2e-3 (3e-4 and 1e-3 scored lower); more passes did not help (5 epochs). Document text
# keeps the previous defaults (1 epoch, 3e-4). The labeled rate scales with 576 / hidden size (576: the
# bundled model's), which gives 2.8e-4 for a 7B model of hidden size 4096, near the 2e-4 the QLoRA paper
# (Dettmers et al. 2023) used for 7B-13B models: a rule with two anchors, not a measurement between them.
SIZED_EXAMPLES = 2100
SIZED_EPOCHS = (1.0, 10.0)
SIZED_LR_TEXT = 3e-4
SIZED_LR_LABELED = 2e-3
SIZED_LR_HIDDEN = 576


def sized_epochs(rows: int, labeled_only: bool) -> float:
    """train.epochs auto: 1 for data with document text; for labeled rows only, SIZED_EXAMPLES / `rows`
    training rows within SIZED_EPOCHS, to 2 decimals (531 rows: 3.95; 2,105 rows: 1.0)."""
    if not labeled_only:
        return 1.0
    low, high = SIZED_EPOCHS
    return round(min(high, max(low, SIZED_EXAMPLES / max(rows, 1))), 2)


def sized_lr(hidden_size: int | None, labeled_only: bool) -> float:
    """train.lr auto: 3e-4 for data with document text; for labeled rows only, 2e-3 × 576 / `hidden_size`
    (the model config's hidden size; None: 2e-3), at most 2e-3."""
    if not labeled_only:
        return SIZED_LR_TEXT
    return SIZED_LR_LABELED * min(1.0, SIZED_LR_HIDDEN / hidden_size) if hidden_size else SIZED_LR_LABELED


def training_steps(
    rows: int, *, batch_size: int, grad_accum: int, epochs: float, max_steps: int, processes: int = 1
) -> int:
    """Optimizer steps of a run: `max_steps` when positive, else enough for `epochs` passes over
    `rows` training rows (or packed blocks), each forward pass taking `batch_size` rows on each of
    `processes` data-parallel processes and each step `grad_accum` forward passes; at least 1."""
    if max_steps > 0:
        return max_steps
    batches_per_epoch = math.ceil(rows / (batch_size * processes))
    return max(1, math.ceil(epochs * batches_per_epoch / grad_accum))


@dataclass(frozen=True)
class Fit:
    """What the fit check decided: the batch to train with (autofit may have lowered `batch_size` and
    raised `grad_accum`), the estimated peak in GiB (None when plan does not know the model's
    architecture) and the changes that would lower it, for the message if training runs out of memory."""

    batch_size: int
    grad_accum: int
    estimate_gib: float | None = None
    fixes: list[str] = field(default_factory=list)


def check_fit(
    base_dir: str | Path,
    *,
    device: str,
    precision: str,
    load_in_4bit: bool,
    max_seq_len: int,
    batch_size: int,
    grad_accum: int,
    lora_rank: int,
    target_modules: str | list[str],
    autofit: bool,
    budget_gib: float | None = None,
    gradient_checkpointing: bool | None = None,
) -> Fit:
    """Estimate the training run's peak memory before anything is loaded, against `budget_gib` (or
    what `device` has free); autofit the batch if allowed. The model's own config.json is read.

    Raises MemoryError naming the changes that would fit when the estimate is over the budget and
    autofit is off or cannot help. A model whose config plan cannot read is not checked (printed)."""
    try:
        facts = load_facts(str(base_dir))
    except ValueError as exc:
        print(f"[train] memory check skipped: {exc}", flush=True)
        return Fit(batch_size, grad_accum)
    settings = training_settings(
        max_seq_len, lora_rank, target_modules, load_in_4bit, precision, device, gradient_checkpointing
    )
    budget = budget_gib or available_memory_gib(device)
    estimate = estimate_memory_gib(facts, batch_size=batch_size, **settings)["total"]
    print(
        f"[train] estimated peak memory {estimate:.1f} GiB of {budget:.1f} GiB "
        f"{'budgeted by the preset' if budget_gib else 'available'} on {device}",
        flush=True,
    )
    if estimate > budget and autofit:
        fitted = fit_batch(facts, budget, batch_size, grad_accum, **settings)
        if fitted:
            print(
                f"[train] train.autofit: batch_size {batch_size} → {fitted[0]}, grad_accum {grad_accum} → "
                f"{fitted[1]} (same effective batch)",
                flush=True,
            )
            batch_size, grad_accum = fitted
            estimate = estimate_memory_gib(facts, batch_size=batch_size, **settings)["total"]
    if estimate <= budget:
        # Should it run out of memory all the same, the fix is what fits in a budget under the estimate.
        return Fit(
            batch_size, grad_accum, estimate, suggestions(facts, estimate * 0.75, batch_size=batch_size, **settings)
        )
    fixes = suggestions(facts, budget, batch_size=batch_size, **settings)
    raise MemoryError(
        f"training needs about {estimate:.1f} GiB but {budget:.1f} GiB are available on {device}: "
        + (f"use {' or '.join(fixes)}" if fixes else "use a smaller model or more memory")
        + (" (or set train.autofit: true)" if not autofit else "")
        + "; `lorapipe plan` shows the estimate"
    )


@dataclass(frozen=True)
class _Target:
    """The hardware a plan is for: device, precision, 4-bit, budget (GiB; None: what is free here)."""

    device: str
    precision: str
    load_in_4bit: bool
    budget_gib: float | None
    gradient_checkpointing: bool | None


def _target(
    device: str, precision: str, load_in_4bit: bool | None, device_memory_gib: float | None, preset_name: str | None
) -> _Target:
    """A GPU preset plans for CUDA with the preset's budget unless the device and budget are given."""
    chosen = preset(preset_name)
    if device == "auto" and chosen.get("device_memory_gib"):
        device = "cuda"
    device = resolve_device() if device == "auto" else device
    if load_in_4bit is None:
        load_in_4bit = chosen.get("load_in_4bit")
    if device == "cuda" and precision == "auto" and not cuda_available():
        precision = "bf16"  # planning for a GPU that is not here: assume a current one (bf16 capable)
    budget = device_memory_gib or chosen.get("device_memory_gib")
    if not budget and device == "cuda" and not cuda_available():
        raise ValueError("no CUDA device here: give its memory with --device-memory-gb")
    return _Target(
        device,
        resolve_precision(precision, device),
        resolve_load_in_4bit("auto" if load_in_4bit is None else load_in_4bit, device),
        budget,
        chosen.get("gradient_checkpointing"),
    )


def plan_report(
    model: str,
    *,
    max_seq_len: int,
    batch_size: int,
    lora_rank: int,
    load_in_4bit: bool | None = None,
    device: str = "auto",
    precision: str = "auto",
    device_memory_gib: float | None = None,
    grad_accum: int = 1,
    steps: int = -1,
    epochs: float | str = 1.0,
    processes: int = 1,
    dataset_stats: str | Path | None = None,
    preset_name: str | None = None,
    peak_tflops: float | None = None,
    task: str | None = None,
) -> tuple[str, bool]:
    """The text `lorapipe plan` prints, and whether the run fits in `device_memory_gib` GiB (default:
    what the device has free). A GPU preset plans for CUDA with the preset's memory budget unless the
    device and budget are given. Speed is estimated from the device's matrix-multiply peak, measured
    here, or `peak_tflops` for a device that is not here; the time, from `dataset_stats` (the dataset
    stage's stats.json) with `steps` (-1: `epochs`) on `processes` data-parallel processes, over all
    tasks' training rows, or over `task`'s alone as `lorapipe train --task` trains (epochs auto sized
    from its rows). Raises ValueError for an unknown model or preset, CUDA planned here without a
    budget, a `task` without the dataset's stats.json, or one it does not hold (naming the tasks it has)."""
    target = _target(device, precision, load_in_4bit, device_memory_gib, preset_name)
    facts = load_facts(model)
    settings = training_settings(
        max_seq_len,
        lora_rank,
        "auto",
        target.load_in_4bit,
        target.precision,
        target.device,
        target.gradient_checkpointing,
    )
    estimate = estimate_memory_gib(facts, batch_size=batch_size, **settings)
    budget = target.budget_gib or available_memory_gib(target.device)
    fits = estimate["total"] <= budget
    lines = [
        f"model       {facts.name}: {facts.parameters / 1e9:.2f} B parameters, {facts.num_hidden_layers} layers, "
        f"hidden {facts.hidden_size}, vocabulary {facts.vocab_size}",
        f"training    {'QLoRA 4-bit' if target.load_in_4bit else 'LoRA'} rank {lora_rank} "
        f"({estimate['lora_parameters'] / 1e6:.1f} M trainable), {target.device}, {target.precision}, "
        f"batch {batch_size} × {max_seq_len} tokens"
        + (", gradient checkpointing" if settings["gradient_checkpointing"] else ""),
        "memory      "
        + ", ".join(f"{k} {estimate[k]:.2f}" for k in ("runtime", "weights", "adapter", "activations", "logits"))
        + " GiB",
        f"peak        {estimate['total']:.2f} GiB of {budget:.1f} GiB: {'fits' if fits else 'does NOT fit'}",
    ]
    if not fits:
        fixes = suggestions(facts, budget, batch_size=batch_size, **settings)
        lines.append(
            "fix         "
            + (" or ".join(fixes) if fixes else "a smaller model or more memory")
            + "; or train.autofit: true"
        )
    run = {
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "epochs": epochs,
        "max_steps": steps,
        "processes": processes,
    }
    lines += _speed_lines(facts, target, settings, estimate["lora_parameters"], peak_tflops, dataset_stats, run, task)
    return "\n".join(lines), fits


def _speed_lines(
    facts: Facts,
    target: _Target,
    settings: dict,
    lora_parameters: int,
    peak_tflops: float | None,
    dataset_stats: str | Path | None,
    run: dict,
    task: str | None = None,
) -> list[str]:
    """The speed line, and the time line when the dataset's stats are there (over `task`'s rows alone
    when given)."""
    # A given peak is a datasheet figure; the efficiencies are shares of what a large product reaches
    stats = json.loads(Path(dataset_stats).read_text()) if dataset_stats and Path(dataset_stats).is_file() else None
    tasks = (stats or {}).get("tasks")
    if task is not None and stats is None:
        raise ValueError(
            f"--task {task!r} needs a built dataset: no stats.json at {dataset_stats or paths.DATASET_STATS} "
            "(run `dvc repro dataset`, or give --dataset-dir)"
        )
    if task is not None and tasks is None:
        raise ValueError(f"--task {task!r}: {dataset_stats} predates per-task counts; rebuild it (`dvc repro dataset`)")
    if task is not None and task not in tasks:
        raise ValueError(f"--task {task!r}: {dataset_stats} holds the tasks {', '.join(sorted(tasks)) or '(none)'}")
    peak = peak_tflops * 1e12 * (DATASHEET_REACHED if target.device == "cuda" else 1.0) if peak_tflops else None
    if not peak and target.device == "cuda" and not cuda_available():
        return ["time        not estimated: no CUDA device on this machine to measure (give --peak-tflops)"]
    per_token = training_flops_per_token(
        facts, settings["max_seq_len"], lora_parameters, settings["gradient_checkpointing"]
    )
    peak = peak or peak_matmul_flops(target.device, target.precision)
    speed = estimate_tokens_per_second(per_token, target.device, peak, facts.hidden_size)
    lines = [
        f"speed       about {speed:,.0f} tokens/s: {per_token / 1e9:.2f} GFLOP per token at "
        f"{training_efficiency(target.device, facts.hidden_size):.0%} of {peak / 1e12:.2f} TFLOP/s "
        + (
            f"({DATASHEET_REACHED:.0%} of the {peak_tflops:g} given: what a large product reaches)"
            if peak_tflops and target.device == "cuda"
            else "(given)"
            if peak_tflops
            else "(matrix-multiply peak measured here)"
        )
    ]
    if stats is not None:
        rows = tasks[task]["train"]["rows"] if task else stats["rows"]["train"]
        mean = (tasks[task]["train"]["tokens"] if task else stats["tokens"]["train"]) / max(rows, 1)
        whose = f"the rows of task {task}" if task else "the rows of all tasks"
        sized = f", {whose}"
        if run["epochs"] == "auto":  # train.epochs auto, as the train stage sizes it
            labeled_only = all(t.get("kind") == "chat" for n, t in (tasks or {}).items() if task in (None, n))
            run = {**run, "epochs": sized_epochs(rows, labeled_only)}
            sized = f", epochs auto: {run['epochs']:g} for {whose}"
        total_steps = training_steps(rows, **run)
        tokens = total_steps * run["batch_size"] * run["grad_accum"] * run["processes"] * mean
        # one GPU per process adds its speed; CPU processes share this machine's cores (measured whole)
        seconds = tokens / (speed * (run["processes"] if target.device == "cuda" else 1))
        lines.append(
            f"time        about {seconds / 60:.1f} min for {total_steps} steps "
            f"(~{tokens / 1e3:.0f} k tokens, from {dataset_stats}{sized})"
        )
    return lines


def warn_warmup(warmup_steps: int, steps: int, prefix: str = "[train]") -> bool:
    """Print a warning (stderr) when `warmup_steps` is not below the run's `steps` optimizer steps: the
    linear warm-up then never reaches train.lr, so the run trains at a fraction of the rate asked for
    (transformers' linear schedule: lr × step / warmup_steps while warming up). True when it warned."""
    if steps <= 0 or warmup_steps < steps:
        return False
    print(
        f"{prefix} warning: train.warmup_steps ({warmup_steps}) is not below the run's {steps} optimizer "
        f"step(s): the learning rate never reaches train.lr (at most {steps / warmup_steps:.0%} of it); lower "
        f"train.warmup_steps (a tenth of the steps is usual: {max(steps // 10, 0)})",
        file=sys.stderr,
        flush=True,
    )
    return True
