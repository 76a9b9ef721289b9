"""Training checkpoints in the cache: one folder per run fingerprint, only complete ones resumed.

Run: .venv/bin/pytest tests/test_checkpoints.py
"""

from __future__ import annotations

from lorapipe.checkpoints import STATE_FILE, Checkpoints, fingerprint


def _inputs(tmp_path):
    rows = tmp_path / "train.jsonl"
    rows.write_text('{"text": "a"}\n')
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * 64)
    return rows, weights


def test_the_fingerprint_follows_params_and_file_content(tmp_path):
    rows, weights = _inputs(tmp_path)
    first = fingerprint({"rank": 8}, [rows, weights])
    assert first == fingerprint({"rank": 8}, [weights, rows])  # order of the files does not matter
    assert first != fingerprint({"rank": 16}, [rows, weights])
    rows.write_text('{"text": "b"}\n')
    assert first != fingerprint({"rank": 8}, [rows, weights])


def test_weights_are_fingerprinted_by_size_not_read(tmp_path):
    rows, weights = _inputs(tmp_path)
    before = fingerprint({}, [rows, weights])
    weights.write_bytes(b"\1" * 64)  # same size: a 14 GB file is not read
    assert fingerprint({}, [rows, weights]) == before
    weights.write_bytes(b"\1" * 65)
    assert fingerprint({}, [rows, weights]) != before


def test_only_complete_checkpoints_of_this_run_are_resumed(tmp_path):
    checkpoints = Checkpoints("run-a", tmp_path)
    for step, complete in ((2, True), (10, True), (12, False)):  # 12 was cut off mid-save
        folder = checkpoints.folder / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if complete:
            (folder / STATE_FILE).write_text("{}")
    (tmp_path / "run-b" / "checkpoint-50").mkdir(parents=True)
    assert [p.name for p in checkpoints.saved()] == ["checkpoint-2", "checkpoint-10"]  # by step, not name
    assert checkpoints.latest().name == "checkpoint-10"
    assert checkpoints.others() == [tmp_path / "run-b"]
    checkpoints.clear()
    assert checkpoints.latest() is None and not checkpoints.folder.exists()
