"""Training speed on this CPU: the bundled SmolLM2-135M with LoRA at sequence length 512, lorapipe
against the plain baseline (transformers' Trainer with peft), in tokens per second and model FLOPs
utilisation (MFU), and what each speed setting lorapipe tried is worth.

Run: .venv/bin/python bench/bench_train.py [--steps 8] [--repeats 3] [--only NAME,NAME]   (about 50 minutes)

Every configuration trains in a fresh process on the same text rows (the sample corpus cut into
chunks of at most 512 tokens by the dataset stage), in full batches of 4 (`dataloader_drop_last`:
the corpus is 7 rows, and a last batch of one row per epoch would measure a batch size nobody
trains with). Speed counts only the tokens that carry loss (no padding;
lorapipe.train_callbacks.LossTokens), over the steps after the first (warm-up); the figure is the median
of --repeats runs, with min and max. MFU = tokens/s × model FLOPs per token
(lorapipe.plan.training_flops_per_token) ÷ the peak FLOP/s of a large matrix multiply here, in the
same precision. The loss is the training loss of the last step: the same data and steps for all.
"s to first step" is the child process's time from before its imports of torch and transformers to
the end of the first step: loading the model, setting up the trainer, torch.compile's compiling.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name: (trainer, lora/train knobs by name and `trainer_args` or baseline settings, environment, what it shows)
CONFIGS: dict[str, tuple[str, dict, dict, str]] = {
    "baseline fp32": (
        "baseline",
        {"bf16": False},
        {},
        "transformers Trainer + peft LoRA r16 on q/k/v/o, padded batches of 4, defaults, float32",
    ),
    "baseline bf16 flag": ("baseline", {"bf16": True}, {}, "the same with the Trainer's `bf16` flag"),
    "lorapipe fp32": (
        "lorapipe",
        {"precision": "fp32"},
        {},
        "train_lora with params.yaml's defaults (LoRA r16 on every projection), float32",
    ),
    "bf16 autocast, float32 weights": (
        "lorapipe",
        {"precision": "fp32", "trainer_args": {"bf16": True}},
        {},
        "bfloat16 autocast over float32 weights (lorapipe before: each weight is cast on every forward pass)",
    ),
    "lorapipe": (
        "lorapipe",
        {},
        {},
        "train_lora as it ships: precision auto (bf16 where the CPU has it natively, else fp32), packing, no "
        "dropout, fused AdamW",
    ),
    "+ lora dropout 0.05": ("lorapipe", {"dropout": 0.05}, {}, "lora.dropout 0.05 (its default before)"),
    "without packing": (
        "lorapipe",
        {"packing": False, "group_by_length": False},
        {},
        "rows padded to the longest of their batch instead of packed into 512-token blocks, in random order",
    ),
    "foreach AdamW": (
        "lorapipe",
        {"trainer_args": {"optim": "adamw_torch"}},
        {},
        "the foreach AdamW instead of the fused kernel lorapipe uses",
    ),
    "+ torch.compile": (
        "lorapipe",
        {"torch_compile": True},
        {},
        "train.torch_compile: torch.compile (inductor) of the model; the compiling falls in the "
        "first step (s to first step)",
    ),
    "+ gradient checkpointing": (
        "lorapipe",
        {
            "trainer_args": {
                "activation_checkpointing": True,
                "activation_checkpointing_kwargs": {"use_reentrant": False},
            }
        },
        {},
        "recompute activations in the backward pass (what memory-bound runs pay)",
    ),
    "without packing, length bucketing": (
        "lorapipe",
        {"packing": False, "group_by_length": True},
        {},
        "padded rows, batched by similar length (train.group_by_length; few rows here: see "
        "bench_group_by_length.py for a measure on labeled rows)",
    ),
    "1 thread": ("lorapipe", {}, {"OMP_NUM_THREADS": "1"}, "one intra-op thread instead of one per core"),
}


def vm_hwm_gb() -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 2**20


def steady_speed(marks: list[tuple[float, int]]) -> float:
    """Loss tokens per second from the end of the first step to the end of the last."""
    (t0, n0), (t1, n1) = marks[0], marks[-1]
    return (n1 - n0) / max(t1 - t0, 1e-9)


def run_baseline(work: Path, steps: int, settings: dict) -> dict:
    """The plain recipe a user would otherwise write: Trainer, peft, padded batches, defaults."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from lorapipe.io import read_jsonl
    from lorapipe.train_callbacks import LossTokens

    tokenizer = AutoTokenizer.from_pretrained(work / "base")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [row["text"] for row in read_jsonl(work / "dataset" / "train.jsonl")]
    data = Dataset.from_dict(tokenizer(texts, truncation=True, max_length=512))
    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_pretrained(work / "base", dtype=torch.float32)
    model = get_peft_model(
        model, LoraConfig(r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    )
    counter = LossTokens(model)
    marks: list[tuple[float, int]] = []
    losses: list[float] = []

    class Marks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), counter.value))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])

    args = TrainingArguments(
        output_dir=str(work / "baseline-out"),
        per_device_train_batch_size=4,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        bf16=settings["bf16"],
        dataloader_drop_last=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        callbacks=[Marks()],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    trainer.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "marks": marks,
        "loss": losses[-1],
        "lora_parameters": trainable,
        "precision": "bf16" if settings["bf16"] else "fp32",
    }


def run_lorapipe(work: Path, steps: int, settings: dict) -> dict:
    """train_lora with the bench's run settings; `settings` holds lora/train knobs by name and
    `trainer_args` (TrainingArguments settings no param offers)."""
    from lorapipe.params import LoraParams, TrainParams
    from lorapipe.train import train_lora

    marks: list[tuple[float, int]] = []
    losses: list[float] = []

    def on_log(step: int, metrics: dict) -> None:
        if "loss" in metrics:
            marks.append((time.perf_counter(), metrics["loss_tokens"]))
            losses.append(metrics["loss"])

    trainer_args = {**settings.get("trainer_args", {}), "dataloader_drop_last": True}
    lora = LoraParams(**{k: v for k, v in settings.items() if k in LoraParams.model_fields})
    train = TrainParams(
        **{
            "max_steps": steps,
            "batch_size": 4,
            "log_every": 1,
            "eval_steps": 0,
            "save_steps": 0,
            "lr": 3e-4,
            "warmup_steps": 2,
            "resume": "never",
            "torch_compile": False,  # only the "+ torch.compile" row compiles, whatever auto would decide
            **{k: v for k, v in settings.items() if k in TrainParams.model_fields},
        }
    )
    result = train_lora(
        work / "dataset",
        work / "base",
        work / "adapter",
        lora=lora,
        train=train,
        checkpoint_dir=work / "checkpoints",
        on_log=on_log,
        trainer_args=trainer_args,
    )
    autocast = trainer_args.get("bf16")  # float32 weights under bf16 autocast
    return {
        "marks": marks,
        "loss": losses[-1],
        "lora_parameters": result.metrics.trainable_parameters,
        "precision": "bf16" if autocast else result.resolved.precision,
    }


def child(name: str, work: Path, steps: int) -> None:
    kind, settings, _, _ = CONFIGS[name]
    started = time.perf_counter()
    out = (run_baseline if kind == "baseline" else run_lorapipe)(work, steps, settings)
    out["first_step_seconds"] = out["marks"][0][0] - started  # loading, setting up, compiling, one step
    out["tokens_per_second"] = steady_speed(out.pop("marks"))
    out["peak_gb"] = vm_hwm_gb()
    print("RESULT " + json.dumps(out), flush=True)


PEAK_SHAPES = [(4096, 4096, 4096), (8192, 2048, 2048), (2048, 2048, 8192)]


def matmul_peak(precision: str, runs: int = 5) -> float:
    """FLOP/s of a large matrix multiply here: the best of `runs` over a few large shapes. bfloat16 on a
    CPU without native bfloat16 (lorapipe.hardware.cpu_has_bf16) runs at about 1 GFLOP/s, where one
    4096³ product would take minutes: there the figure is one 512³ product's, twice."""
    import torch

    from lorapipe.hardware import cpu_has_bf16

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    best, shapes = 0.0, PEAK_SHAPES
    if precision == "bf16" and not cpu_has_bf16():
        shapes, runs = [(512, 512, 512)], 2
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        a @ b
        for _ in range(runs):
            started = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - started))
    return best


def prepare(work: Path) -> dict:
    """The bundled base model and the sample corpus as 512-token text rows, as the pipeline makes them."""
    from lorapipe import build_dataset, extract_documents, prepare_base_model

    prepare_base_model("smollm2-135m-instruct", work / "base")
    extract_documents([ROOT / "data" / "raw" / "docs"], work / "text", workers=1, cache_dir=work / "cache")
    stats = build_dataset(
        work / "text",
        work / "base",
        work / "dataset",
        labeled_dir=work / "none",
        mode="text",
        max_seq_len=512,
        val_fraction=0.2,
        split_by="chunk",
    )
    return stats


def run_config(name: str, work: Path, steps: int) -> dict:
    env = {**os.environ, **CONFIGS[name][2]}
    run = subprocess.run(
        [sys.executable, __file__, "--child", name, "--work", str(work), "--steps", str(steps)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
    if run.returncode != 0 or line is None:
        raise RuntimeError(f"{name} failed:\n{run.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", help="comma-separated configuration names")
    parser.add_argument("--child")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.work, args.steps)
        return

    from lorapipe.hardware import cpu_has_bf16
    from lorapipe.plan import load_facts, training_flops_per_token

    names = args.only.split(",") if args.only else list(CONFIGS)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with contextlib.redirect_stdout(sys.stderr):  # the stages' progress is not part of the report
            stats = prepare(work)
        rows, tokens = stats["rows"]["train"], stats["tokens"]["train"]
        mean_len = tokens / rows
        peaks = {p: matmul_peak(p) for p in ("fp32", "bf16")}
        native_bf16 = cpu_has_bf16()
        facts = load_facts("smollm2-135m-instruct")
        results: dict[str, list[dict]] = {}
        failed: dict[str, str] = {}
        for repeat in range(args.repeats):
            for name in names:
                print(f"[bench_train] {name} (run {repeat + 1}/{args.repeats})", file=sys.stderr, flush=True)
                try:
                    results.setdefault(name, []).append(run_config(name, work, args.steps))
                except RuntimeError as exc:  # one broken configuration does not lose the others' figures
                    failed[name] = str(exc).strip().splitlines()[-1]
                    print(exc, file=sys.stderr, flush=True)

    print(
        f"- data: {rows} text rows of the sample corpus (data/raw/docs), ≤512 tokens, mean {mean_len:.0f}; "
        f"batch 4, {args.steps} steps, speed over steps 2–{args.steps}; median of {args.repeats} runs (min–max)"
    )
    print(
        f"- matrix-multiply peak (best of 4096³, 8192×2048×2048, 2048×2048×8192; {os.cpu_count()} threads): "
        f"{peaks['fp32'] / 1e9:.0f} GFLOP/s float32, "
        f"{peaks['bf16'] / 1e9:.0f} GFLOP/s bfloat16"
        + ("" if native_bf16 else " (no native bfloat16 on this CPU: one 512³ product; no MFU of the bf16 peak)")
    )
    print(
        "- model FLOPs per trained token (`training_flops_per_token`, mean row length): "
        f"{training_flops_per_token(facts, round(mean_len)) / 1e9:.3f} GFLOP + 6 per adapter parameter\n"
    )
    print(
        "| configuration | precision | tokens/s | × baseline fp32 | × baseline bf16 | MFU | MFU of bf16 peak | "
        "final loss | peak GB | s to first step | what |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    speed = {n: statistics.median(r["tokens_per_second"] for r in rs) for n, rs in results.items() if rs}
    for name, runs in results.items():
        if not runs:
            continue
        first = runs[0]
        per_token = training_flops_per_token(facts, round(mean_len), first["lora_parameters"])
        mfu = [r["tokens_per_second"] * per_token / peaks[r["precision"]] for r in runs]
        of_bf16 = [r["tokens_per_second"] * per_token / peaks["bf16"] for r in runs]
        bf16_mfu = spread([m * 100 for m in of_bf16]) + "%" if native_bf16 else "–"
        ratio = lambda base, name=name: f"{speed[name] / speed[base]:.2f}" if base in speed else "–"  # noqa: E731
        print(
            f"| {name} | {first['precision']} | {spread([r['tokens_per_second'] for r in runs])} | "
            f"{ratio('baseline fp32')} | {ratio('baseline bf16 flag')} | {spread([m * 100 for m in mfu])}% | "
            f"{bf16_mfu} | {spread([r['loss'] for r in runs], '{:.4f}')} | "
            f"{spread([r['peak_gb'] for r in runs], '{:.2f}')} | {spread([r['first_step_seconds'] for r in runs])} | "
            f"{CONFIGS[name][3]} |"
        )
    for name, error in failed.items():
        print(f"| {name} | failed: {error} | | | | | | | | | {CONFIGS[name][3]} |")
    if results.get("lorapipe fp32"):
        fp32 = statistics.median(r["loss"] for r in results["lorapipe fp32"])
        print()
        for name in ("lorapipe", "+ torch.compile"):
            if results.get(name):
                loss = statistics.median(r["loss"] for r in results[name])
                print(
                    f"- final training loss, {name} against lorapipe fp32 on the same data and steps: "
                    f"{loss:.4f} vs {fp32:.4f} ({(loss - fp32) / fp32 * 100:+.2f}%)"
                )


if __name__ == "__main__":
    main()
