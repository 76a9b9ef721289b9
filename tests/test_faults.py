"""The fault-injection switch (lorapipe.faults): its one variable's grammar, and refusing malformed
values. The kills themselves, at every stage's points under `dvc repro`, are
tests/integration/test_fault_points.py.

Run: .venv/bin/pytest tests/test_faults.py
"""

from __future__ import annotations

import pytest

from lorapipe.faults import FAULT_ENV, Fault, active, armed, parse


def test_a_malformed_fault_variable_is_refused(monkeypatch):
    from lorapipe import faults

    monkeypatch.setenv(FAULT_ENV, "train:halfway")
    with pytest.raises(ValueError, match="LORAPIPE_FAULT='train:halfway'.*early, mid, writing"):
        faults.enter_stage("train")


@pytest.mark.parametrize(
    "value, fault",
    [
        ("train:mid", Fault("train", "mid")),
        ("evaluate_base:early", Fault("evaluate_base", "early")),
        ("train:kill-after-checkpoint:3", Fault("train", "kill-after-checkpoint", "3")),
        ("train:oom-at-step:12", Fault("train", "oom-at-step", "12")),
        ("extract:crash:a b.pdf", Fault("extract", "crash", "a b.pdf")),
        ("extract:hang:odd:name.md", Fault("extract", "hang", "odd:name.md")),  # a file name may hold a colon
    ],
)
def test_the_fault_grammar(value, fault):
    assert parse(value) == fault


@pytest.mark.parametrize(
    "value",
    [
        "train",
        "train:",
        ":mid",
        "train:mid:3",
        "Train:mid",
        "train:halfway",
        "train:kill-after-checkpoint",
        "train:kill-after-checkpoint:",
        "train:kill-after-checkpoint:0",
        "train:oom-at-step:two",
        "extract:crash",
        "extract:crash:",
        "train:crash:a.md",
        "extract:oom-at-step:2",
        "kill-after-checkpoint:3",
        "hang:c.md",  # the old LORAPIPE_TRAIN_FAULT / LORAPIPE_EXTRACT_FAULT values
        "trian:early",  # a misspelt stage would never fire
        "bogus:mid",
        "train:oom-at-step:01",  # steps are compared as written in the logs
        "train:oom-at-step:²",
        "train:oom-at-step:-2",
    ],
)
def test_malformed_values_are_refused_naming_the_grammar(value, monkeypatch):
    with pytest.raises(ValueError, match=r"LORAPIPE_FAULT=.*expected <stage>:<point>.*train:oom-at-step:<step>"):
        parse(value)
    monkeypatch.setenv(FAULT_ENV, value)
    with pytest.raises(ValueError):
        armed("train", "mid")


def test_armed_names_exactly_one_fault(monkeypatch):
    monkeypatch.delenv(FAULT_ENV, raising=False)
    assert active() is None and not armed("train", "mid")
    monkeypatch.setenv(FAULT_ENV, "train:kill-after-checkpoint:3")
    assert armed("train", "kill-after-checkpoint", 3)
    assert not armed("train", "kill-after-checkpoint", 2) and not armed("train", "oom-at-step", 3)
    monkeypatch.setenv(FAULT_ENV, "extract:crash:a.md")
    assert armed("extract", "crash", "a.md") and not armed("extract", "hang", "a.md")
    assert not armed("extract", "crash", "b.md")
