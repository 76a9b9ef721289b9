"""Files named by params (system prompt files, the JSON schema, an accelerate config) must lie under
data/raw/config/, a dep of every stage that reads them, or the stage refuses to start, naming key and path.

Run: .venv/bin/pytest tests/test_param_files.py
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from helpers import ROOT, copy_project

from lorapipe.param_files import STAGE_FILE_KEYS, check_param_files, looks_like_path
from lorapipe.params import ParamsError, validate_params


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "data" / "raw" / "config").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "config" / "system.txt").write_text("Answer briefly.")
    (tmp_path / "data" / "raw" / "config" / "task.schema.json").write_text('{"type": "object"}')
    (tmp_path / "data" / "raw" / "labeled").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "labeled" / "schema.json").write_text("{}")
    (tmp_path / "outside.txt").write_text("Answer at length.")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _params(**sections):
    return validate_params(sections)


@pytest.mark.parametrize(
    "value, is_path",
    [
        ("You are a helpful assistant.", False),
        ("Answer in JSON/YAML only.", False),
        ("prompts/system.txt", True),
        ("system.md", True),
        ("line one\nline/two", False),
    ],
)
def test_a_prompt_is_a_path_when_it_reads_as_one(value, is_path):
    assert looks_like_path(value) is is_path


def test_files_under_data_raw_pass(project):
    params = _params(
        dataset={
            "system_prompt": "data/raw/config/system.txt",
            "tasks": [{"name": "t", "kind": "chat", "system_prompt": "data/raw/config/system.txt"}],
        },
        eval={"json_schema": "data/raw/config/task.schema.json"},
    )
    for stage in [*STAGE_FILE_KEYS, None]:
        check_param_files(params, stage)


@pytest.mark.parametrize(
    "content, why",
    [
        ("Answer briefly.", "is not JSON"),
        ("[1, 2]", "not a JSON Schema"),
        ('{"type": 5}', "not a valid JSON Schema"),
        ('{"$schema": 5, "type": "object"}', "its $schema is 5, not a URI"),
        ('{"$schema": "https://json-schema.org/draft/2020-12/schema#x"}', "a draft jsonschema does not know"),
        (
            '{"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}',
            "$ref '#/$defs/missing' at properties/a points to nothing in the file",
        ),
        ('{"$ref": "other.schema.json"}', "$ref 'other.schema.json' at (top level) points to nothing"),
    ],
)
@pytest.mark.parametrize("stage", ["dataset", "evaluate", None])
def test_a_schema_file_that_is_not_a_json_schema_is_refused_naming_it(project, content, why, stage):
    (project / "data" / "raw" / "config" / "bad.json").write_text(content)
    with pytest.raises(ParamsError) as error:
        check_param_files(_params(eval={"json_schema": "data/raw/config/bad.json"}), stage)
    message = str(error.value)
    assert "eval.json_schema: data/raw/config/bad.json" in message and why in message
    assert message.count("eval.json_schema") == 1  # once, though two stages read the key


def test_every_stage_at_once_names_each_key_once(project):
    params = _params(
        dataset={"system_prompt": "outside.txt"},
        eval={"json_schema": "data/raw/missing.json"},
        train={"accelerate_config": "data/raw/config/nope.yaml"},
    )
    with pytest.raises(ParamsError) as error:
        check_param_files(params, None)
    message = str(error.value)
    assert "the pipeline cannot use" in message
    assert "so DVC would not rerun the stages that read it" in message and "None" not in message
    for key in ("dataset.system_prompt", "eval.json_schema", "train.accelerate_config"):
        assert message.count(f"  - {key}:") == 1, message


@pytest.mark.parametrize(
    "stage, sections, key",
    [
        ("dataset", {"dataset": {"system_prompt": "outside.txt"}}, "dataset.system_prompt"),
        (
            "dataset",
            {"dataset": {"tasks": [{"name": "t", "kind": "chat", "system_prompt": "data/../outside.txt"}]}},
            "dataset.tasks[0].system_prompt",
        ),
        ("evaluate", {"eval": {"json_schema": "outside.txt"}}, "eval.json_schema"),
        ("evaluate", {"eval": {"json_schema": "data/raw/labeled/schema.json"}}, "eval.json_schema"),
        ("dataset", {"dataset": {"system_prompt": "data/raw/config/../../../outside.txt"}}, "dataset.system_prompt"),
        ("train", {"train": {"accelerate_config": "outside.txt"}}, "train.accelerate_config"),
    ],
)
def test_a_file_outside_data_raw_is_refused_naming_key_and_path(project, stage, sections, key):
    with pytest.raises(ParamsError) as error:
        check_param_files(_params(**sections), stage)
    message = str(error.value)
    assert key in message and "data/raw/config" in message
    assert ("outside.txt" in message or "schema.json" in message) and "lies outside" in message


@pytest.mark.parametrize(
    "stage, sections, key",
    [
        ("dataset", {"dataset": {"system_prompt": "data/raw/prompts/missing.txt"}}, "dataset.system_prompt"),
        ("evaluate", {"eval": {"json_schema": "data/raw/schema.json"}}, "eval.json_schema"),
    ],
)
def test_a_missing_file_is_refused(project, stage, sections, key):
    with pytest.raises(ParamsError, match=rf"{re.escape(key)}: \S+ is not a file"):
        check_param_files(_params(**sections), stage)


def test_a_text_prompt_is_not_a_file(project):
    check_param_files(_params(dataset={"system_prompt": "You answer from the documents."}), "dataset")


def test_a_prompt_too_long_for_a_file_name_is_text(project):
    """A one-line prompt longer than a file name may be (255 bytes) is a text, not an OS error."""
    from lorapipe.param_files import prompt_file

    long = "Answer_briefly." * 40
    assert prompt_file(long) is None and not looks_like_path(long + " please")
    check_param_files(_params(dataset={"system_prompt": "Answer briefly and cite the document. " * 20}), "dataset")


def test_a_file_whose_name_holds_a_newline_is_still_a_file(project):
    """The check and the dataset stage share one rule: an existing file is a file, whatever its name."""
    odd = project / "odd\nname.txt"
    odd.write_text("A prompt.")
    with pytest.raises(ParamsError, match="lies outside"):
        check_param_files(_params(dataset={"system_prompt": str(odd)}), "dataset")


def test_the_stage_refuses_before_any_work(tmp_path):
    """`python -m lorapipe.stages.dataset` with a prompt file outside data/raw: exit 2, one message naming
    the key and the path, nothing written."""
    repo = copy_project(tmp_path / "project")
    (tmp_path / "elsewhere.txt").write_text("A prompt DVC cannot see.")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["dataset"]["system_prompt"] = str(tmp_path / "elsewhere.txt")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = subprocess.run([sys.executable, "-m", "lorapipe.stages.dataset"], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "dataset.system_prompt" in done.stderr and "elsewhere.txt" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list((repo / "data" / "dataset").glob("*.jsonl"))


def test_every_stage_that_reads_file_keys_depends_on_the_config_folder():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in STAGE_FILE_KEYS:
        assert "data/raw/config" in dvc[stage]["deps"], stage
    assert not any("data/raw" in stage.get("deps", []) for stage in dvc.values()), "data/raw whole reruns too much"


def test_a_file_beside_a_params_file_elsewhere_says_to_run_from_there(project, tmp_path_factory, monkeypatch):
    """`lorapipe check --params other/params.yaml` run from elsewhere: the file exists beside that params
    file, so the message says where paths are read from."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ParamsError) as error:
        check_param_files(
            _params(dataset={"system_prompt": "data/raw/config/system.txt"}), None, source=project / "params.yaml"
        )
    assert f"there is one beside {project / 'params.yaml'}: paths are read from the folder you run in" in str(
        error.value
    )


def test_a_misspelt_schema_keyword_is_named_as_a_warning_not_refused(project, capsys):
    # JSON Schema ignores a keyword it does not define: "requried" would check nothing, silently
    (project / "data" / "raw" / "config" / "task.schema.json").write_text(
        '{"type": "object", "properties": {"intent": {"type": "string"}}, "requried": ["intent"]}'
    )
    check_param_files(_params(eval={"json_schema": "data/raw/config/task.schema.json"}), "dataset")
    assert capsys.readouterr().err == (
        "[dataset] warning: eval.json_schema: data/raw/config/task.schema.json: unknown keyword 'requried' in "
        "the schema at (top level), which JSON Schema ignores: did you mean 'required'?\n"
    )


@pytest.mark.parametrize(
    "named, hint",
    [
        ("data/raw/config/task.schema.jsn", " (did you mean data/raw/config/task.schema.json?)"),
        ("data/raw/confg/task.schema.json", " (did you mean data/raw/config/task.schema.json?)"),  # no such folder
        ("data/raw/config/nothing_like_it.yaml", ""),
        ("data/raw/task.schem.json", " (did you mean data/raw/config/task.schema.json?)"),  # only files it accepts
        ("data/raw/config/TASK.SCHEMA.JSN", " (did you mean data/raw/config/task.schema.json?)"),
        ("data/raw/labeled", " (it is a folder: name a file in it)"),
        ("/etc/passwdd", ""),
    ],
)
def test_a_missing_file_names_the_one_it_may_mean(project, named, hint):
    with pytest.raises(ParamsError) as error:
        check_param_files(_params(eval={"json_schema": named}), "evaluate")
    assert f"eval.json_schema: {named} is not a file{hint}; put the file under" in str(error.value)


def test_a_name_too_long_and_a_schema_too_deep_are_named_not_raised(project):
    with pytest.raises(ParamsError, match=r"eval.json_schema: a{300}\.json is not a file"):
        check_param_files(_params(eval={"json_schema": "a" * 300 + ".json"}), "evaluate")
    deep: dict = {}
    node = deep
    for _ in range(400):
        node["properties"] = {"a": {}}
        node = node["properties"]["a"]
    (project / "data" / "raw" / "config" / "deep.json").write_text(json.dumps(deep))
    with pytest.raises(ParamsError, match="nests its subschemas too deeply to check"):
        check_param_files(_params(eval={"json_schema": "data/raw/config/deep.json"}), "evaluate")
