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


def test_weights_are_fingerprinted_by_header_and_tensor_samples_not_read_whole(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    rows, _ = _inputs(tmp_path)
    weights = tmp_path / "model.safetensors"
    shapes = {"a": (1024, 1024), "b": (1024, 1024)}  # 8 MiB of float32 data: the middle is not sampled
    save_file({k: np.zeros(v, np.float32) for k, v in shapes.items()}, weights)
    before = fingerprint({}, [rows, weights])
    save_file({k: np.full(v, 0.5, np.float32) for k, v in shapes.items()}, weights)  # same shapes, new weights
    assert fingerprint({}, [rows, weights]) != before
    after = fingerprint({}, [rows, weights])
    data = bytearray(weights.read_bytes())
    data[8 + int.from_bytes(data[:8], "little") + (1 << 20)] ^= 0xFF  # 1 MiB into tensor "a": between its samples
    weights.write_bytes(bytes(data))
    assert fingerprint({}, [rows, weights]) == after  # not read: a 14 GB file is read a few MiB of
    half = {"a": np.full(shapes["a"], 0.5, np.float32), "b": np.full(shapes["b"], 0.25, np.float32)}
    save_file(half, weights)  # one tensor of two replaced (a fine-tune of some layers)
    assert fingerprint({}, [rows, weights]) != after


def test_a_run_resumes_only_on_the_same_base_model_and_chat_template(tmp_path):
    from lorapipe.train import _input_files

    base, dataset = tmp_path / "base", tmp_path / "dataset"
    base.mkdir()
    dataset.mkdir()
    for name in ("train.jsonl", "val.jsonl"):
        (dataset / name).write_text('{"text": "a"}\n')
    (base / "config.json").write_text("{}")
    (base / "chat_template.jinja").write_text("{{ messages[0].content }}")
    (base / "lorapipe_params.yaml").write_text("model.name: org/model\nmodel.revision: aaaa\n")
    files = _input_files(dataset, base)
    assert {p.name for p in files["base model"]} == {"config.json", "chat_template.jinja", "lorapipe_params.yaml"}
    first = fingerprint({}, [*files["dataset"], *files["base model"]])
    (base / "chat_template.jinja").write_text("{{ messages[-1].content }}")
    second = fingerprint({}, [*files["dataset"], *files["base model"]])
    (base / "lorapipe_params.yaml").write_text("model.name: org/model\nmodel.revision: bbbb\n")
    assert len({first, second, fingerprint({}, [*files["dataset"], *files["base model"]])}) == 3


def test_the_accelerate_config_counts_but_not_the_machines_addresses(tmp_path):
    from lorapipe.train import accelerate_settings

    config = tmp_path / "fsdp.yaml"
    config.write_text("distributed_type: FSDP\nnum_machines: 2\nmain_process_ip: 10.0.0.1\nmachine_rank: 1\n")
    assert accelerate_settings(config) == {"distributed_type": "FSDP", "num_machines": 2}
    assert accelerate_settings(tmp_path / "missing.yaml") == {}


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
