"""The atomic writers every stage's outputs go through (lorapipe.io).

Run: .venv/bin/pytest tests/test_io.py
"""

from __future__ import annotations

import pytest

from lorapipe.io import atomic_dir, atomic_outputs, write_json


def test_outputs_appear_together_only_when_all_are_written(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old.bin").write_text("old")
    with atomic_outputs() as place:
        folder = place(tmp_path / "model", folder=True)
        (folder / "new.bin").write_text("new")
        write_json(place(tmp_path / "metrics.json"), {"loss": 1.0})
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["model"]
        assert (tmp_path / "model" / "old.bin").is_file()  # the old output, whole, until the end
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "model"]
    assert [p.name for p in (tmp_path / "model").iterdir()] == ["new.bin"]


def test_an_error_removes_every_temporary_and_keeps_the_old_outputs(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(RuntimeError), atomic_outputs() as place:
        write_json(place(tmp_path / "metrics.json"), {"loss": 2.0})
        place(tmp_path / "model", folder=True)
        raise RuntimeError("the stage failed")
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert (tmp_path / "metrics.json").read_text() == "{}"


def test_leftovers_of_a_killed_run_are_removed_by_the_next_write(tmp_path):
    (tmp_path / ".model.tmp-abc123").mkdir()
    (tmp_path / ".model.tmp-abc123" / "half.bin").write_text("half")
    (tmp_path / ".model.old-4242").mkdir()
    (tmp_path / ".model-other.tmp-x").write_text("another output's temporary: not ours")
    with atomic_dir(tmp_path / "model") as folder:
        (folder / "whole.bin").write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model-other.tmp-x", "model"]
