"""Export stage: GGUF per quantization, logits checked against the merged model, Modelfile.

Run: .venv/bin/pytest tests/test_export.py
"""

import json

import pytest

from lorapipe import export_gguf
from lorapipe.chat_templates import STYLES, detect_style, modelfile_text
from lorapipe.models import load_tokenizer

PROMPT = "You answer from the lorapipe documents only."


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_dir):
    work = tmp_path_factory.mktemp("export")
    (work / "prompts.json").write_text(json.dumps({"text": PROMPT}))
    info = export_gguf(tiny_model_dir, work / "prompts.json", work / "gguf", quants=["Q8_0", "F32"],
                       outtype="f32", name="tiny")
    return work / "gguf", info


def test_exact_files(exported):
    out, info = exported
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "export.json", "tiny.F32.gguf", "tiny.Q8_0.gguf"]
    assert info["files"] == {"Q8_0": "tiny.Q8_0.gguf", "F32": "tiny.F32.gguf"}


def test_gguf_logits_match_transformers(exported):
    _, info = exported
    assert info["verification"]["top1_agreement"] == 1.0
    assert info["verification"]["max_abs_diff"] < 1e-3


def test_modelfile_uses_prompts_json_and_chat_template(exported, tiny_model_dir):
    out, _ = exported
    text = (out / "Modelfile").read_text()
    assert "FROM ./tiny.Q8_0.gguf" in text
    assert f'SYSTEM """{PROMPT}"""' in text
    assert "<|im_start|>{{ .Role }}" in text and 'PARAMETER stop "<|im_end|>"' in text


def test_quantized_file_loads_in_llama_cpp(exported):
    from llama_cpp import Llama

    out, _ = exported
    llm = Llama(str(out / "tiny.Q8_0.gguf"), n_ctx=64, verbose=False)
    assert llm.n_vocab() == 49152
    llm.close()


def test_chatml_style_is_detected(tiny_model_dir):
    assert detect_style(load_tokenizer(tiny_model_dir)).name == "chatml"


@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.name)
def test_each_style_is_recognised_from_its_own_rendering(style):
    class Rendered:  # a tokenizer whose Jinja template renders exactly like `style`
        chat_template = "{{ probe }}"
        bos_token = None
        eos_token = "</s>"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return style.render(messages)

    assert detect_style(Rendered()).name == style.name


def test_unknown_template_fails_clearly(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ValueError, match="unrecognised chat template"):
        modelfile_text("./x.gguf", tokenizer, PROMPT)
