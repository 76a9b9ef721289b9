"""The GPU path, checked in one call: QLoRA and LoRA training speed and peak memory on one CUDA GPU,
lorapipe's train stage against a plain transformers Trainer + peft baseline and against `lorapipe plan`.

    python bench/gpu_check.py --dry-run                  # CPU: every configuration on the meta device (CI)
    python bench/gpu_check.py --bring .gpu-wheels        # here: the wheels a bare GPU machine lacks (< 60 MB)
    python bench/gpu_check.py --out gpu_check.jsonl      # on the GPU: 4-5 minutes on an H200
    python bench/gpu_check.py --fit bench/gpu_check.jsonl  # here: refit plan's GPU coefficients from the rows

No weights travel: each model shape is built from lorapipe's shipped config facts
(src/lorapipe/model_facts) with random bfloat16 weights, written once per shape as safetensors to
/dev/shm, and loaded the way the train stage loads `models/base` (`from_pretrained`, 4-bit by
bitsandbytes at load time). Configurations (CONFIGS): a Llama-3.1-8B shape in QLoRA (nf4, double
quantization, bfloat16 compute, gradient checkpointing, paged 8-bit AdamW: what the train stage does
on CUDA) and a Llama-3.2-1B shape in bfloat16 LoRA, each at 4 × 512 and 1 × 2048 tokens per step, LoRA
rank 16 on every projection. Two systems train each:

- ``lorapipe``: the train stage's own code (lorapipe.train: _load_model, _trainer_settings, _trainer;
  TRL's SFTTrainer with its fused LM head on CUDA);
- ``baseline``: the plain recipe of the peft/bitsandbytes documentation: `from_pretrained` (with a
  BitsAndBytesConfig for QLoRA), `prepare_model_for_kbit_training`, `get_peft_model`, transformers'
  `Trainer` with `bf16=True` (+ gradient checkpointing and paged 8-bit AdamW for QLoRA).

Per row: tokens/s over the steps after --warmup (CUDA-synchronised wall clock, every token of a row
carries loss), seconds of the first step, `torch.cuda.max_memory_allocated`/`max_memory_reserved`
during training (GiB, 2**30 bytes), the device peak (reserved + the CUDA context measured at start),
the weights' memory after loading, the loss of the last step, and, for lorapipe rows, `lorapipe plan`'s
estimate of the same configuration (peak GiB by part, tokens/s from the matrix-multiply peak that
plan measures) with its error. Each row is appended to --out as soon as it is measured; a table is
printed last (this run's rows: each carries the run's id, `run`). A configuration that fails (out of
memory, a missing kernel) is a row with its error, and the check goes on; a configuration that would
start after --budget-s seconds is a skipped row.

The GPU machines here run Python 3.12 with torch 2.11, transformers 5.17, accelerate and
safetensors preinstalled, but not bitsandbytes, trl or datasets, and have no network. `--bring DIR`
downloads (from PyPI, here) the exact wheels the project pins (pyproject.toml) for what the check
imports and the machine lacks or has in another version: transformers, peft, trl, bitsandbytes,
datasets (+ dill, multiprocess), pydantic (+ pydantic-core, annotated-types, typing-inspection) and
regex (transformers wants a newer one than the image's may be), for CPython 3.12 on x86-64 Linux;
bitsandbytes' wheel is trimmed to its Python files, its CPU library and the CUDA 13.0 library
(`--cuda 130`), 43 MB → 3.6 MB; 23.2 MB in all. On the GPU machine:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu-wheels/*.whl
    PYTHONPATH=/tmp/site:src python3 bench/gpu_check.py --out $OUT/gpu_check.jsonl

The versions it ran with are in every row (`versions`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lorapipe.plan import (  # noqa: E402
    estimate_memory_gib,
    estimate_tokens_per_second,
    load_facts,
    training_flops_per_token,
    training_settings,
)

GiB = 2**30
RANK = 16
ALPHA = 32


@dataclass(frozen=True)
class Config:
    name: str
    model: str  # a model whose config facts ship with lorapipe (lorapipe.plan.load_facts)
    load_in_4bit: bool
    seq_len: int
    batch_size: int
    compile: bool = False  # train.torch_compile
    systems: tuple[str, ...] = ("lorapipe", "baseline")


CONFIGS = [
    Config("8B QLoRA 4×512", "meta-llama/Llama-3.1-8B-Instruct", True, 512, 4),
    Config("8B QLoRA 1×2048", "meta-llama/Llama-3.1-8B-Instruct", True, 2048, 1),
    Config("1B LoRA bf16 4×512", "meta-llama/Llama-3.2-1B-Instruct", False, 512, 4),
    Config("1B LoRA bf16 1×2048", "meta-llama/Llama-3.2-1B-Instruct", False, 2048, 1),
    # train.torch_compile on CUDA: the first step holds the compiling; speed after it (lorapipe only)
    Config("1B LoRA bf16 4×512 compiled", "meta-llama/Llama-3.2-1B-Instruct", False, 512, 4, True, ("lorapipe",)),
]
# --smoke: the same code on the CPU, on the bundled model's shape, in seconds (tests/test_gpu_check.py)
SMOKE = [
    Config("135M QLoRA 2×32", "HuggingFaceTB/SmolLM2-135M-Instruct", True, 32, 2),
    Config("135M LoRA 2×32", "HuggingFaceTB/SmolLM2-135M-Instruct", False, 32, 2),
]
SYSTEMS = ("lorapipe", "baseline")
# What --bring fetches beyond the project's pins: what trl/datasets/lorapipe import that the GPU
# machine's image does not hold (its package list: ../.library/device/KINDS.md in this workplace).
BRING_PINNED = ("transformers", "peft", "trl", "bitsandbytes", "datasets", "pydantic")
# regex: transformers checks regex>=2025.10.22 at import, and the image's may be older.
BRING_UNPINNED = ("dill", "multiprocess", "pydantic-core", "annotated-types", "typing-inspection", "regex")
BRING_LIMIT_MB = 60


# ---------------------------------------------------------------- models and data


def llama_config(model: str):
    """A transformers LlamaConfig from lorapipe's shipped facts (bfloat16 weights on disk)."""
    from transformers import LlamaConfig

    facts = load_facts(model)
    return LlamaConfig(
        vocab_size=facts.vocab_size,
        hidden_size=facts.hidden_size,
        intermediate_size=facts.intermediate_size,
        num_hidden_layers=facts.num_hidden_layers,
        num_attention_heads=facts.num_attention_heads,
        num_key_value_heads=facts.num_key_value_heads,
        head_dim=facts.head_dim,
        tie_word_embeddings=facts.tie_word_embeddings,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        dtype="bfloat16",
    )


def write_random_checkpoint(model: str, folder: Path, device: str = "cuda", shard_gib: float = 2.0) -> float:
    """Random-weight safetensors shards (+ index, config.json) of `model`'s shape in `folder`,
    generated on `device` (normal, std 0.02; norms 1): seconds taken."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    started = time.perf_counter()
    config = llama_config(model)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(config).state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(device=device).manual_seed(0)
    index: dict[str, str] = {}
    shard: dict = {}

    def flush() -> None:
        name = f"model-{len(set(index.values())) + 1:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        index.update(dict.fromkeys(shard, name))
        shard.clear()

    for key, shape in shapes.items():
        if key.endswith("norm.weight"):
            tensor = torch.ones(shape, dtype=torch.bfloat16)
        else:
            tensor = (torch.randn(shape, device=device, generator=generator) * 0.02).to(torch.bfloat16).cpu()
        shard[key] = tensor
        if sum(t.numel() * 2 for t in shard.values()) >= shard_gib * GiB:
            flush()
    if shard:
        flush()
    total = sum(math.prod(s) * 2 for s in shapes.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": index})
    )
    config.save_pretrained(folder)
    del generator
    if device == "cuda":
        torch.cuda.empty_cache()  # the children measure the card: this process keeps no cache on it
    return time.perf_counter() - started


def scratch_folder(needed_bytes: int) -> Path:
    """/dev/shm (memory: fast to write and read back) when it has room for a checkpoint of
    `needed_bytes` with a 10% margin, else the temporary folder (disk)."""
    import shutil

    for folder in ("/dev/shm", tempfile.gettempdir()):
        if Path(folder).is_dir() and shutil.disk_usage(folder).free > needed_bytes * 1.1:
            return Path(folder)
    raise SystemExit(f"no room for a {needed_bytes / GiB:.1f} GiB checkpoint in /dev/shm or {tempfile.gettempdir()}")


def word_tokenizer():
    """A tokenizer with pad/bos/eos and no vocabulary to speak of: the rows are token ids already."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(WordLevel({"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}, unk_token="<unk>"))
    core.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def random_rows(vocab: int, seq_len: int, rows: int, seed: int = 0) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (rows, seq_len), generator=generator).tolist()


# ---------------------------------------------------------------- the two systems


def step_clock():
    """A TrainerCallback that times each optimizer step on the CUDA-synchronised wall clock
    (`seconds`) and keeps each logged training loss (`losses`)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.losses: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            _sync()
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            _sync()
            self.seconds.append(time.perf_counter() - self._start)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return StepClock()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def precision_on(device: str) -> str:
    """bf16 on CUDA (what the train stage resolves `auto` to on a current card); on the CPU, what
    `train.precision: auto` resolves to here (fp32 where the CPU has no native bfloat16)."""
    from lorapipe.hardware import resolve_precision

    return "bf16" if device == "cuda" else resolve_precision("auto", device)


def _hardware(config: Config, device: str = "cuda"):
    from lorapipe.train import _Hardware

    return _Hardware(
        device=device,
        precision=precision_on(device),
        load_in_4bit=config.load_in_4bit,
        gradient_checkpointing=config.load_in_4bit,  # the train stage on CUDA: checkpointing with 4-bit
        autofit=False,
        budget_gib=None,
    )


def load_lorapipe(config: Config, base_dir: Path, device: str = "cuda"):
    """The model as the train stage loads it (lorapipe.train._load_model)."""
    from lorapipe.params import DEFAULTS
    from lorapipe.train import _load_model

    lora = DEFAULTS.lora.model_copy(update={"rank": RANK, "alpha": ALPHA, "dropout": 0.0, "target_modules": "auto"})
    quant = DEFAULTS.quant.model_copy(update={"quant_type": "nf4", "double_quant": True})
    model, _, targets = _load_model(base_dir, lora, quant, _hardware(config, device), config.seq_len)
    return model, targets


def load_baseline(config: Config, base_dir: Path, device: str = "cuda"):
    """The documented recipe: 4-bit load + prepare_model_for_kbit_training, or a float32 load; peft LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = (
        BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if precision_on(device) == "bf16" else torch.float32,
        )
        if config.load_in_4bit
        else None
    )
    model = AutoModelForCausalLM.from_pretrained(
        base_dir,
        dtype=torch.float32,
        quantization_config=quantization,
        device_map={"": 0} if device == "cuda" else None,
    )
    if config.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(
        model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")
    )
    return model, targets


def lorapipe_settings(config: Config, folder: Path, steps: int, device: str) -> dict:
    """The train stage's TrainingArguments/SFTConfig settings (lorapipe.train._trainer_settings) for
    `config`: no evaluation or saving, the learning rate of a short run, compiled as the config says."""
    from lorapipe.params import DEFAULTS
    from lorapipe.train import ResolvedSettings, _trainer_settings

    train = DEFAULTS.train.model_copy(
        update={
            "lr": 2e-4,
            "warmup_steps": 0,
            "log_every": 1,
            "save_steps": 0,
            "eval_steps": 0,
            "torch_compile": config.compile,
        }
    )
    resolved = ResolvedSettings(
        device=device,
        precision=precision_on(device),
        load_in_4bit=config.load_in_4bit,
        target_modules=[],
        seq2seq=False,
        batch_size=config.batch_size,
        grad_accum=1,
        gradient_checkpointing=config.load_in_4bit,
        processes=1,
        autofit=False,
        packing=False,
        torch_compile=config.compile,
    )
    return _trainer_settings(train, resolved, steps, folder, seed=0)


def lorapipe_trainer(model, config: Config, rows: list[list[int]], folder: Path, steps: int, clock, device: str):
    """The train stage's trainer (lorapipe.train._trainer) with its settings (lorapipe_settings)."""
    from lorapipe.train import _trainer

    args = lorapipe_settings(config, folder, steps, device)
    pairs = [(ids, list(ids)) for ids in rows]
    return _trainer(model, word_tokenizer(), False, pairs, pairs[:1], [clock], 0, **args)


def baseline_trainer(model, config: Config, rows: list[list[int]], folder: Path, steps: int, clock, device: str):
    import torch
    from transformers import Trainer, TrainingArguments

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            ids = torch.tensor(rows[i])
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    args = TrainingArguments(
        output_dir=str(folder),
        max_steps=steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=2e-4,
        bf16=precision_on(device) == "bf16",
        gradient_checkpointing=config.load_in_4bit,
        optim="paged_adamw_8bit" if config.load_in_4bit and device == "cuda" else "adamw_torch",
        use_cpu=device == "cpu",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    return Trainer(model=model, args=args, train_dataset=Rows(), callbacks=[clock])


# ---------------------------------------------------------------- the plan's view


def plan_row(config: Config, peak_flops: float | None, device: str = "cuda") -> dict:
    """`lorapipe plan`'s estimate for the configuration as the train stage runs it on `device`."""
    facts = load_facts(config.model)
    settings = training_settings(config.seq_len, RANK, "auto", config.load_in_4bit, precision_on(device), device)
    estimate = estimate_memory_gib(facts, batch_size=config.batch_size, **settings)
    per_token = training_flops_per_token(
        facts, config.seq_len, estimate["lora_parameters"], settings["gradient_checkpointing"]
    )
    row = {
        "plan_gib": estimate["total"],
        "plan_parts_gib": {k: estimate[k] for k in ("runtime", "weights", "adapter", "activations", "logits")},
        "lora_parameters": estimate["lora_parameters"],
        "parameters": estimate["parameters"],
        "gflop_per_token": round(per_token / 1e9, 3),
    }
    if peak_flops:
        speed = estimate_tokens_per_second(per_token, device, peak_flops, facts.hidden_size)
        row["plan_tokens_per_s"] = round(speed, 1)
    return row


# ---------------------------------------------------------------- the run


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets", "safetensors"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def device_facts(device: str) -> dict:
    """The card, its memory, the CUDA context's memory (GiB) and the matrix-multiply peak `lorapipe plan`
    divides by (lorapipe.hardware.peak_matmul_flops: 8192² bf16 on CUDA), TFLOP/s."""
    import torch

    from lorapipe.hardware import peak_matmul_flops

    plan_peak = round(peak_matmul_flops(device, precision_on(device)) / 1e12, 4)  # what `lorapipe plan` divides by
    if device == "cpu":
        return {"name": "cpu", "memory_gib": None, "context_gib": 0.0, "plan_peak_tflops": plan_peak}
    properties = torch.cuda.get_device_properties(0)
    torch.empty(1, device="cuda")
    free, total = torch.cuda.mem_get_info()
    context = (total - free - torch.cuda.memory_reserved()) / GiB
    torch.cuda.empty_cache()
    return {
        "name": properties.name,
        "memory_gib": round(total / GiB, 2),
        "capability": f"{properties.major}.{properties.minor}",
        "context_gib": round(context, 3),
        "plan_peak_tflops": plan_peak,
    }


def _memory(device: str, what: str) -> float | None:
    import torch

    return round(getattr(torch.cuda, what)() / GiB, 3) if device == "cuda" else None


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def measure(system: str, config: Config, model, folder: Path, steps: int, warmup: int, device: str) -> dict:
    import torch

    rows = random_rows(model.config.vocab_size, config.seq_len, (steps + warmup) * config.batch_size)
    clock = step_clock()
    build = lorapipe_trainer if system == "lorapipe" else baseline_trainer
    trainer = build(model, config, rows, folder, steps + warmup, clock, device)
    _free(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = _memory(device, "memory_allocated")
    trainer.train()
    measured = clock.seconds[warmup:]
    tokens = config.batch_size * config.seq_len * len(measured)
    out = {
        "tokens_per_s": round(tokens / sum(measured), 1),
        "first_step_s": round(clock.seconds[0], 2),
        "step_s": round(sum(measured) / len(measured), 3),
        "steps": len(measured),
        "allocated_before_gib": before,
        "max_allocated_gib": _memory(device, "max_memory_allocated"),
        "max_reserved_gib": _memory(device, "max_memory_reserved"),
        "last_loss": clock.losses[-1] if clock.losses else None,
    }
    trainer.accelerator.free_memory()
    del trainer
    _free(device)
    return out


def select(configs: list[Config], only: str | None) -> list[Config]:
    """The configurations whose name contains one of `only`'s comma-separated words (all without it);
    exits naming the configurations when none matches."""
    words = [w.strip() for w in (only or "").split(",") if w.strip()]
    chosen = [c for c in configs if not words or any(w in c.name for w in words)]
    if not chosen:
        raise SystemExit(f"--only {only!r} matches no configuration of {[c.name for c in configs]}")
    return chosen


def run(args, configs: list[Config], device: str = "cuda") -> list[dict]:
    """Measure `configs` with both systems, each loaded model in a fresh process (one process's
    memory statistics and leftovers never reach the next); rows appended to args.out as measured,
    each with this run's `run` id; the table printed last holds this run's rows only."""
    started = time.time()
    args.deadline = started + args.budget_s
    args.run_id = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    facts = device_facts(device)  # measured first: the CUDA context of a process that holds nothing else
    args.context_gib = facts["context_gib"]
    print(json.dumps({"run": args.run_id, "device": facts, "versions": versions()}), flush=True)
    wanted = select(configs, args.only)
    scratch = scratch_folder(max(load_facts(c.model).parameters * 2 for c in wanted))
    for model_name in dict.fromkeys(c.model for c in wanted):
        shape = [c for c in wanted if c.model == model_name]
        base = Path(tempfile.mkdtemp(prefix=f"lorapipe-gpu-check-{Path(model_name).name}-", dir=scratch))
        try:
            written = write_random_checkpoint(model_name, base, device)
            print(f"{model_name}: random checkpoint written in {written:.1f} s", flush=True)
            for system, group in _groups(shape):
                _run_group(system, group, base, args, device)
        except Exception as exc:  # the checkpoint could not be written: rows say so, the next model runs
            _error_rows(args, [(c, s) for c in shape for s in c.systems], f"{type(exc).__name__}: {exc}")
        finally:
            shutil.rmtree(base, ignore_errors=True)
    rows = [r for r in _rows(out) if r.get("run") == args.run_id]
    print(f"\ntotal {time.time() - started:.0f} s\n")
    print(table(rows))
    return rows


def _groups(configs: list[Config]) -> list[tuple[str, list[Config]]]:
    """(system, configurations) that share one loaded model: same shape and 4-bit setting; compiled
    configurations last in their group (the trainer compiles the model in place, so nothing plain runs
    after them), and groups with one last of all (their first step is the longest)."""
    out = []
    for four_bit in dict.fromkeys(c.load_in_4bit for c in configs):
        shape = sorted((c for c in configs if c.load_in_4bit == four_bit), key=lambda c: c.compile)
        out += [(system, [c for c in shape if system in c.systems]) for system in SYSTEMS]
    return sorted(((s, g) for s, g in out if g), key=lambda group: any(c.compile for c in group[1]))


def _run_group(system: str, configs: list[Config], base: Path, args, device: str) -> None:
    """One child process loads the model and measures the group; what it could not do becomes rows."""
    left = args.deadline - time.time()
    error = f"skipped: --budget-s {args.budget_s}" if left <= 0 else None
    if not error:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", system, "--base", str(base)]
        command += ["--names", "|".join(c.name for c in configs), "--out", str(args.out), "--device", device]
        command += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--context-gib", str(args.context_gib)]
        command += ["--run-id", args.run_id, "--deadline", str(args.deadline)]
        try:
            done = subprocess.run(command, timeout=left + 180)
            error = f"the process ended with exit status {done.returncode}" if done.returncode else None
        except subprocess.TimeoutExpired:
            error = "the process outlived --budget-s by 180 s and was stopped"
    if error:
        _error_rows(args, [(c, system) for c in configs], error)


def _error_rows(args, pairs: list[tuple[Config, str]], error: str) -> None:
    """A row with `error` for each (configuration, system) of `pairs` this run has no row for yet."""
    measured = {(r["config"], r["system"]) for r in _rows(Path(args.out)) if r.get("run") == args.run_id}
    with Path(args.out).open("a") as handle:
        for config, system in pairs:
            if (config.name, system) not in measured:
                row = {"run": args.run_id, "config": config.name, "system": system, "error": error}
                handle.write(json.dumps(row) + "\n")


def _rows(path: Path) -> list[dict]:
    """The rows of a --out file; a line cut short (a killed run) is left out."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def child(system: str, configs: list[Config], base: Path, args) -> None:
    """Load `base` once the way `system` does, then measure each configuration (one that would start
    after args.deadline is skipped); rows appended to args.out."""
    device = args.device
    # The context is the parent's clean measure: here the parent's own context is on the card too.
    facts = {**device_facts(device), "context_gib": args.context_gib}
    common = {"run": args.run_id, "device": facts, "versions": versions()}

    def emit(row: dict) -> None:
        with Path(args.out).open("a") as handle:
            handle.write(json.dumps({**row, **common}) + "\n")
        print({k: v for k, v in row.items() if k not in common}, flush=True)

    loaded = time.perf_counter()
    try:
        if system == "lorapipe":
            model, _ = load_lorapipe(configs[0], base, device)
        else:
            model, _ = load_baseline(configs[0], base, device)
    except Exception as exc:  # a failed load is a row for each configuration
        for config in configs:
            emit({"config": config.name, "system": system, "error": f"load: {type(exc).__name__}: {exc}"})
        return
    load_s = round(time.perf_counter() - loaded, 1)
    weights = _memory(device, "memory_allocated")
    for config in configs:
        row = {"config": config.name, "system": system, "load_s": load_s, "weights_gib": weights}
        if system == "lorapipe":
            row.update(plan_row(config, common["device"]["plan_peak_tflops"] * 1e12, device))
        if time.time() > args.deadline:
            emit({**row, "error": "skipped: --budget-s"})
            continue
        try:
            with tempfile.TemporaryDirectory() as folder:
                row.update(measure(system, config, model, Path(folder), args.steps, args.warmup, device))
            if device == "cuda":
                row["device_peak_gib"] = round(row["max_reserved_gib"] + common["device"]["context_gib"], 3)
                if "plan_gib" in row:
                    row["plan_error"] = round(row["plan_gib"] / row["device_peak_gib"] - 1, 3)
            if "plan_tokens_per_s" in row:
                row["plan_speed_error"] = round(row["plan_tokens_per_s"] / row["tokens_per_s"] - 1, 3)
        except Exception as exc:  # out of memory or a kernel missing: recorded, the check goes on
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        emit(row)
        _free(device)


def table(rows: list[dict]) -> str:
    """The rows as a markdown table (lorapipe beside its baseline, plan's estimate and error)."""
    lines = [
        "| configuration | system | tokens/s | first step s | max allocated GiB | max reserved GiB | "
        "device peak GiB | plan GiB (error) | plan tokens/s (error) | last loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['system']} | {r['error']} | | | | | | | |")
            continue
        plan = f"{r['plan_gib']:.2f} ({r['plan_error']:+.0%})" if "plan_error" in r else ""
        speed = f"{r['plan_tokens_per_s']:,.0f} ({r['plan_speed_error']:+.0%})" if "plan_speed_error" in r else ""
        loss = f"{r['last_loss']:.3f}" if r.get("last_loss") is not None else ""
        gib = [f"{r[k]:.2f}" if r.get(k) is not None else "" for k in ("max_allocated_gib", "max_reserved_gib")]
        peak = f"{r['device_peak_gib']:.2f}" if "device_peak_gib" in r else ""
        lines.append(
            f"| {r['config']} | {r['system']} | {r['tokens_per_s']:,.0f} | {r['first_step_s']} | "
            f"{gib[0]} | {gib[1]} | {peak} | {plan} | {speed} | {loss} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- dry run (CPU, CI)


def dry_run() -> list[dict]:
    """Every configuration built on the meta device with its LoRA, checked against plan's parameter
    counts; the train stage's settings for it built (compiled where the configuration says); plan's
    estimate printed. Exits with the difference when a check fails."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from lorapipe.train import default_target_modules

    rows = []
    for config in CONFIGS:
        facts = load_facts(config.model)
        with torch.device("meta"):
            model = LlamaForCausalLM(llama_config(config.model))
        parameters = sum(p.numel() for p in model.parameters())
        targets = default_target_modules(model)
        model = get_peft_model(
            model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, task_type="CAUSAL_LM")
        )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        plan = plan_row(config, None)
        settings = lorapipe_settings(config, Path("unused"), 10, "cuda")
        if settings["torch_compile"] is not config.compile:
            raise SystemExit(f"{config.name}: the train stage's settings say torch_compile {settings['torch_compile']}")
        if parameters != facts.parameters or trainable != plan["lora_parameters"]:
            raise SystemExit(
                f"{config.name}: the model built has {parameters:,} parameters and {trainable:,} trainable; "
                f"plan counts {facts.parameters:,} and {plan['lora_parameters']:,}"
            )
        rows.append({"config": config.name, "model": config.model, "targets": targets, "trainable": trainable, **plan})
    print("| configuration | model | parameters | LoRA parameters | GFLOP per token | plan peak GiB | by part |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r["plan_parts_gib"].items())
        print(
            f"| {r['config']} | {r['model']} | {r['parameters'] / 1e9:.2f} B | {r['lora_parameters'] / 1e6:.1f} M "
            f"| {r['gflop_per_token']} | {r['plan_gib']:.2f} | {parts} |"
        )
    print(f"\n{len(rows)} configurations × {len(SYSTEMS)} systems ({', '.join(SYSTEMS)}) would run on CUDA")
    return rows


# ---------------------------------------------------------------- bring the wheels


def bring(folder: Path, cuda: str) -> float:
    """Download the wheels the GPU machine lacks into `folder` (CPython 3.12, manylinux x86-64), at the
    versions this environment runs (the project's pins), trim bitsandbytes; the total in MB."""
    from importlib.metadata import version

    folder.mkdir(parents=True, exist_ok=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux2014_x86_64")]
    for name in (*BRING_PINNED, *BRING_UNPINNED):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version=3.12"]
            + ["--implementation=cp", *platforms, "-d", str(folder), f"{name}=={version(name)}"],
            check=True,
        )
    for wheel in folder.glob("bitsandbytes-*.whl"):
        trim_bitsandbytes(wheel, cuda)
    total = sum(p.stat().st_size for p in folder.glob("*.whl")) / 1e6
    for p in sorted(folder.glob("*.whl")):
        print(f"{p.stat().st_size / 1e6:7.1f} MB  {p.name}")
    print(f"{total:7.1f} MB  in all (limit {BRING_LIMIT_MB} MB)")
    if total > BRING_LIMIT_MB:
        raise SystemExit(f"the wheels in {folder} take {total:.1f} MB, over {BRING_LIMIT_MB} MB")
    return total


def trim_bitsandbytes(wheel: Path, cuda: str) -> None:
    """Rewrite the wheel without the native libraries of other CUDA/ROCm/XPU versions (its RECORD too)."""
    keep = {f"libbitsandbytes_cuda{cuda}.so", "libbitsandbytes_cpu.so"}
    with zipfile.ZipFile(wheel) as source:
        libraries = sorted(Path(n).name for n in source.namelist() if Path(n).name.startswith("libbitsandbytes_"))
    if f"libbitsandbytes_cuda{cuda}.so" not in libraries:
        versions = [n.removeprefix("libbitsandbytes_cuda").removesuffix(".so") for n in libraries if "_cuda" in n]
        raise SystemExit(f"{wheel.name} has no CUDA {cuda} library: --cuda one of {versions} (torch.version.cuda)")
    dropped = lambda name: Path(name).name.startswith("libbitsandbytes_") and Path(name).name not in keep  # noqa: E731
    trimmed = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if dropped(item.filename):
                continue
            data = source.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = ("\n".join(line for line in lines if not dropped(line.split(",")[0])) + "\n").encode()
            target.writestr(item, data)
    trimmed.replace(wheel)
    print(f"bitsandbytes trimmed to CUDA {cuda} (+ CPU): sha256 {hashlib.sha256(wheel.read_bytes()).hexdigest()[:16]}")


# ---------------------------------------------------------------- refit


def fit(path: Path) -> None:
    """From measured rows: the coefficients plan's GPU terms imply (activation share, runtime, efficiency
    by model), each lorapipe row's error under the coefficients of when it was measured (``plan_gib``,
    ``plan_tokens_per_s`` in the row) and under plan's coefficients now, and compile's break-even."""
    from lorapipe import plan

    by_name = {c.name: c for c in CONFIGS + SMOKE}
    every = [r for r in _rows(path) if "error" not in r and r.get("system") == "lorapipe"]
    # CUDA rows of a known configuration: CPU (--smoke) rows have no device memory, renamed ones no plan
    rows = [r for r in every if r.get("device_peak_gib") is not None and r.get("config") in by_name]
    if len(rows) < len(every):
        print(f"({len(every) - len(rows)} lorapipe rows left out: measured on the CPU or of an unknown configuration)")
    if not rows:
        raise SystemExit(f"{path}: no measured lorapipe rows on CUDA")
    print(
        "| configuration | peak GiB | plan then (error) | plan now (error) | tokens/s | plan then (error) | "
        "plan now (error) | activation share | efficiency |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        config = by_name[r["config"]]
        now = plan_row(config, r["device"]["plan_peak_tflops"] * 1e12)
        fixed = sum(now["plan_parts_gib"][k] for k in ("weights", "adapter", "logits"))
        share = (r["max_allocated_gib"] - fixed) / (now["plan_parts_gib"]["activations"] / plan.ACT_SHARE["cuda"])
        efficiency = r["tokens_per_s"] * r["gflop_per_token"] * 1e9 / (r["device"]["plan_peak_tflops"] * 1e12)
        peak, speed = r["device_peak_gib"], r["tokens_per_s"]
        print(
            f"| {r['config']}{' (' + r['inductor_cache'] + ' cache)' if 'inductor_cache' in r else ''} | "
            f"{peak:.2f} | {r['plan_gib']:.2f} ({r['plan_gib'] / peak - 1:+.0%}) | "
            f"{now['plan_gib']:.2f} ({now['plan_gib'] / peak - 1:+.1%}) | {speed:,.0f} | "
            f"{r['plan_tokens_per_s']:,.0f} ({r['plan_tokens_per_s'] / speed - 1:+.0%}) | "
            f"{now['plan_tokens_per_s']:,.0f} ({now['plan_tokens_per_s'] / speed - 1:+.0%}) | {share:.3f} | "
            f"{efficiency:.3f} |"
        )
    for r in rows:
        if not by_name[r["config"]].compile:
            continue
        plains = [p for p in rows if p["config"] == r["config"].removesuffix(" compiled")]
        # the plain row of the same run where there is one (the same machine, the same moment)
        plain = next((p for p in plains if p.get("run") == r.get("run")), plains[0] if plains else None)
        if not plain:
            continue
        cost = r["first_step_s"] - plain["first_step_s"]
        saved = plain["step_s"] - r["step_s"]
        if saved <= 0:
            print(
                f"\n{r['config']}: compiled steps are not faster ({r['step_s']} s against {plain['step_s']}): "
                "compiling does not pay"
            )
        else:
            print(
                f"\n{r['config']}, {r.get('inductor_cache', 'cold')} inductor cache: "
                f"{r['tokens_per_s'] / plain['tokens_per_s']:.2f}× the plain speed; compiling costs {cost:.0f} s "
                f"and saves {saved * 1000:.0f} ms a step: it pays back after {cost / saved:,.0f} steps "
                f"({cost / saved * plain['step_s'] / 60:.1f} min of plain training)"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--dry-run", action="store_true", help="build every configuration on the meta device (CPU)")
    parser.add_argument("--bring", type=Path, help="download the wheels the GPU machine lacks into this folder")
    parser.add_argument("--cuda", default="130", help="the CUDA version of bitsandbytes' library to keep (--bring)")
    parser.add_argument("--fit", type=Path, help="refit plan's GPU coefficients from this file's rows")
    parser.add_argument("--out", default="gpu_check.jsonl", help="rows are appended here as they are measured")
    parser.add_argument("--steps", type=int, default=8, help="measured optimizer steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="steps before the measured ones")
    parser.add_argument(
        "--budget-s", type=float, default=300, help="start no configuration after this many seconds (skipped rows)"
    )
    parser.add_argument("--only", help="configurations whose name contains one of these (comma-separated)")
    parser.add_argument("--smoke", action="store_true", help="the whole run on the CPU, small shapes (a test)")
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)  # one loaded model, in its own process
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--names", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--context-gib", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--run-id", default="", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=math.inf, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        names = args.names.split("|")
        child(args.child, [c for c in CONFIGS + SMOKE if c.name in names], args.base, args)
    elif args.dry_run:
        dry_run()
    elif args.bring:
        bring(args.bring, args.cuda)
    elif args.fit:
        fit(args.fit)
    elif args.smoke:
        run(args, SMOKE, "cpu")
    else:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device here: use --dry-run or --smoke on the CPU")
        run(args, CONFIGS)


if __name__ == "__main__":
    main()
