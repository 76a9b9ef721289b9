"""Where one training step's time goes: torch.profiler over a step of lorapipe's train stage on the
bundled SmolLM2-135M at 4 × 512 tokens (the sample corpus packed into 512-token blocks), the time of
each operator class as a share of the step's wall clock.

Run: .venv/bin/python bench/profile_step.py [--steps 3] [--precision auto] [--torch-compile false]
     [--trainer-arg KEY=JSON ...]   (a few minutes on 2 cores)

The step profiled is the last of --steps (the first ones warm up: allocations, inductor's compiling);
the trainer is lorapipe.train's, so what is profiled is what `dvc repro` runs. Each operator's *self*
CPU time (time in the operator minus the operators it called) goes to one class: matrix multiplies
(mm, addmm, bmm, linear's products), attention (scaled dot-product), the loss (log-softmax, NLL,
cross-entropy over the 49k vocabulary), norms (RMSNorm's pow/mean/rsqrt), the optimizer (fused AdamW
and gradient clipping), copies and casts, elementwise arithmetic, and other operators; what no
operator accounts for is Python and framework overhead (the trainer, autograd's bookkeeping, data
collation). Written to stdout as a markdown table, largest first; `--json FILE` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

# operator name fragments → class, first match wins (aten names as the profiler reports them)
CLASSES = [
    ("matrix multiply", ("aten::mm", "aten::addmm", "aten::bmm", "aten::_addmm", "mkldnn", "aten::linear")),
    ("kernels fused by inductor (torch.compile)", ("cpp_fused", "triton_", "compiledfxgraph")),
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention")),
    ("loss (log-softmax, NLL)", ("log_softmax", "nll_loss", "cross_entropy", "_softmax_backward")),
    ("norms (RMSNorm)", ("aten::pow", "aten::mean", "aten::rsqrt", "rms_norm")),
    ("optimizer (AdamW, clipping)", ("adam", "_foreach", "clip_grad", "aten::norm", "linalg_vector_norm")),
    ("copies and casts", ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone", "aten::contiguous", "cat")),
    ("embedding", ("embedding",)),
    ("elementwise", ("aten::mul", "aten::add", "aten::silu", "aten::sub", "aten::div", "aten::neg", "sigmoid")),
]


def classify(name: str) -> str:
    lowered = name.lower()
    for label, fragments in CLASSES:
        if any(fragment in lowered for fragment in fragments):
            return label
    return "other operators"


def profile(work: Path, steps: int, precision: str, torch_compile, trainer_args: dict) -> dict:
    """Train `steps` steps with train_lora, profiling the last; the shares by class."""
    import torch
    from transformers import TrainerCallback

    import lorapipe.train as train_module
    from lorapipe.params import LoraParams, TrainParams

    class Profile(TrainerCallback):
        def __init__(self) -> None:
            self.profiler = None
            self.wall = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == steps - 1:
                self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                self.profiler.start()
                self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.profiler is not None and state.global_step == steps:
                self.wall = time.perf_counter() - self.started
                self.profiler.stop()

    probe = Profile()
    original = train_module._trainer

    def trainer(model, tokenizer, seq2seq, train_ids, val_ids, callbacks, patience, **args):
        return original(model, tokenizer, seq2seq, train_ids, val_ids, [*callbacks, probe], patience, **args)

    train_module._trainer = trainer
    result = train_module.train_lora(
        work / "dataset",
        work / "base",
        work / "adapter",
        lora=LoraParams(),
        train=TrainParams(
            max_steps=steps,
            batch_size=4,
            log_every=1,
            eval_steps=0,
            save_steps=0,
            resume="never",
            precision=precision,
            torch_compile=torch_compile,
        ),
        checkpoint_dir=work / "checkpoints",
        trainer_args={"dataloader_drop_last": True, **trainer_args},
    )
    events = probe.profiler.key_averages()
    wall_us = probe.wall * 1e6
    by_class: dict[str, float] = {}
    top: list[tuple[str, float]] = []
    for event in events:
        self_us = event.self_cpu_time_total
        by_class[classify(event.key)] = by_class.get(classify(event.key), 0.0) + self_us
        top.append((event.key, self_us))
    # on 2 cores the operators' intra-op threads overlap; self CPU time is the calling thread's time
    by_class["Python and framework overhead (no operator)"] = max(wall_us - sum(by_class.values()), 0.0)
    return {
        "step_s": round(probe.wall, 2),
        "tokens": 4 * 512,
        "precision": result.resolved.precision,
        "torch_compile": result.resolved.torch_compile,
        "shares": {k: round(v / wall_us, 4) for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])},
        "top_operators": [(k, round(v / wall_us, 4)) for k, v in sorted(top, key=lambda kv: -kv[1])[:15]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="steps to train; the last is profiled")
    parser.add_argument("--precision", default="auto", help="train.precision: auto | fp32 | bf16")
    parser.add_argument("--torch-compile", default="false", help="train.torch_compile: true | false | auto")
    parser.add_argument("--trainer-arg", action="append", default=[], help="KEY=JSON, a TrainingArguments setting")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    from bench_train import prepare

    compile_value = {"true": True, "false": False}.get(args.torch_compile, args.torch_compile)
    extra = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.trainer_arg)}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        prepare(work)
        out = profile(work, args.steps, args.precision, compile_value, extra)
    print(
        f"One step of 4 × 512 tokens, {out['precision']}, torch_compile {out['torch_compile']}: "
        f"{out['step_s']} s ({out['tokens'] / out['step_s']:.0f} tokens/s)\n"
    )
    print("| where | share of the step |\n|---|---|")
    for label, share in out["shares"].items():
        print(f"| {label} | {share:.1%} |")
    print("\nTop operators by self CPU time:\n\n| operator | share |\n|---|---|")
    for name, share in out["top_operators"]:
        print(f"| `{name}` | {share:.1%} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
