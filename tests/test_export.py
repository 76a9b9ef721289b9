"""Export stage: GGUF per quantization, logits checked against the merged model, Modelfile.

Run: .venv/bin/pytest tests/test_export.py
"""

import json

import pytest

from lorapipe.artifacts import model_gguf
from lorapipe.export import TIE_LOGITS, export_gguf, logit_agreement
from lorapipe.models import load_tokenizer

PROMPT = "You answer from the lorapipe documents only."


LINEAGE = {
    "lorapipe.git_commit": "0123abc",
    "lorapipe.mlflow_run_id": "run42",
    "lorapipe.dataset_hash": "d5e7",
    "lorapipe.base_model": "tiny-llama",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_dir):
    work = tmp_path_factory.mktemp("export")
    (work / "prompts.json").write_text(json.dumps({"text": PROMPT}))
    info = export_gguf(
        tiny_model_dir,
        work / "prompts.json",
        work / "gguf",
        quants=["Q8_0", "F32"],
        outtype="f32",
        name="tiny",
        metadata=LINEAGE,
    )
    return work / "gguf", info


def _logits(*rows):
    import numpy as np

    return np.array(rows, dtype=np.float32)


def test_a_different_top1_at_a_near_tie_is_rounding():
    reference = _logits([5.0, 4.99, 0.0], [1.0, 3.0, 0.0])
    actual = _logits([4.99, 5.0, 0.0], [1.0, 3.0, 0.0])  # token 0 flips between two logits 0.01 apart
    agreement = logit_agreement(reference, actual)
    assert agreement["max_abs_diff"] == pytest.approx(0.01, abs=1e-6)
    assert agreement["top1_agreement"] == 0.5
    assert agreement["top1_agreement_beyond_ties"] == 1.0


def test_a_different_top1_beyond_the_noise_is_a_disagreement():
    reference = _logits([5.0, 5.0 - 2 * TIE_LOGITS, 0.0], [1.0, 3.0, 0.0])
    actual = _logits([5.0, 5.01, 0.0], [1.0, 3.0, 0.0])  # top-1 moves to a logit 2 x TIE_LOGITS below the best
    agreement = logit_agreement(reference, actual)
    assert agreement["top1_agreement"] == agreement["top1_agreement_beyond_ties"] == 0.5


def test_the_tie_is_the_reference_gap_whatever_the_largest_difference():
    reference = _logits([5.0, 5.0 - TIE_LOGITS, 0.0], [1.0, 3.0, 0.0])
    actual = reference.copy()
    actual[0, 1] += 2 * TIE_LOGITS  # top-1 moves to a logit exactly TIE_LOGITS below the best: a tie
    actual[1, 0] += 1.5  # an unrelated, larger difference does not widen it
    agreement = logit_agreement(reference, actual)
    assert agreement["top1_agreement"] == 0.5
    assert agreement["top1_agreement_beyond_ties"] == 1.0


def test_exact_files(exported):
    out, info = exported
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "export.json", "tiny.F32.gguf", "tiny.Q8_0.gguf"]
    assert info["files"] == {"Q8_0": "tiny.Q8_0.gguf", "F32": "tiny.F32.gguf"}
    assert info["architecture"] == "LlamaForCausalLM" and info["parameters"] > 3_000_000


def _gguf_strings(path) -> dict[str, str]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items() if name.startswith("lorapipe.")}


def test_every_gguf_records_its_lineage(exported):
    """Written at conversion, copied by llama.cpp's quantizer, read back with gguf's reader."""
    out, _ = exported
    for name in ("tiny.F32.gguf", "tiny.Q8_0.gguf"):
        assert _gguf_strings(out / name) == LINEAGE


def test_gguf_logits_match_transformers(exported):
    _, info = exported
    assert info["verification"]["top1_agreement"] == 1.0
    assert info["verification"]["max_abs_diff"] < 1e-3  # the stage itself refuses f32 above 1e-2


def test_export_json_names_the_model_the_modelfile_uses(exported):
    """quants [Q8_0, F32]: the model is Q8_0 for the Modelfile, export.json and model_gguf alike,
    though F32 comes first by name (what ask, serve and evaluate used to take)."""
    out, info = exported
    assert info["model"] == json.loads((out / "export.json").read_text())["model"] == "tiny.Q8_0.gguf"
    assert f"FROM ./{info['model']}\n" in (out / "Modelfile").read_text()
    assert model_gguf(out) == out / "tiny.Q8_0.gguf"
    assert sorted(out.glob("*.gguf"))[0].name == "tiny.F32.gguf"


def test_modelfile_uses_prompts_json_and_chat_template(exported, tiny_model_dir):
    out, _ = exported
    text = (out / "Modelfile").read_text()
    assert "FROM ./tiny.Q8_0.gguf" in text
    assert f'SYSTEM """{PROMPT}"""' in text
    assert "chatml style" in text and '{{ if eq .Role "system" }}<|im_start|>system\n' in text
    assert 'PARAMETER stop "<|im_end|>"' in text


def test_quantized_file_loads_in_llama_cpp(exported):
    from llama_cpp import Llama

    out, _ = exported
    llm = Llama(str(out / "tiny.Q8_0.gguf"), n_ctx=64, verbose=False)
    assert llm.n_vocab() == 49152
    llm.close()


@pytest.mark.integration  # 10-25 s: a real model, the converter, a timeout or several processes
def test_lora_gguf_on_the_base_gives_the_merged_models_logits(tmp_path, tiny_model_dir, trained_adapter):
    """llama.cpp with base.gguf + <name>.lora.gguf computes what the merged model's GGUF computes."""
    import numpy as np

    from lorapipe import merge_adapter
    from lorapipe.export import converter_dir, convert_to_gguf
    from lorapipe.llama import gguf_logits

    (tmp_path / "prompts.json").write_text(json.dumps({"text": PROMPT}))
    merged = merge_adapter(tiny_model_dir, trained_adapter, tmp_path / "merged")
    info = export_gguf(
        merged,
        tmp_path / "prompts.json",
        tmp_path / "gguf",
        quants=["F32"],
        outtype="f32",
        name="tiny",
        metadata=LINEAGE,
        lora_gguf=True,
        adapter_dir=trained_adapter,
        base_dir=tiny_model_dir,
    )
    lora = tmp_path / "gguf" / "tiny.lora.gguf"
    assert info["files"]["lora"] == "tiny.lora.gguf" and _gguf_strings(lora) == LINEAGE
    base = convert_to_gguf(tiny_model_dir, tmp_path / "base.gguf", "f32", converter_dir())
    ids = load_tokenizer(tiny_model_dir)("Low-rank adapters are small.", add_special_tokens=False)["input_ids"]

    from llama_cpp import Llama

    llm = Llama(str(base), lora_path=str(lora), n_ctx=64, logits_all=True, verbose=False)
    llm.eval(ids)
    with_lora = np.array(llm.scores[: len(ids)])
    llm.close()
    merged_logits = gguf_logits(tmp_path / "gguf" / "tiny.F32.gguf", [ids])[0]
    plain = gguf_logits(base, [ids])[0]
    assert np.abs(with_lora - merged_logits).max() < 1e-3
    assert np.abs(plain - merged_logits).max() > 1e-2  # the adapter does change the model


def test_ollama_create_runs_when_ollama_is_on_path(tmp_path, tiny_model_dir, monkeypatch):
    fake = tmp_path / "bin" / "ollama"
    fake.parent.mkdir()
    log = tmp_path / "ollama.log"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\ncat "$4" >> {log}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{__import__('os').environ['PATH']}")
    (tmp_path / "prompts.json").write_text(json.dumps({"docs": PROMPT, "queries": "Answer in JSON."}))
    info = export_gguf(
        tiny_model_dir,
        tmp_path / "prompts.json",
        tmp_path / "gguf",
        quants=["Q8_0"],
        outtype="f32",
        name="tiny",
        ollama_name="acme/tiny:v1",
    )
    called = log.read_text()
    assert "create acme/tiny:v1 -f Modelfile" in called and "create acme/tiny:v1-queries -f Modelfile.queries" in called
    assert "FROM ./tiny.Q8_0.gguf" in called and 'SYSTEM """Answer in JSON."""' in called
    assert len(info["ollama"]) == 2


def test_without_ollama_every_modelfile_gets_its_create_command(tmp_path, monkeypatch, capsys):
    from lorapipe import export

    monkeypatch.setattr(export.shutil, "which", lambda name: None)
    assert export.ollama_create(tmp_path, {"docs": "Modelfile", "queries": "Modelfile.queries"}, "tiny") == []
    printed = capsys.readouterr().out
    assert (
        f"cd {tmp_path} && ollama create tiny -f Modelfile && ollama create tiny-queries -f Modelfile.queries"
        in printed
    )


def test_missing_or_incomplete_merged_folder_names_what_is_missing(tmp_path, tiny_model_dir):
    import shutil

    (tmp_path / "prompts.json").write_text(json.dumps({"text": PROMPT}))
    with pytest.raises(FileNotFoundError, match="does not exist: run the merge stage"):
        export_gguf(tmp_path / "nothing", tmp_path / "prompts.json", tmp_path / "out")
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model_dir, partial)
    (partial / "model.safetensors").unlink()
    (partial / "tokenizer.json").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"incomplete: missing tokenizer.json \(or tokenizer.model\), "
        r"model.safetensors",
    ):
        export_gguf(partial, tmp_path / "prompts.json", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_lists_the_supported_ones(tmp_path, tiny_model_dir):
    import shutil

    (tmp_path / "prompts.json").write_text(json.dumps({"text": PROMPT}))
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["MadeUpForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not support MadeUpForCausalLM; it supports: .*LlamaForCausalLM"):
        export_gguf(model, tmp_path / "prompts.json", tmp_path / "out")


def test_unknown_quantization_lists_valid_ones(tmp_path, tiny_model_dir):
    (tmp_path / "prompts.json").write_text(json.dumps({"text": PROMPT}))
    with pytest.raises(ValueError, match=r"unknown quantization \['Q9_X'\].*Q4_K_M"):
        export_gguf(tiny_model_dir, tmp_path / "prompts.json", tmp_path / "out", quants=["Q9_X"])


def test_bad_knobs_fail_before_any_work(tmp_path, tiny_model_dir):
    """The knobs are checked by the params schema, the one list of quantization names and outtypes."""
    (tmp_path / "prompts.json").write_text(json.dumps({"text": PROMPT}))
    for knobs, message in (
        ({"outtype": "q4_k_m"}, r"export.outtype"),
        ({"name": "bad name/"}, r"export.name"),
        ({"quants": []}, r"export.quants"),
        ({"lora_gguf": True}, r"lora_gguf needs adapter_dir and base_dir"),
    ):
        with pytest.raises(ValueError, match=message):
            export_gguf(tiny_model_dir, tmp_path / "prompts.json", tmp_path / "out", **knobs)
    assert not (tmp_path / "out").exists()


def test_a_converter_that_cannot_list_architectures_is_an_error_not_a_skipped_check(tmp_path):
    from lorapipe.export import supported_architectures

    broken = tmp_path / "llama.cpp"
    broken.mkdir()
    (broken / "convert_hf_to_gguf.py").write_text("import sys\nsys.exit('no such option')\n")
    with pytest.raises(RuntimeError, match=r"(?s)failed .*cannot be checked.*no such option"):
        supported_architectures(broken)
    (broken / "convert_hf_to_gguf.py").write_text("print('nothing useful')\n")
    with pytest.raises(RuntimeError, match="listed no TEXT models"):  # the failure was not cached as "none"
        supported_architectures(broken)


def test_parameter_count_reads_the_shapes_without_loading_tensors(tiny_model_dir):
    from safetensors.torch import load_file

    from lorapipe.export import parameter_count

    weights = tiny_model_dir / "model.safetensors"
    assert parameter_count([weights]) == sum(t.numel() for t in load_file(weights).values()) > 3_000_000


def test_too_little_disk_is_refused_before_writing(tmp_path, tiny_model_dir, monkeypatch):
    import shutil
    from collections import namedtuple

    (tmp_path / "prompts.json").write_text(json.dumps({"text": PROMPT}))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(OSError, match=r"not enough free disk for the export: about 0.0 GiB is needed \(F32, Q4_K_M"):
        export_gguf(tiny_model_dir, tmp_path / "prompts.json", tmp_path / "out", outtype="f32")
    assert not (tmp_path / "out").exists()


def test_llama_cpp_encodes_chats_as_transformers_does(exported, tiny_model_dir):
    """serve and evaluate give the GGUF the prompt training used: the GGUF's own chat template through
    the same encoder, contents as text (a quoted <|im_end|> is not an end of turn)."""
    from llama_cpp import Llama

    from lorapipe.chat_encoder import encode_chat, hf_codec, llama_codec

    gguf_dir, info = exported
    conversations = [
        [{"role": "system", "content": PROMPT}, {"role": "user", "content": "What is a LoRA adapter?"}],
        [
            {"role": "user", "content": "What does <|im_end|> mean? Or <|im_start|>system?"},
            {"role": "assistant", "content": "It ends a turn: <|endoftext|>"},
            {"role": "user", "content": "Thanks."},
        ],
    ]
    llm = Llama(str(gguf_dir / info["model"]), n_ctx=256, verbose=False)
    try:
        codec = llama_codec(llm)
        tokenizer = load_tokenizer(tiny_model_dir)
        for messages in conversations:
            assert encode_chat(messages, codec) == encode_chat(messages, hf_codec(tokenizer))
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert encode_chat(conversations[1], codec).count(end) == 4  # the template's default system turn, 3 turns
    finally:
        llm.close()


def test_a_prompt_the_modelfile_cannot_hold_stops_the_export_before_converting(tmp_path, tiny_model_dir, monkeypatch):
    import lorapipe.export as export
    from lorapipe.chat_templates import ModelfileError

    monkeypatch.setattr(export, "convert_to_gguf", lambda *a, **k: pytest.fail("converted"))
    (tmp_path / "prompts.json").write_text(json.dumps({"text": PROMPT, "json": 'Like this:\n"""{}"""\nonly.'}))
    with pytest.raises(ModelfileError, match=r"task 'json' of prompts.json: SYSTEM .* line 2 ends .*dvc repro dataset"):
        export_gguf(tiny_model_dir, tmp_path / "prompts.json", tmp_path / "gguf", quants=["F32"], outtype="f32")
    assert not (tmp_path / "gguf").exists()


# --- export.quants auto: the quantization ladder ---------------------------------------------------


def test_choose_quant_takes_the_smallest_within_the_tolerance():
    from lorapipe.perplexities import choose_quant

    ladder = {
        "Q8_0": {"vs_merged": 0.001, "bytes": 800},
        "Q6_K": {"vs_merged": 0.02, "bytes": 600},
        "Q5_K_M": {"vs_merged": 0.04, "bytes": 550},
        "Q4_K_M": {"vs_merged": 0.09, "bytes": 500},
    }
    assert choose_quant(ladder, 0.05)[0] == "Q5_K_M"
    assert choose_quant(ladder, 0.10)[0] == "Q4_K_M"
    assert choose_quant(ladder, 0.01)[0] == "Q8_0"
    quant, why = choose_quant({q: {**m, "vs_merged": m["vs_merged"] + 0.5} for q, m in ladder.items()}, 0.05)
    assert quant == "Q8_0" and why.startswith("none is within 5.0%")
    nan = {**ladder, "Q4_K_M": {"vs_merged": float("nan"), "bytes": 1}}  # not measured: never chosen
    assert choose_quant(nan, 0.10)[0] == "Q5_K_M"
    with pytest.raises(ValueError, match="no quantization"):
        choose_quant({}, 0.05)


def test_auto_quants_write_the_ladder_and_the_modelfile_follows_the_choice(tmp_path, tiny_model_dir, dataset_dir):
    (tmp_path / "prompts.json").write_text(json.dumps({"text": PROMPT}))
    info = export_gguf(
        tiny_model_dir,
        tmp_path / "prompts.json",
        tmp_path / "gguf",
        quants="auto",
        quant_tolerance=0.05,
        outtype="f32",
        name="tiny",
        val_path=dataset_dir / "val.jsonl",
    )
    ladder = info["ladder"]
    assert list(ladder["quants"]) == ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M"] == list(info["files"])
    quants = ladder["quants"]
    within = [q for q, m in quants.items() if m["vs_merged"] <= 0.05]
    expected = min(within or quants, key=lambda q: quants[q]["bytes"] if within else quants[q]["vs_merged"])
    assert ladder["chosen"] == expected and info["model"] == info["files"][expected]
    assert ladder["rows"] > 0 and ladder["merged_perplexity"] > 1
    assert ladder["quants"]["Q8_0"]["bytes"] > ladder["quants"]["Q4_K_M"]["bytes"]
    assert f"FROM ./{info['model']}" in (tmp_path / "gguf" / "Modelfile").read_text()
    assert model_gguf(tmp_path / "gguf").name == info["model"]
    assert json.loads((tmp_path / "gguf" / "export.json").read_text())["ladder"]["chosen"] == ladder["chosen"]
    with pytest.raises(ValueError, match="give val_path"):
        export_gguf(tiny_model_dir, tmp_path / "prompts.json", tmp_path / "other", quants="auto", outtype="f32")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="has no rows"):  # refused before converting anything
        export_gguf(
            tiny_model_dir, tmp_path / "prompts.json", tmp_path / "e", quants="auto", val_path=tmp_path / "empty.jsonl"
        )
    assert not (tmp_path / "e").exists()


def test_quants_auto_is_a_param_value(tmp_path):
    from lorapipe.params import ParamsError, validate_params

    assert validate_params({"export": {"quants": "auto"}}).export.quants == "auto"
    assert validate_params({"export": {"quants": ["auto"]}}).export.quants == "auto"  # lorapipe export --quant auto
    assert validate_params({"export": {"quants": "AUTO"}}).export.quants == "auto"
    with pytest.raises(ParamsError, match="auto stands alone"):
        validate_params({"export": {"quants": ["auto", "Q8_0"]}})
    with pytest.raises(ParamsError, match="export.quant_tolerance"):
        validate_params({"export": {"quant_tolerance": 5}})  # a share: 5 would be 500%
    with pytest.raises(ParamsError, match="export.quant_tolerance"):
        validate_params({"export": {"quant_tolerance": -0.1}})
