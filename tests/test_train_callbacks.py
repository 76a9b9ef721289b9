"""lorapipe.train_callbacks: loss-token counting, progress history, the best adapter, the
out-of-memory message; the perplexity helper they use (lorapipe.likelihood.perplexity).

Run: .venv/bin/pytest tests/test_train_callbacks.py
"""

import math
from types import SimpleNamespace

import pytest
import torch

from lorapipe.likelihood import PERPLEXITY_CAP, perplexity
from lorapipe.train_callbacks import Best, BestAdapter, LossTokens, Progress, out_of_memory_advice


def test_perplexity_is_exp_of_the_loss_capped():
    assert perplexity(0.0) == 1.0
    assert perplexity(2.5) == math.exp(2.5)
    assert perplexity(1e6) == math.exp(PERPLEXITY_CAP)  # a diverged run: large, finite


class _Tiny(torch.nn.Module):
    def forward(self, input_ids=None, labels=None):
        return input_ids


def test_loss_tokens_count_shifted_labels_of_training_passes_only():
    model = _Tiny()
    counter = LossTokens(model)
    labels = torch.tensor([[-100, 5, 6, -100], [1, 2, -100, -100]])  # after the shift: 2 and 1 carry loss
    model.train()
    model(input_ids=labels, labels=labels)
    assert counter.value == 3
    model.eval()
    model(input_ids=labels, labels=labels)  # evaluation passes are not counted
    assert counter.value == 3
    assert LossTokens(_Tiny(), seq2seq=True).value == 0  # nothing counted yet


def test_each_callback_has_its_own_state():
    counter = LossTokens(_Tiny())
    first, second = Progress(4, counter), Progress(4, counter)
    first.history.append((1, 2.0))
    assert second.history == [] and first.evals is not second.evals
    a, b = BestAdapter(), BestAdapter()
    state = SimpleNamespace(global_step=3)
    model = _peft_model()
    a.on_evaluate(None, state, None, metrics={"eval_loss": 1.5}, model=model)
    assert b.best is None and isinstance(a.best, Best)
    assert (a.best.value, a.best.step) == (1.5, 3) and a.best.weights
    a.on_evaluate(None, SimpleNamespace(global_step=4), None, metrics={"eval_loss": 1.7}, model=model)
    assert a.best.step == 3  # a higher loss does not replace the best
    task = BestAdapter("eval_slot_f1", greater_is_better=True)  # a task metric: higher is better
    for step, f1 in ((2, 0.4), (4, 0.7), (6, 0.7), (8, 0.5)):
        task.on_evaluate(None, SimpleNamespace(global_step=step), None, metrics={"eval_slot_f1": f1}, model=model)
    assert (task.best.value, task.best.step) == (0.7, 4)  # the first of equal scores


def _peft_model():
    from peft import LoraConfig, get_peft_model

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    return get_peft_model(Net(), LoraConfig(r=2, target_modules=["proj"]))


def test_progress_logs_history_and_reports_metrics(capsys):
    reported = []
    progress = Progress(4, LossTokens(_Tiny()), lambda step, m: reported.append((step, m)))
    state = SimpleNamespace(log_history=[{"step": 1, "loss": 3.0}], global_step=1, is_world_process_zero=True)
    progress.on_train_begin(None, state, None)  # resumed at step 1: the history so far is kept
    state.global_step = 2
    progress.on_log(None, state, None, logs={"loss": 2.5, "learning_rate": 1e-3})
    progress.on_log(None, state, None, logs={"eval_loss": 2.0})
    assert progress.history == [(1, 3.0), (2, 2.5)] and progress.evals == [(2, 2.0)]
    assert [step for step, _ in reported] == [2, 2]
    assert reported[1][1] == {"eval_loss": 2.0, "eval_perplexity": math.exp(2.0)}
    assert "[train] step 2/4 loss 2.5000" in capsys.readouterr().out


def test_out_of_memory_becomes_advice_and_other_errors_pass():
    with pytest.raises(MemoryError, match=r"estimated peak 3.5 GiB.*Use train.batch_size 2, or set train.autofit"):
        with out_of_memory_advice(3.5, ["train.batch_size 2"]):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(MemoryError, match="can't allocate memory"):
        with out_of_memory_advice(None, []):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: can't allocate memory")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with out_of_memory_advice(None, []):
            raise RuntimeError("shape mismatch")
