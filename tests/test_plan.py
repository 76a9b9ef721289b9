"""`lorapipe plan`: memory and time estimates from the config alone, and the train stage's check.

Run: .venv/bin/pytest tests/test_plan.py
"""

import json
import subprocess
import sys

import pytest

from helpers import ROOT
from lorapipe.params import LoraParams, TrainParams
from lorapipe.plan import estimate_memory_gib, fit_batch, load_facts, plan_report, training_steps


@pytest.mark.parametrize(
    "model, billions",
    [
        ("mistralai/Mistral-7B-v0.1", 7.24),
        ("mistralai/Mistral-7B-Instruct-v0.2", 7.24),
        ("meta-llama/Llama-3.1-8B-Instruct", 8.03),
        ("Qwen/Qwen2.5-7B-Instruct", 7.62),
        ("smollm2-135m-instruct", 0.135),
        ("google/gemma-3-27b-it", 27.0),
    ],
)
def test_parameter_counts_match_the_published_sizes(model, billions):
    # Qwen2's q/k/v biases (0.3 M) and Gemma-3's vision tower are not counted
    assert load_facts(model).parameters / 1e9 == pytest.approx(billions, rel=0.04)


def test_unknown_model_offline_is_a_clear_error():
    with pytest.raises(ValueError, match="no facts for 'nobody/none' offline"):
        load_facts("nobody/none")


@pytest.mark.integration  # 10-25 s: a real model, the converter, a timeout or several processes
def test_estimate_within_25_percent_of_measured_peak_for_the_tiny_model(tmp_path, dataset_dir, tiny_model_dir):
    """Peak resident memory of a real training run in a fresh process against the estimate.

    The peak is VmHWM of the process's own memory: ru_maxrss would also count the pytest process it
    was forked from (Linux keeps the larger of the two across exec)."""
    code = (
        "import json, re; from pathlib import Path; from lorapipe.train import train_lora; "
        "from lorapipe.params import LoraParams, TrainParams; "
        f"train_lora({str(dataset_dir)!r}, {str(tiny_model_dir)!r}, {str(tmp_path / 'a')!r}, lora=LoraParams(rank=8), "
        "train=TrainParams(max_steps=2, batch_size=4, precision='fp32', resume='never', save_steps=0, eval_steps=0)); "
        "kb = int(re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text()).group(1)); "
        "print(json.dumps(kb / 2**20))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    max_len = json.loads((dataset_dir / "stats.json").read_text())["max_seq_len"]
    estimate = estimate_memory_gib(
        load_facts(str(tiny_model_dir)), max_seq_len=max_len, batch_size=4, lora_rank=8, precision="fp32"
    )["total"]
    assert estimate == pytest.approx(measured, rel=0.25), (estimate, measured)


def test_report_says_whether_it_fits_and_how_to_fix_it(tmp_path):
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"rows": {"train": 100}, "tokens": {"train": 40000}}))
    text, fits = plan_report(
        "smollm2-135m-instruct",
        max_seq_len=512,
        batch_size=4,
        lora_rank=16,
        device="cpu",
        precision="fp32",
        device_memory_gib=64,
        steps=10,
        dataset_stats=stats,
    )
    assert fits and "fits" in text and "about" in text and "10 steps" in text
    text, fits = plan_report(
        "mistralai/Mistral-7B-Instruct-v0.2",
        max_seq_len=2048,
        batch_size=4,
        lora_rank=16,
        load_in_4bit=True,
        device="cuda",
        device_memory_gib=8,
    )
    assert not fits and "does NOT fit" in text and "dataset.max_seq_len" in text


def test_autofit_keeps_the_effective_batch():
    facts = load_facts("smollm2-135m-instruct")
    kwargs = {"max_seq_len": 512, "lora_rank": 16, "precision": "fp32"}
    full = estimate_memory_gib(facts, batch_size=8, **kwargs)["total"]
    batch, accum = fit_batch(facts, full / 2, 8, 1, **kwargs)
    assert batch < 8 and batch * accum == 8
    assert fit_batch(facts, 0.1, 8, 1, **kwargs) is None


def test_train_refuses_what_does_not_fit(tmp_path, dataset_dir, tiny_model_dir, monkeypatch):
    from lorapipe import plan
    from lorapipe.train import train_lora

    monkeypatch.setattr(plan, "available_memory_gib", lambda device: 0.2)
    with pytest.raises(MemoryError, match=r"training needs about .* GiB but 0.2 GiB are available.*lorapipe plan"):
        train_lora(dataset_dir, tiny_model_dir, tmp_path / "a", train=TrainParams(max_steps=1))
    assert not (tmp_path / "a").exists()


def test_train_autofit_lowers_the_batch(tmp_path, dataset_dir, tiny_model_dir, monkeypatch, capsys):
    from lorapipe import plan
    from lorapipe.train import train_lora

    facts = load_facts(str(tiny_model_dir))
    needed = estimate_memory_gib(facts, max_seq_len=64, batch_size=2, lora_rank=4, precision="fp32")["total"]
    monkeypatch.setattr(plan, "available_memory_gib", lambda device: needed + 0.001)
    result = train_lora(
        dataset_dir,
        tiny_model_dir,
        tmp_path / "a",
        lora=LoraParams(rank=4),
        train=TrainParams(max_steps=1, batch_size=8, precision="fp32", autofit=True, save_steps=0),
    )
    assert "train.autofit: batch_size 8 → 2, grad_accum 1 → 4" in capsys.readouterr().out
    assert (result.resolved.batch_size, result.resolved.grad_accum) == (2, 4)


def test_plan_cli_exit_codes():
    base = [sys.executable, "-m", "lorapipe.cli", "plan", "--params", str(ROOT / "params.yaml"), "--device", "cpu"]
    ok = subprocess.run(
        base + ["--model", "smollm2-135m-instruct", "--device-memory-gb", "64"],
        capture_output=True,
        text=True,
        cwd=ROOT / "tests",
    )
    assert ok.returncode == 0 and "fits" in ok.stdout
    no = subprocess.run(
        base + ["--model", "Qwen/Qwen2.5-7B-Instruct", "--device-memory-gb", "4"],
        capture_output=True,
        text=True,
        cwd=ROOT / "tests",
    )
    assert no.returncode == 1 and "does NOT fit" in no.stdout and "fix" in no.stdout


def test_train_skips_the_check_for_configs_plan_does_not_know(tmp_path, capsys):
    from transformers import GPT2Config

    from lorapipe.plan import check_fit

    GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100).save_pretrained(tmp_path)
    fit = check_fit(
        tmp_path,
        device="cpu",
        precision="fp32",
        load_in_4bit=False,
        max_seq_len=64,
        batch_size=4,
        grad_accum=1,
        lora_rank=8,
        target_modules="auto",
        autofit=False,
    )
    assert (fit.batch_size, fit.grad_accum) == (4, 1)
    assert "memory check skipped" in capsys.readouterr().out


def test_model_flops_per_token_follow_the_definition():
    from lorapipe.plan import training_flops_per_token

    facts = load_facts("smollm2-135m-instruct")
    matrices = facts.parameters - facts.num_hidden_layers * 2 * facts.hidden_size - facts.hidden_size
    flops = training_flops_per_token(facts, 512)
    attention = 3 * 2 * facts.num_hidden_layers * facts.num_attention_heads * facts.head_dim * 512
    assert flops == 4 * matrices + attention  # tied embeddings: the LM head counted once, the lookup never
    assert training_flops_per_token(facts, 512, lora_parameters=1000) == flops + 6000
    assert training_flops_per_token(facts, 1024) > flops
    with_checkpointing = training_flops_per_token(facts, 512, gradient_checkpointing=True)
    assert with_checkpointing == flops + 2 * matrices + attention / 3  # the forward pass once more


def test_speed_for_a_gpu_that_is_not_here(monkeypatch):
    monkeypatch.setattr("lorapipe.plan.cuda_available", lambda: False)
    text, _ = plan_report(
        "mistralai/Mistral-7B-v0.1",
        max_seq_len=512,
        batch_size=2,
        lora_rank=16,
        load_in_4bit=True,
        device="cuda",
        device_memory_gib=8,
        peak_tflops=100,
    )
    # the given peak is a datasheet figure: 80% of it is what the efficiency was measured against
    assert "tokens/s" in text and "of 80.00 TFLOP/s (80% of the 100 given: what a large product reaches)" in text
    text, _ = plan_report(
        "mistralai/Mistral-7B-v0.1",
        max_seq_len=512,
        batch_size=2,
        lora_rank=16,
        load_in_4bit=True,
        device="cuda",
        device_memory_gib=8,
    )
    assert "not estimated" in text and "--peak-tflops" in text


def test_steps_from_epochs_count_every_process_and_are_the_ones_plan_reports(tmp_path):
    """One function counts steps for train and plan: with 2 processes an epoch takes half the steps."""
    assert training_steps(10, batch_size=2, grad_accum=1, epochs=1, max_steps=-1) == 5
    assert training_steps(10, batch_size=2, grad_accum=1, epochs=1, max_steps=-1, processes=2) == 3
    assert training_steps(10, batch_size=2, grad_accum=2, epochs=2, max_steps=-1, processes=2) == 3
    assert training_steps(1, batch_size=8, grad_accum=4, epochs=0.1, max_steps=-1) == 1
    assert training_steps(10, batch_size=2, grad_accum=1, epochs=1, max_steps=7, processes=2) == 7
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"rows": {"train": 100}, "tokens": {"train": 40000}}))
    report = {}
    for processes in (1, 2):
        text, _ = plan_report(
            "smollm2-135m-instruct",
            max_seq_len=512,
            batch_size=4,
            lora_rank=16,
            device="cpu",
            precision="fp32",
            device_memory_gib=64,
            steps=-1,
            epochs=1,
            processes=processes,
            dataset_stats=stats,
            peak_tflops=1,
        )
        report[processes] = text
    assert "for 25 steps" in report[1] and "for 13 steps" in report[2]


def test_epochs_and_lr_auto_are_sized_from_the_data_and_plan_uses_the_same_size(tmp_path):
    """train.epochs/lr auto: document text keeps 1 epoch at 3e-4; labeled rows alone get about 2,100
    examples in all (1 to 10 epochs) at 2e-3 × 576 / hidden size (at most 2e-3)."""
    from lorapipe.plan import sized_epochs, sized_lr

    assert sized_epochs(531, labeled_only=True) == 3.95 and sized_epochs(2105, labeled_only=True) == 1.0
    assert sized_epochs(20, labeled_only=True) == 10.0 and sized_epochs(50_000, labeled_only=True) == 1.0
    assert sized_epochs(20, labeled_only=False) == 1.0 and sized_lr(576, labeled_only=False) == 3e-4
    assert sized_lr(576, labeled_only=True) == 2e-3 and sized_lr(64, labeled_only=True) == 2e-3
    assert sized_lr(4096, labeled_only=True) == pytest.approx(2.8125e-4) and sized_lr(None, True) == 2e-3
    assert TrainParams().epochs == "auto" and TrainParams(lr="AUTO").lr == "auto"
    with pytest.raises(ValueError):
        TrainParams(epochs=0)
    steps = {}
    for kind in ("chat", "text"):
        stats = tmp_path / f"{kind}.json"
        stats.write_text(
            json.dumps({"rows": {"train": 100}, "tokens": {"train": 4000}, "tasks": {"t": {"kind": kind}}})
        )
        text, _ = plan_report(
            "smollm2-135m-instruct",
            max_seq_len=128,
            batch_size=4,
            lora_rank=16,
            device="cpu",
            precision="fp32",
            device_memory_gib=64,
            epochs="auto",
            dataset_stats=stats,
            peak_tflops=1,
        )
        steps[kind] = text
    assert "for 250 steps" in steps["chat"] and "for 25 steps" in steps["text"]  # 10 epochs of 25 steps; 1


def test_plan_task_times_one_tasks_rows_as_train_task_trains(tmp_path):
    """`lorapipe plan --task NAME`: the time of `lorapipe train --task NAME`, from that task's rows and
    tokens in stats.json, epochs auto sized from them alone; an unknown task is refused naming the tasks."""
    stats = tmp_path / "stats.json"
    tasks = {
        "docs": {"kind": "text", "train": {"rows": 900, "tokens": 400_000}},
        "queries": {"kind": "chat", "train": {"rows": 100, "tokens": 4_000}},
    }
    stats.write_text(json.dumps({"rows": {"train": 1000}, "tokens": {"train": 404_000}, "tasks": tasks}))

    def plan(task):
        return plan_report(
            "smollm2-135m-instruct",
            max_seq_len=512,
            batch_size=4,
            lora_rank=16,
            device="cpu",
            precision="fp32",
            device_memory_gib=64,
            epochs="auto",
            dataset_stats=stats,
            peak_tflops=1,
            task=task,
        )[0]

    every, queries, docs = plan(None), plan("queries"), plan("docs")
    assert "for 250 steps" in every and "epochs auto: 1 for the rows of all tasks" in every  # text in the data: 1 epoch
    assert "for 250 steps" in queries and "epochs auto: 10 for the rows of task queries" in queries  # 2,100 / 100 → 10
    assert "for 225 steps" in docs and "(~400 k tokens" in docs  # 900 rows of 400 tokens at 1 epoch
    with pytest.raises(ValueError, match=r"--task 'nope': .*stats.json holds the tasks docs, queries"):
        plan("nope")
    stats.write_text(json.dumps({"rows": {"train": 1000}, "tokens": {"train": 404_000}}))  # before per-task counts
    with pytest.raises(ValueError, match=r"--task 'queries': .*stats.json predates per-task counts; rebuild it"):
        plan("queries")
    assert "\ntime        about" in plan(None)  # without a task, an older stats.json still gives the time
    stats.unlink()
    with pytest.raises(ValueError, match=r"--task 'queries' needs a built dataset: no stats.json at .*stats.json"):
        plan("queries")
    assert "\ntime" not in plan(None)  # without a task the plan just leaves the time out


def test_gpu_efficiency_follows_the_measured_sizes_and_stays_between_them():
    from lorapipe.plan import GPU_EFFICIENCY, training_efficiency

    (small, low), (large, high) = GPU_EFFICIENCY
    assert training_efficiency("cuda", small) == low and training_efficiency("cuda", large) == high
    assert training_efficiency("cuda", 1024) == low and training_efficiency("cuda", 8192) == high
    assert low < training_efficiency("cuda", 3072) < high
    assert training_efficiency("cpu", 576) == training_efficiency("cpu", 8192)


def test_compile_pays_from_the_planned_tokens_on_each_device():
    from lorapipe.plan import COMPILE_BREAK_EVEN_TOKENS, compile_pays

    for device, tokens in COMPILE_BREAK_EVEN_TOKENS.items():
        assert compile_pays(device, tokens) and not compile_pays(device, tokens - 1)
        assert not compile_pays(device, tokens * 100, load_in_4bit=True)  # 4-bit compiled was not measured
    assert not compile_pays("mps", 1e12)  # a device without a measurement is never compiled
    assert not compile_pays("cpu", 1e9, one_length=False)  # chat rows: every new length compiles again
    assert not compile_pays("cuda", 1e12, gradient_checkpointing=True)  # graph breaks: not measured
    assert not compile_pays("cpu", 16 * 2 * 512)  # make run: 16 steps of 2 rows of ≤512 tokens
    # float32 on the CPU (no native bfloat16): compiled steps measured no faster, so never; CUDA unaffected
    assert not compile_pays("cpu", 1e12, precision="fp32") and compile_pays("cuda", 1e12, precision="fp32")
    assert compile_pays("cpu", 1e12, precision="bf16")


def test_a_warm_up_as_long_as_the_run_is_warned_of(capsys):
    from lorapipe.plan import warn_warmup

    assert warn_warmup(1000, 4) is True
    said = capsys.readouterr().err
    assert "train.warmup_steps (1000) is not below the run's 4 optimizer step(s)" in said
    assert "(at most 0% of it); lower train.warmup_steps" in said  # 4 / 1000 of train.lr
    assert warn_warmup(4, 4) is True and "at most 100% of it" in capsys.readouterr().err
    assert warn_warmup(2, 16) is False and warn_warmup(0, 0) is False
    assert capsys.readouterr().err == ""
