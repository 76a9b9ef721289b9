"""params.yaml, its schema and dvc.yaml agree; params.yaml's comments, the README's parameter table
and the CLI's --help are the schema's; bad params fail before any work.

Run: .venv/bin/pytest tests/test_params.py
"""

import re
from typing import get_args

import pytest
import yaml

from helpers import ROOT
from lorapipe import params as schema
from lorapipe import paths
from lorapipe.cli import build_parser
from lorapipe.params import (
    DEFAULTS,
    REGENERATE,
    RUN_ONLY,
    STAGE_SECTIONS,
    ParamsError,
    Params,
    apply_overrides,
    load_params,
    read_yaml,
    section_keys,
    dvc_keys,
    stage_keys,
    validate_params,
)

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
    for spec in DVC.values():
        for key in spec.get("params", []):
            _lookup(RAW, key)
            section, name = key.split(".")
            assert name in Params.model_fields[section].annotation.model_fields


def test_dvc_stages_list_exactly_the_keys_they_read():
    assert set(DVC) == set(STAGE_SECTIONS)
    for stage in STAGE_SECTIONS:
        assert DVC[stage]["params"] == dvc_keys(stage), stage
        assert DVC[stage]["cmd"] == f"sh scripts/python.sh -m lorapipe.stages.{stage}"


def test_run_only_keys_are_read_by_a_stage_but_rerun_nothing():
    read = {key for stage in STAGE_SECTIONS for key in stage_keys(stage)}
    assert RUN_ONLY <= read  # each is a real knob of a stage (a CLI flag, in its provenance)
    listed = {key for spec in DVC.values() for key in spec.get("params", [])}
    assert not RUN_ONLY & listed  # and no DVC dependency: changing it reruns nothing


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
    for name in (
        "RAW_DOCS",
        "RAW_MODELS",
        "EXTRACTED",
        "TRAIN_ROWS",
        "VAL_ROWS",
        "PROMPTS",
        "DATASET_STATS",
        "BASE_MODEL",
        "ADAPTER",
        "MERGED",
        "GGUF",
        "TRAIN_METRICS",
        "TRAIN_LOSS",
        "EVAL_BASE",
        "EVAL",
        "SAMPLES",
    ):
        assert str(getattr(paths, name)) in declared, name


def test_cli_flags_match_params_keys():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for stage in STAGE_SECTIONS:
        actions = commands[stage]._actions
        flags = {a.dest for a in actions if f"--{a.dest}" in a.option_strings}
        assert flags - {
            "help",
            "params",
            "output_dir",
            "input_dir",
            "labeled_dir",
            "task",
            "merged_dir",
            "quant",
        } == set(stage_keys(stage)), stage
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
    with pytest.raises(ParamsError, match=r"eval.span_constraint rewrites"):
        validate_params({"eval": {"span_constraint": True}})  # no schema
    with pytest.raises(ParamsError, match=r"eval.span_constraint rewrites"):
        validate_params({"eval": {"span_constraint": True, "json_schema": "s.json", "constrained": False}})
    assert validate_params({"eval": {"span_constraint": True, "json_schema": "s.json"}}).eval.span_constraint


def test_overrides_are_validated(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    assert load_params(path, {"lora.rank": 8}).lora.rank == 8
    with pytest.raises(ParamsError, match="lora.rank"):
        load_params(path, {"lora.rank": -1})


# --- each knob defined once: the schema is the source of params.yaml's comments, README and --help ---------


def _all_keys():
    return [key for section in Params.model_fields for key in section_keys(section)]


def test_schema_defaults_are_params_yaml_values():
    """params.yaml is what users run: the schema's defaults (which library signatures use) equal it."""
    assert DEFAULTS == Params()
    shipped = load_params(ROOT / "params.yaml").model_dump()
    for key in _all_keys():
        section, name = key.split(".")
        assert schema.default(key) == shipped[section][name], f"{key}: schema default differs from params.yaml"


def test_every_field_has_a_description():
    models = [Params.model_fields[s].annotation for s in Params.model_fields] + [schema.TaskParams]
    for model in models:
        for name, field in model.model_fields.items():
            assert field.description and field.description.strip(), f"{model.__name__}.{name} has no description"
            assert "\n" not in field.description, f"{model.__name__}.{name}: a description is one line"


def test_params_yaml_is_generated_from_the_schema():
    text = (ROOT / "params.yaml").read_text()
    assert text == schema.render_yaml(yaml.safe_load(text)), (
        f"params.yaml's comments differ from the schema's descriptions: run `{REGENERATE}`"
    )
    comments, section = {}, None
    for line in text.splitlines():
        if line and not line.startswith(("#", " ")):
            section = line.split(":")[0]
        elif line.startswith("  "):
            comments[f"{section}.{line.split(':')[0].strip()}"] = line.split("  # ", 1)[1]
    assert comments == {key: schema.describe(key) for key in _all_keys()}


def test_rendering_validated_params_round_trips():
    shipped = load_params(ROOT / "params.yaml")
    assert validate_params(yaml.safe_load(schema.render_yaml(shipped))) == shipped
    assert validate_params(yaml.safe_load(schema.render_yaml(DEFAULTS))) == DEFAULTS


def test_nested_values_render_as_valid_yaml():
    raw = {
        "dataset": {
            "mode": "auto",
            "system_prompt": "Answer: briefly, and # never guess.",
            "tasks": [
                {
                    "name": "queries",
                    "kind": "chat",
                    "sources": ["*.jsonl", "sub dir/*"],
                    "system_prompt": 'Reply with JSON: {"intent": ...}',
                    "fields": {"query": "question"},
                },
                {"name": "docs", "kind": "text"},
            ],
            "fields": {"query": "question", "data": "answer"},
            "max_samples": 100,
        },
        "lora": {"target_modules": ["q_proj", "v_proj"], "alpha": 16},
        "train": {"lr": 1e-05, "resume": "never"},
        "export": {"quants": ["Q8_0", "F16"], "ollama_name": "me/model:latest"},
    }
    text = schema.render_yaml(raw)
    loaded = yaml.safe_load(text)
    for section, values in raw.items():
        for name, value in values.items():
            assert loaded[section][name] == value, f"{section}.{name}"
    assert loaded["common"]["seed"] == DEFAULTS.common.seed  # missing keys get their defaults
    validate_params(loaded)
    with pytest.raises(ParamsError, match="lora.rnak"):
        schema.render_yaml({"lora": {"rnak": 8}})


def _readme_table(readme: str) -> str:
    assert readme.count(schema.TABLE_BEGIN) == 1 and readme.count(schema.TABLE_END) == 1
    return readme.split(schema.TABLE_BEGIN, 1)[1].split(schema.TABLE_END, 1)[0].strip("\n") + "\n"


def test_readme_parameter_table_is_generated_from_the_schema():
    readme = (ROOT / "README.md").read_text()
    assert _readme_table(readme) == schema.render_table(), (
        f"README.md's parameter reference differs from the schema: run `{REGENERATE}`"
    )
    assert readme == schema.replace_table(readme)
    rows = [line for line in schema.render_table().splitlines()[2:]]
    assert [row.split(" | ")[0].strip("| `") for row in rows] == _all_keys()


def test_regenerate_command_checks_and_writes(tmp_path, capsys):
    params_file, readme = tmp_path / "params.yaml", tmp_path / "README.md"
    params_file.write_text((ROOT / "params.yaml").read_text().replace("# adapter rank", "# rank (edited)"))
    readme.write_text((ROOT / "README.md").read_text().replace("| `lora.rank` | `16` |", "| `lora.rank` | `8` |"))
    args = ["--params", str(params_file), "--readme", str(readme)]
    assert schema.main([*args, "--check"]) == 1
    assert "out of date" in capsys.readouterr().out
    assert schema.main([*args, "--write"]) == 0
    assert params_file.read_text() == (ROOT / "params.yaml").read_text()
    assert readme.read_text() == (ROOT / "README.md").read_text()
    assert schema.main([*args, "--check"]) == 0
    values = params_file.read_text().replace("  rank: 16 ", "  rank: 8  ")  # as `dvc exp run -S` leaves it
    params_file.write_text(values)
    assert schema.main([*args, "--write"]) == 0 and params_file.read_text() == values  # values are kept


def test_cli_help_of_each_key_comes_from_the_schema():
    commands = build_parser()._subparsers._group_actions[0].choices
    for stage in STAGE_SECTIONS:
        for action in commands[stage]._actions:
            if "." not in action.dest or action.help is None or f"--{action.dest}" not in action.option_strings:
                continue
            key = action.dest
            assert action.help == schema.flag_help(key), key
            help_text = action.help % {}  # as argparse prints it
            assert schema.field_info(key).description in help_text, key
            assert f"(schema default: {schema.yaml_value(schema.default(key))})" in help_text, key
            if schema.choices(key):
                assert action.metavar == "{" + ",".join(schema.choices(key)) + "}", key


def test_allowed_values_are_listed_once():
    from lorapipe.extract.formats import PDF_BACKENDS, resolve_pdf_backend

    assert PDF_BACKENDS == schema.choices("extract.pdf_backend")
    with pytest.raises(ValueError, match="docling-native"):
        resolve_pdf_backend("pdfminer")
    plan = build_parser()._subparsers._group_actions[0].choices["plan"]
    options = {action.dest: action.choices for action in plan._actions}
    assert tuple(options["device"]) == get_args(schema.Device) == schema.choices("extract.device")
    assert tuple(options["preset"]) == get_args(schema.Preset) == schema.choices("train.preset")


def test_apply_overrides():
    raw = {"lora": {"rank": 16, "alpha": 32}, "train": None}
    out = apply_overrides(raw, {"lora.rank": 8, "train.lr": 0.1, "eval.max_samples": 4})
    assert out == {"lora": {"rank": 8, "alpha": 32}, "train": {"lr": 0.1}, "eval": {"max_samples": 4}}
    assert raw == {"lora": {"rank": 16, "alpha": 32}, "train": None}  # the input is left as it was
    with pytest.raises(ParamsError, match="section.key"):
        apply_overrides(raw, {"rank": 8})


def test_dvc_and_lorapipe_agree_on_a_params_yaml_a_windows_editor_saved(tmp_path):
    """UTF-8 with a byte-order mark: both read it alike. UTF-16: DVC cannot (``is not valid utf-8``),
    so lorapipe refuses it too, naming the file and the fix, rather than run stages dvc repro cannot."""
    from dvc.utils.serialize import load_yaml

    text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    bom = tmp_path / "bom" / "params.yaml"
    bom.parent.mkdir()
    bom.write_bytes(text.encode("utf-8-sig"))
    assert dict(load_yaml(bom)) == read_yaml(bom) == RAW
    utf16 = tmp_path / "utf16" / "params.yaml"
    utf16.parent.mkdir()
    utf16.write_bytes(text.encode("utf-16"))
    with pytest.raises(Exception, match="is not valid utf-8"):
        load_yaml(utf16)
    with pytest.raises(ParamsError, match=rf"^{re.escape(str(utf16))} is saved as UTF-16, .* save it as UTF-8"):
        read_yaml(utf16)


def test_a_key_written_twice_is_refused_as_dvc_refuses_it(tmp_path):
    from dvc.utils.serialize import load_yaml

    path = tmp_path / "params.yaml"
    path.write_text("lora:\n  rank: 8\n  alpha: 16\n  rank: 16\n")
    with pytest.raises(Exception, match="YAML file structure is corrupted"):  # "found duplicate key" below
        load_yaml(path)
    with pytest.raises(ParamsError, match=r"line 4, column 3\): the key 'rank' is written twice .*first on line 2"):
        read_yaml(path)
    # the same key in two sections is no duplicate
    path.write_text("lora:\n  rank: 8\ntrain:\n  rank: 1\n")
    assert read_yaml(path) == {"lora": {"rank": 8}, "train": {"rank": 1}}


def test_a_value_that_fits_no_arm_of_a_union_is_one_line_naming_the_key():
    for value, says in (("lots", "a valid integer"), (0, "greater than or equal to 1")):
        with pytest.raises(ParamsError) as error:
            validate_params({"eval": {"max_new_tokens": value}})
        message = str(error.value)
        assert (
            "1 invalid value" in message and "eval.max_new_tokens: Input should be 'auto' or Input should be" in message
        )
        assert says in message and "function-after" not in message and "literal[" not in message


def test_messages_for_a_misspelt_key_an_empty_section_and_digits_where_text_is_wanted():
    raw = yaml.safe_load("model:\n  revision: 0123\nlora:\ntrain:\n  warmup_step: 1\n")
    with pytest.raises(ParamsError) as error:
        validate_params(raw)
    message = str(error.value)
    assert "model.revision: Input should be a valid string; YAML read it as the int 83" in message
    assert "put the value in quotes (got 83)" in message
    assert "lora: the section is empty (a line `lora:` with no keys under it)" in message
    assert "train.warmup_step: unknown key; did you mean 'warmup_steps'? known keys here:" in message


def test_one_quantization_needs_no_list_and_none_is_listed_twice():
    assert validate_params({"export": {"quants": "q8_0"}}).export.quants == ["Q8_0"]
    assert validate_params({"export": {"quants": "AUTO"}}).export.quants == "auto"
    with pytest.raises(ParamsError, match="export.quants: Q4_K_M listed more than once"):
        validate_params({"export": {"quants": ["Q4_K_M", "q4_k_m"]}})
