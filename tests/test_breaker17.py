"""Bugs found by breaking issue 17's features (synth, knowledge, retrieval), each with its reproduction:
a question's source written another way than the manifest's, a damaged synth cache entry, retrieval
over Chinese/Japanese text, key strings with a dash, a password in synth.base_url.

Run: .venv/bin/pytest tests/test_breaker17.py
"""

from __future__ import annotations

import json

import pytest

from lorapipe.io import read_jsonl
from lorapipe.knowledge import _document
from lorapipe.retrieval import build_index, load_index
from lorapipe.scoring import key_hit
from lorapipe.teacher import EndpointTeacher, TeacherError

# --- knowledge: trained / control grouping of a user's question ---------------------------------------

KNOWN = {"data/raw/docs/lora-primer.md", "data/raw/docs/local-models.epub", "data/raw/notes/local-models.epub"}


@pytest.mark.parametrize(
    "written",
    [
        "data/raw/docs/lora-primer.md",
        "./data/raw/docs/lora-primer.md",
        "data\\raw\\docs\\lora-primer.md",
        "docs/lora-primer.md",
        "lora-primer.md",
        "/home/me/project/data/raw/docs/lora-primer.md",
    ],
)
def test_a_source_written_another_way_names_its_document(written):
    """Before: only the exact manifest source or the bare file name matched; ``./data/raw/...``,
    ``docs/x.md``, a Windows path or an absolute one made the question "unknown"."""
    trained = {"data/raw/docs/lora-primer.md"}
    assert _document(written, trained, KNOWN) == ("data/raw/docs/lora-primer.md", "trained")
    assert _document(written, set(), KNOWN) == ("data/raw/docs/lora-primer.md", "control")


def test_an_ambiguous_or_unknown_source_stays_unknown():
    assert _document("local-models.epub", set(), KNOWN) == ("local-models.epub", "unknown")
    assert _document("notes/local-models.epub", set(), KNOWN)[1] == "control"
    assert _document("other.md", set(), KNOWN) == ("other.md", "unknown")
    assert _document("./", set(), KNOWN) == ("./", "unknown")


# --- synth: a damaged cache entry is asked again, never a crash ----------------------------------------


@pytest.mark.parametrize(
    "damaged",
    [
        {"pairs": ["not a pair"], "problem": None},
        {"pairs": [{"question": ["x"], "answer": 1}], "problem": None},
        {"pairs": [], "problem": None, "text": 7, "finish_reason": "stop"},
        {"pairs": [], "problem": None, "text": "{}", "finish_reason": None},
    ],
)
def test_a_damaged_cache_entry_is_asked_again(tmp_path, bundled_tokenizer_dir, damaged):
    """Before: an entry with a list of non-objects under "pairs" (and no reply text) was used as is and
    synth died with AttributeError ('str' object has no attribute 'get')."""
    from test_synth import FakeTeacher, document, write_docs

    from lorapipe.synth import synthesize

    docs = write_docs(tmp_path / "text", {"docs/d0.md": document(0)})
    knobs = {"passage_tokens": 40, "overlap_tokens": 0, "eval_fraction": 0.0, "cache_dir": tmp_path / "cache"}
    first = synthesize(docs, bundled_tokenizer_dir, tmp_path / "a", teacher=FakeTeacher(), **knobs)
    entries = sorted((tmp_path / "cache").glob("*.json"))
    assert entries and first["kept"] > 0
    for entry in entries:
        entry.write_text(json.dumps(damaged), encoding="utf-8")
    again = FakeTeacher()
    second = synthesize(docs, bundled_tokenizer_dir, tmp_path / "b", teacher=again, **knobs)
    assert second["asked"] == len(entries) and second["cached"] == 0
    assert (tmp_path / "a" / "pairs.jsonl").read_bytes() == (tmp_path / "b" / "pairs.jsonl").read_bytes()


# --- retrieval: Chinese and Japanese text ---------------------------------------------------------------


def test_retrieval_finds_chinese_and_japanese_passages(tmp_path):
    """Before: a run of CJK characters was one token as long as the sentence, so no question found
    its passage."""
    texts = [
        "LoRA trains two thin low-rank matrices.",
        "低秩适配只训练两个小矩阵，基础模型保持冻结。",
        "量子化はモデルのサイズを小さくします。",
        "Квантование уменьшает размер модели.",
    ]
    passages = [{"id": f"d#{i}", "source": "d", "passage": i, "text": t} for i, t in enumerate(texts)]
    build_index(passages, tmp_path / "index")
    index = load_index(tmp_path / "index")
    assert [hit["id"] for hit in index.search("什么是低秩适配？", 5)] == ["d#1"]
    assert [hit["id"] for hit in index.search("基础模型", 5)] == ["d#1"]
    assert [hit["id"] for hit in index.search("量子化とは何ですか", 5)] == ["d#2"]
    assert [hit["id"] for hit in index.search("Квантование", 5)] == ["d#3"]
    assert [hit["id"] for hit in index.search("low-rank matrices", 5)] == ["d#0"]
    assert index.search("the and of it", 5) == []


# --- scoring: key strings with a dash -------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, keys, hit",
    [
        ("two LOW-RANK matrices", ["low-rank"], True),
        ("two low rank matrices", ["low-rank"], True),  # before: False
        ("two low\u2013rank matrices", ["low-rank"], True),  # en dash; before: False
        ("two low-rank matrices", ["low rank"], True),  # before: False
        ("the Q4_K_M file", ["Q4_K_M"], True),
        ("the q4 k m file", ["Q4_K_M"], False),
        ("lowrank", ["low-rank"], False),
        ("low rank", ["low-rank", "matrices"], False),
    ],
)
def test_key_hit_treats_a_dash_as_a_space(answer, keys, hit):
    assert key_hit(answer, keys) is hit


# --- teacher: a password written into synth.base_url ----------------------------------------------------


def test_a_password_in_the_base_url_is_never_shown():
    """Before: ``http://user:password@host/v1`` went as is into the teacher's identity (stats.json's
    "teacher"), its description and every error message."""
    teacher = EndpointTeacher("http://me:S3CRET-pw@127.0.0.1:9/v1", "m", timeout_s=2, max_retries=0)
    assert "S3CRET" not in teacher.identity + teacher.description
    assert teacher.identity == "endpoint:http://me:***@127.0.0.1:9/v1|m"
    with pytest.raises(TeacherError) as error:
        teacher.check()
    assert "S3CRET" not in str(error.value) and "127.0.0.1:9" in str(error.value)


def test_synth_stats_hold_no_password(tmp_path, bundled_tokenizer_dir):
    from fake_teacher import FakeTeacher as Server
    from test_synth import document, write_docs

    from lorapipe.synth import synthesize

    docs = write_docs(tmp_path / "text", {"docs/d0.md": " ".join(document(0).split())})  # one paragraph
    with Server(models=["m"]) as server:
        url = server.url.replace("http://", "http://me:S3CRET-pw@")
        teacher = EndpointTeacher(url, "m", timeout_s=5, max_retries=0)
        stats = synthesize(
            docs, bundled_tokenizer_dir, tmp_path / "out", teacher=teacher, passage_tokens=40, cache_dir=tmp_path / "c"
        )
    assert stats["kept"] > 0
    written = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "out").rglob("*.json*"))
    written += "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "c").glob("*.json"))
    assert "S3CRET" not in written and "S3CRET" not in json.dumps(stats)
    assert list(read_jsonl(tmp_path / "out" / "pairs.jsonl"))


# --- ask --retrieval: prompts longer than llama.cpp's default context -----------------------------------


def test_answer_all_holds_a_prompt_longer_than_2048_tokens(monkeypatch):
    """Before: ``lorapipe ask --retrieval --top-k 8`` (passages of 256 tokens) died with llama.cpp's
    "Requested tokens (2907) exceed context window of 2048": answer_all's context was fixed at 2048."""
    import llama_cpp

    from lorapipe.generation import answer_all
    from lorapipe.models import bundled_gguf
    from lorapipe.retrieval import retrieval_messages

    seen = []

    class Recording(llama_cpp.Llama):
        def create_completion(self, prompt, **kwargs):  # no decoding: only what it was asked in
            seen.append((len(prompt), kwargs["max_tokens"], self.n_ctx()))
            return {"choices": [{"text": " two matrices"}]}

    monkeypatch.setattr(llama_cpp, "Llama", Recording)
    passages = [{"source": f"d{i}", "text": "LoRA trains two small low-rank matrices. " * 40} for i in range(8)]
    messages = retrieval_messages("You answer questions.", "What does LoRA train?", passages)
    gguf = bundled_gguf("smollm2-135m-instruct")
    assert answer_all(gguf, [messages], 8) == ["two matrices"]
    (prompt, new, n_ctx), *_ = seen
    assert prompt > 2048 and n_ctx >= prompt + new
    short = [{"role": "user", "content": "What does LoRA train?"}]
    assert answer_all(gguf, [short], 8) == ["two matrices"] and seen[-1][2] == 2048  # as before
    too_long = retrieval_messages("s", "q", [{"source": "d", "text": "LoRA trains two matrices. " * 2000}])
    with pytest.raises(ValueError, match="does not fit the 8192-token context.*--top-k"):
        answer_all(gguf, [too_long], 8)
