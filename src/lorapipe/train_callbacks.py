"""What lorapipe adds to the HF trainer's loop: the loss-token counter, progress lines and metrics,
the task metric an evaluation can select on, the best adapter, the tests' fault points, and the
out-of-memory message.

Only training imports this module (it imports torch and transformers); `lorapipe.train` imports it
inside the functions that train, so `lorapipe check` and `--help` never load them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from transformers import TrainerCallback

from lorapipe import faults
from lorapipe.likelihood import perplexity

OnLog = Callable[[int, dict[str, float]], None]


class LossTokens:
    """Counts the tokens that carry loss (label not -100, after the causal shift) in every training
    forward pass of `model`: the numerator of lorapipe's tokens per second, which leaves out
    padding, prompts and each row's first token. The count stays on the device until read."""

    def __init__(self, model: torch.nn.Module, seq2seq: bool = False):
        self.seq2seq = seq2seq
        self.total: torch.Tensor | None = None
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        labels = kwargs.get("labels")
        if module.training and labels is not None:
            counted = (labels if self.seq2seq else labels[..., 1:]).ne(-100).sum()
            self.total = counted if self.total is None else self.total + counted

    @property
    def value(self) -> int:
        """Loss-carrying tokens counted so far by this process."""
        return 0 if self.total is None else int(self.total)


class Progress(TrainerCallback):
    """Prints a progress line per logged step and evaluation, keeps the loss history (rebuilt from
    the trainer state on resume) and reports metrics to `on_log`: speed in loss-carrying tokens per
    second from `counter`. The last step saves no checkpoint (the adapter is saved right after).

    `history` and `evals` are lists of (optimizer step, loss) of the main process."""

    def __init__(self, steps: int, counter: LossTokens, on_log: OnLog | None = None):
        self.steps, self.counter, self.report = steps, counter, on_log
        self.history: list[tuple[int, float]] = []
        self.evals: list[tuple[int, float]] = []
        self.first_step = 0
        self.started = self.window_start = time.perf_counter()
        self.window_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.history = [(log["step"], log["loss"]) for log in state.log_history if "loss" in log]
        self.evals = [(log["step"], log["eval_loss"]) for log in state.log_history if "eval_loss" in log]
        self.first_step = state.global_step
        self.started = self.window_start = time.perf_counter()
        self.window_tokens = self.counter.value

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log, control.should_save = True, False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if "loss" in logs:
            self._log_loss(state.global_step, logs)
        if "eval_loss" in logs:
            self._log_eval(state.global_step, logs["eval_loss"])

    def _log_loss(self, step: int, logs: dict[str, float]) -> None:
        now, tokens = time.perf_counter(), self.counter.value
        speed = (tokens - self.window_tokens) / max(now - self.window_start, 1e-9)
        self.window_start, self.window_tokens = now, tokens
        eta = (now - self.started) / max(step - self.first_step, 1) * (self.steps - step)
        self.history.append((step, logs["loss"]))
        print(
            f"[train] step {step}/{self.steps} loss {logs['loss']:.4f} lr {logs['learning_rate']:.2e} "
            f"{speed:.0f} tok/s eta {eta:.0f}s",
            flush=True,
        )
        if self.report:
            self.report(
                step,
                {
                    "loss": logs["loss"],
                    "learning_rate": logs["learning_rate"],
                    "grad_norm": float(logs.get("grad_norm", 0.0)),
                    "tokens_per_second": speed,
                    "loss_tokens": tokens,
                },
            )

    def _log_eval(self, step: int, loss: float) -> None:
        self.evals.append((step, loss))
        print(f"[train] step {step}/{self.steps} eval loss {loss:.4f} (perplexity {perplexity(loss):.2f})", flush=True)
        if self.report:
            self.report(step, {"eval_loss": loss, "eval_perplexity": perplexity(loss)})


class Best(NamedTuple):
    """The adapter of the best evaluation so far: its metric value, optimizer step, weights (a copy) and
    eval loss (the tie-break between equal task scores)."""

    value: float
    step: int
    weights: dict[str, torch.Tensor]
    loss: float = float("inf")


class BestAdapter(TrainerCallback):
    """Keeps a copy of the adapter weights of the best evaluation, in memory (LoRA weights are
    megabytes): the lowest `metric` (``eval_loss``), or the highest with `greater_is_better` (a task
    metric, ``eval_<name>``, that TaskMetric adds); of equal task scores (a metric that saturates, such
    as a parse rate of 1.0), the lower eval loss. `best` is None until the first evaluation.

    With `keep` (the run keeps the best adapter: early stopping or a task metric), the best so far is
    also written beside each checkpoint (BEST_FILE, safetensors; its value, step and eval loss in the
    metadata) and read back by `resume`, so that a run killed and resumed still keeps the best adapter
    of before the kill."""

    BEST_FILE = "lorapipe_best_adapter.safetensors"

    def __init__(self, metric: str = "eval_loss", greater_is_better: bool = False, keep: bool = False):
        self.metric, self.greater, self.keep = metric, greater_is_better, keep
        self.best: Best | None = None

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not self.keep or self.best is None or not state.is_world_process_zero or not folder.is_dir():
            return
        from safetensors.torch import save_file

        weights = {k: v.detach().cpu().contiguous() for k, v in self.best.weights.items()}
        meta = {"value": repr(float(self.best.value)), "step": str(self.best.step), "loss": repr(float(self.best.loss))}
        save_file(weights, folder / self.BEST_FILE, metadata={"metric": self.metric, **meta})

    def resume(self, checkpoint: str | Path | None) -> None:
        """Take the best adapter saved beside `checkpoint` (the folder a run resumes from), if any and of
        the same metric."""
        path = Path(checkpoint) / self.BEST_FILE if checkpoint else None
        if path is None or not path.is_file():
            return
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as saved:
            meta = saved.metadata() or {}
            if meta.get("metric") != self.metric:
                return
            weights = {k: saved.get_tensor(k) for k in saved.keys()}
        self.best = Best(float(meta["value"]), int(meta["step"]), weights, float(meta["loss"]))

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        from peft import get_peft_model_state_dict

        value = (metrics or {}).get(self.metric)
        if value is None:
            return
        loss = float((metrics or {}).get("eval_loss", float("inf")))
        best = self.best
        better = best is None or (
            (value > best.value or (value == best.value and loss < best.loss)) if self.greater else value < best.value
        )
        if better:
            weights = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
            self.best = Best(value, state.global_step, weights, loss)


class TaskMetric(TrainerCallback):
    """train.select_metric as a task metric: at each evaluation the model answers `requests` (validation
    conversations) greedily, at most `max_new_tokens` tokens each (generation.generate_batches), the
    answers are scored against `expected` (scoring.score_answers, then flat_scores' `metric`) and
    ``eval_<metric>`` (a share, 0-1) joins the evaluation's metrics before BestAdapter and transformers'
    EarlyStoppingCallback read them (they come after it in the callback list) and is printed and
    reported to `on_log`. The last step is evaluated too, so the final adapter is a candidate.

    Costs one greedy decoding of the validation conversations per evaluation (batches of 8)."""

    def __init__(
        self,
        metric: str,
        tokenizer,
        requests: list[list[dict]],
        expected: list[str],
        max_new_tokens: int,
        on_log: OnLog | None = None,
    ):
        self.metric, self.tokenizer, self.requests, self.expected = metric, tokenizer, requests, expected
        self.max_new_tokens, self.report = max_new_tokens, on_log

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = True

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        from lorapipe.generation import generate_batches
        from lorapipe.scoring import flat_scores, score_answers

        training = model.training
        model.eval()
        # bf16 training holds the frozen weights in bfloat16 under autocast (train._load_model): decode the same way
        bf16 = bool(getattr(args, "bf16", False))
        try:
            with torch.autocast(device_type=model.device.type, dtype=torch.bfloat16, enabled=bf16):
                got = generate_batches(
                    model,
                    self.tokenizer,
                    self.requests,
                    self.max_new_tokens,
                    source=f"step {state.global_step}'s adapter",
                )
        finally:
            model.train(training)
        scores = flat_scores(score_answers([g.text for g in got], self.expected, truncated=[g.truncated for g in got]))
        value = scores[self.metric]
        metrics[f"eval_{self.metric}"] = value
        if state.is_world_process_zero:
            print(f"[train] step {state.global_step}/{state.max_steps} {self.metric} {value:.4f}", flush=True)
            if self.report:
                self.report(state.global_step, {f"eval_{self.metric}": value})


class FaultPoints(TrainerCallback):
    """The training fault points of lorapipe.faults: ``train:mid`` at half the steps,
    ``train:oom-at-step:N`` as step N begins, ``train:kill-after-checkpoint:N`` after step N's checkpoint."""

    def on_step_begin(self, args, state, control, **kwargs):
        if faults.armed("train", "oom-at-step", state.global_step + 1):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by a test)")

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == max(1, state.max_steps // 2):
            faults.fault_point("mid")

    def on_save(self, args, state, control, **kwargs):
        if faults.armed("train", "kill-after-checkpoint", state.global_step):
            faults.kill(f"train:kill-after-checkpoint:{state.global_step}")


def _is_out_of_memory(exc: BaseException) -> bool:
    # Some allocators raise a plain RuntimeError; only its text says it was memory.
    text = str(exc)
    return (
        isinstance(exc, (torch.OutOfMemoryError, MemoryError))
        or "out of memory" in text.lower()
        or "can't allocate memory" in text
    )


@contextmanager
def out_of_memory_advice(estimate_gib: float | None, fixes: list[str]) -> Iterator[None]:
    """Turn an out-of-memory error in the block into a MemoryError that says what to change: `fixes`
    (the fit check's suggestions) and the estimated peak in GiB, when known. Other errors pass."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        if not _is_out_of_memory(exc):
            raise
        text = str(exc)
        estimated = f" (estimated peak {estimate_gib:.1f} GiB)" if estimate_gib else ""
        raise MemoryError(
            f"training ran out of memory{estimated}: {text.splitlines()[0] if text else type(exc).__name__}. "
            + (f"Use {' or '.join(fixes)}, or " if fixes else "Use a smaller batch, sequence length or rank, or ")
            + "set train.autofit: true; `lorapipe plan --device-memory-gb <less>` shows what fits"
        ) from exc
