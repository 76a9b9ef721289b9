"""params.yaml, its schema and dvc.yaml agree, and bad params fail before any work.

Run: .venv/bin/pytest tests/test_params.py
"""

import pytest
import yaml

from helpers import ROOT
from lorapipe import paths
from lorapipe.cli import build_parser
from lorapipe.params import STAGE_SECTIONS, ParamsError, Params, load_params, section_keys, stage_keys, validate_params

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def _lookup(raw, dotted):
    node = raw
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"{dotted} is not in params.yaml"
        node = node[part]
    return node


def test_params_yaml_loads_into_schema():
    params = load_params(ROOT / "params.yaml")
    assert params.model.name == "smollm2-135m-instruct"
    assert params.dataset.max_seq_len == 512 and params.dataset.overlap_tokens == 64
    assert params.export.quants == ["Q4_K_M"]


def test_every_dvc_param_exists_in_params_yaml_and_schema():
    for stage, spec in DVC.items():
        for key in spec.get("params", []):
            _lookup(RAW, key)
            section, name = key.split(".")
            assert name in Params.model_fields[section].annotation.model_fields


def test_dvc_stages_list_exactly_the_keys_they_read():
    assert set(DVC) == set(STAGE_SECTIONS)
    for stage in STAGE_SECTIONS:
        assert DVC[stage]["params"] == stage_keys(stage), stage
        assert DVC[stage]["cmd"] == f"python stages/{stage}.py"
        assert f"stages/{stage}.py" in DVC[stage]["deps"]


def test_every_params_key_is_read_by_a_stage_and_documented():
    read = {key for stage in STAGE_SECTIONS for key in stage_keys(stage)}
    readme = (ROOT / "README.md").read_text()
    for section in Params.model_fields:
        assert set(RAW[section]) == set(Params.model_fields[section].annotation.model_fields), section
        for key in section_keys(section):
            assert key in read, f"{key} is read by no stage"
            assert f"`{key}`" in readme, f"{key} is missing from the README's parameter reference"


def test_dvc_paths_come_from_the_paths_module():
    declared = set()
    for spec in DVC.values():
        for entry in spec.get("deps", []) + spec.get("outs", []) + spec.get("metrics", []) + spec.get("plots", []):
            declared.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    for name in ("RAW_DOCS", "EXTRACTED", "TRAIN_ROWS", "VAL_ROWS", "PROMPTS", "DATASET_STATS", "BASE_MODEL",
                 "ADAPTER", "MERGED", "GGUF", "TRAIN_METRICS", "TRAIN_LOSS", "EVAL_BASE", "EVAL", "SAMPLES"):
        assert str(getattr(paths, name)) in declared, name


def test_cli_flags_match_params_keys():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for stage in STAGE_SECTIONS:
        actions = commands[stage]._actions
        flags = {a.dest for a in actions if f"--{a.dest}" in a.option_strings}
        assert flags - {"help", "params", "output_dir", "input_dir", "labeled_dir", "task", "merged_dir", "quant"} == set(stage_keys(stage)), stage
        assert {a.dest for a in actions if "." in a.dest} == set(stage_keys(stage)), stage


def test_bad_values_are_all_named_at_once():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["lora"]["rank"] = 0
    raw["train"]["lr"] = -0.001
    raw["lora"]["rnak"] = 8
    with pytest.raises(ParamsError) as error:
        validate_params(raw)
    message = str(error.value)
    assert "3 invalid" in message
    assert "lora.rank" in message and "train.lr" in message
    assert "lora.rnak: unknown key" in message and "rank" in message


def test_unknown_section_and_wrong_types():
    with pytest.raises(ParamsError, match=r"trainer: unknown key"):
        validate_params({"trainer": {"lr": 1}})
    with pytest.raises(ParamsError, match=r"dataset.max_seq_len"):
        validate_params({"dataset": {"max_seq_len": "long"}})
    with pytest.raises(ParamsError, match=r"overlap_tokens"):
        validate_params({"dataset": {"max_seq_len": 64, "overlap_tokens": 64}})
    with pytest.raises(ParamsError, match=r"export.quants"):
        validate_params({"export": {"quants": ["Q9_Z"]}})


def test_overrides_are_validated(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    assert load_params(path, {"lora.rank": 8}).lora.rank == 8
    with pytest.raises(ParamsError, match="lora.rank"):
        load_params(path, {"lora.rank": -1})
