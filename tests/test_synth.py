"""The synth stage: passages, the reply cache (what asks the teacher again and what does not),
resume after the teacher went away, the filters counted per document, the seeded evaluation split,
determinism (also with parallel requests), and the messages a user sees. The teacher is an
in-process fake that writes pairs derived from the passage.

Run: .venv/bin/pytest tests/test_synth.py
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from lorapipe.dataset import chunk_text
from lorapipe.io import read_jsonl, write_jsonl
from lorapipe.models import load_tokenizer
from lorapipe.synth import (
    RUN_FIELDS,
    TEACHER_PROMPT,
    cache_key,
    grounding,
    passages_of,
    synthesize,
    without_run_fields,
)
from lorapipe.teacher import Reply, TeacherError, TeacherRequestError, TeacherUnavailable

COLORS = ("red", "green", "blue", "yellow", "white", "black", "orange", "purple")
FACT = re.compile(r"Item (\d+) weighs (\d+) kilograms")
KNOBS = {"passage_tokens": 40, "overlap_tokens": 0, "eval_fraction": 0.0}


def document(d: int, sentences: int = 6) -> str:
    return "\n\n".join(
        f"Item {100 * (d + 1) + i} weighs {i + 2} kilograms and is painted {COLORS[(d + i) % len(COLORS)]}."
        for i in range(sentences)
    )


def write_docs(folder: Path, texts: dict[str, str]) -> Path:
    """An extract output folder: one text per source and manifest.jsonl (one failed row, skipped)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (source, text) in enumerate(texts.items()):
        (folder / f"doc{i}.txt").write_text(text + "\n", encoding="utf-8")
        rows.append({"source": source, "status": "ok", "output": f"doc{i}.txt"})
    rows.append({"source": "docs/broken.pdf", "status": "failed", "output": None})
    write_jsonl(folder / "manifest.jsonl", rows)
    return folder


def fact_pairs(content: str, n: int) -> list[dict]:
    """Pairs answerable from the passage alone: one per "Item N weighs W kilograms" it holds."""
    return [
        {"question": f"How much does item {item} weigh?", "answer": f"{weight} kilograms"}
        for item, weight in FACT.findall(content)[:n]
    ]


class FakeTeacher:
    """The Teacher protocol in process: pairs derived from the passage (or `replies(content, n)`),
    TeacherUnavailable after `fail_after` requests, a small completion-order jitter."""

    def __init__(self, identity="fake:one", concurrency=1, replies=None, fail_after=None):
        self.identity, self.description, self.concurrency = identity, "the fake teacher", concurrency
        self.replies, self.fail_after = replies, fail_after
        self.asked: list[str] = []
        self.requests: list[dict] = []
        self.checked = self.closed = False
        self._lock = threading.Lock()

    def check(self) -> None:
        self.checked = True

    def generate(self, messages, schema, max_tokens, temperature, seed) -> Reply:
        content = messages[-1]["content"]
        with self._lock:
            if self.fail_after is not None and len(self.asked) >= self.fail_after:
                raise TeacherUnavailable("connection refused")
            self.asked.append(content)
            self.requests.append({"messages": messages, "max_tokens": max_tokens, "seed": seed})
        time.sleep(0.002 * (sum(map(ord, content)) % 4))  # replies finish out of order with concurrency > 1
        n = schema["properties"]["pairs"]["maxItems"]
        if self.replies:
            return self.replies(content, n)
        return Reply(json.dumps({"pairs": fact_pairs(content, n)}), "stop")

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def docs(tmp_path) -> Path:
    return write_docs(tmp_path / "text", {f"docs/d{d}.md": document(d) for d in range(3)})


def run(docs, base, out, teacher, **knobs) -> dict:
    return synthesize(docs, base, out, teacher=teacher, **{**KNOBS, **knobs})


def asked_passages(teacher: FakeTeacher, passages: list[dict]) -> set[str]:
    return {p["id"] for p in passages if any(p["text"] in content for content in teacher.asked)}


# --- passages ----------------------------------------------------------------------------------------


def test_passages_are_the_chunks_of_each_ok_document_and_cover_its_text(docs, bundled_tokenizer_dir):
    tokenizer = load_tokenizer(bundled_tokenizer_dir)
    rows = passages_of(docs, tokenizer, 40, 0)
    for d in range(3):
        source, text = f"docs/d{d}.md", (docs / f"doc{d}.txt").read_text()
        mine = [r for r in rows if r["source"] == source]
        assert [r["text"] for r in mine] == chunk_text(text, tokenizer, 40, 0)
        assert [r["id"] for r in mine] == [f"{source}#{n}" for n in range(len(mine))]
        assert [r["passage"] for r in mine] == list(range(len(mine)))
        assert " ".join(r["text"] for r in mine).split() == text.split()  # no overlap: the text, once
        assert len(mine) >= 2
    assert [r["source"] for r in rows] == sorted(r["source"] for r in rows)  # manifest order
    assert all(set(r) == {"id", "source", "passage", "text"} for r in rows)


def test_a_missing_manifest_names_the_extract_stage(tmp_path, bundled_tokenizer_dir):
    with pytest.raises(FileNotFoundError, match=r"manifest\.jsonl not found.*extract"):
        passages_of(tmp_path, load_tokenizer(bundled_tokenizer_dir), 40, 0)


# --- grounding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "passage", "expected"),
    [
        ("Two thin matrices.", "LoRA trains two thin matrices beside each weight.", 1.0),
        ("The thin matrices", "LoRA trains two thin matrices.", 1.0),  # "the" is a stopword
        ("Three thick matrices", "LoRA trains two thin matrices.", 1 / 3),
        ("purple elephants", "LoRA trains two thin matrices.", 0.0),
        ("Yes, it is.", "Yes, it is.", 0.0),  # stopwords only: nothing that the passage could ground
        ("It is the one", "anything", 0.0),
        ("", "LoRA", 0.0),
        ("MATRICES matrices", "the matrices", 1.0),  # case-insensitive, each occurrence counted
        ("die Gewichte bleiben eingefroren", "Die Gewichte bleiben während des Trainings eingefroren.", 1.0),
        ("les poids gelés", "Les poids restent gelés.", 1.0),
    ],
)
def test_grounding_is_the_share_of_content_words_found_in_the_passage(answer, passage, expected):
    assert grounding(answer, passage) == pytest.approx(expected)


def test_grounding_counts_content_words_only():
    assert grounding("It is the one", "one") == 1.0
    assert grounding("It is the", "It is the") == 0.0  # no content word at all


def test_an_answer_that_repeats_its_question_is_left_out():
    from lorapipe.synth import _reject

    limits = {"max_question_chars": 200, "max_answer_chars": 200, "min_grounding": 0.5}
    passage = "The code of the stage and the values of its parameters decide whether it reruns."
    heading = "The code of the stage and the values of its parameters"
    assert _reject(heading, heading, passage, limits) == "echo"  # a heading copied into both
    assert _reject("What decides whether a stage reruns?", heading, passage, limits) is None
    assert _reject("Which is faster, the code or the parameters?", "the code", passage, limits) is None


# --- outputs, determinism ----------------------------------------------------------------------------


def test_outputs_rows_and_stats(docs, bundled_tokenizer_dir, tmp_path):
    teacher = FakeTeacher()
    stats = run(docs, bundled_tokenizer_dir, tmp_path / "out", teacher, eval_fraction=0.25)
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"passages.jsonl", "pairs.jsonl", "stats.json", "index"}
    passages, pairs = read_jsonl(out / "passages.jsonl"), read_jsonl(out / "pairs.jsonl")
    assert len(teacher.asked) == len(passages) == stats["passages"] == stats["asked"]
    assert teacher.requests[0]["messages"][0] == {"role": "system", "content": TEACHER_PROMPT}
    facts = sum(len(FACT.findall(p["text"])) for p in passages)
    assert len(pairs) == stats["kept"] == stats["pairs_generated"] == facts == 18  # 2 per passage at most
    assert all(set(p) == {"question", "answer", "source", "passage_id", "split"} for p in pairs)
    by_id = {p["id"]: p for p in passages}
    assert all(p["answer"].split()[0] in by_id[p["passage_id"]]["text"] for p in pairs)
    order = [(p["source"], by_id[p["passage_id"]]["passage"]) for p in pairs]
    assert order == sorted(order)
    assert stats["teacher"] == "fake:one" and set(stats["documents"]) == {f"docs/d{d}.md" for d in range(3)}
    assert stats["train"] + stats["eval"] == stats["kept"] and stats["eval"] == 6  # 2 of 6 per document
    written = json.loads((out / "stats.json").read_text())
    assert written == without_run_fields(stats) and not set(RUN_FIELDS) & set(written)  # no run facts on disk
    assert (out / "index" / "passages.jsonl").read_text() == (out / "passages.jsonl").read_text()


def test_the_same_inputs_give_byte_identical_outputs(docs, bundled_tokenizer_dir, tmp_path, monkeypatch):
    outs = []
    for name in ("one", "two"):
        monkeypatch.setenv("LORAPIPE_CACHE_DIR", str(tmp_path / f"cache-{name}"))  # both ask the teacher
        run(docs, bundled_tokenizer_dir, tmp_path / name, FakeTeacher(), eval_fraction=0.3)
        outs.append(tmp_path / name)
    cached = run(docs, bundled_tokenizer_dir, tmp_path / "three", FakeTeacher(), eval_fraction=0.3)
    assert cached["asked"] == 0
    outs.append(tmp_path / "three")
    assert cached["cached"] == 9
    files = sorted(str(p.relative_to(outs[0])) for p in outs[0].rglob("*") if p.is_file())
    assert "stats.json" in files and "index/params.index.json" in files
    for name in files:  # asked twice, then from the cache: the same bytes, stats.json included
        assert len({(out / name).read_bytes() for out in outs}) == 1, name


def test_four_parallel_requests_give_the_bytes_of_one(docs, bundled_tokenizer_dir, tmp_path, monkeypatch):
    outs = []
    for concurrency in (1, 4):
        monkeypatch.setenv("LORAPIPE_CACHE_DIR", str(tmp_path / f"cache-{concurrency}"))
        teacher = FakeTeacher(concurrency=concurrency)
        run(docs, bundled_tokenizer_dir, tmp_path / str(concurrency), teacher, eval_fraction=0.3)
        assert len(teacher.asked) == 9
        outs.append(tmp_path / str(concurrency))
    for name in ("passages.jsonl", "pairs.jsonl"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
    stats = [without_run_fields(json.loads((out / "stats.json").read_text())) for out in outs]
    assert stats[0] == stats[1]


# --- the cache ---------------------------------------------------------------------------------------


def test_what_asks_the_teacher_again(docs, bundled_tokenizer_dir, tmp_path):
    base, out = bundled_tokenizer_dir, tmp_path / "out"
    first = FakeTeacher()
    run(docs, base, out, first)
    pairs = (out / "pairs.jsonl").read_bytes()
    assert len(first.asked) == 9

    for knobs in ({}, {"min_grounding": 0.9}, {"dedup_threshold": 0.5}, {"resume": True}, {"eval_fraction": 0.5}):
        again = FakeTeacher()
        stats = run(docs, base, out, again, **knobs)
        assert again.asked == [] and stats["cached"] == 9 and stats["asked"] == 0, knobs
    assert (out / "pairs.jsonl").read_bytes() != pairs  # eval_fraction 0.5 marked some pairs

    for knobs, teacher in (
        ({"prompt": "Write quiz pairs as JSON."}, FakeTeacher()),
        ({"questions_per_passage": 3}, FakeTeacher()),
        ({"max_new_tokens": 200}, FakeTeacher()),
        ({"max_answer_chars": 100}, FakeTeacher()),
        ({}, FakeTeacher(identity="fake:two")),
        ({"resume": False}, FakeTeacher()),
    ):
        run(docs, base, out, teacher, **knobs)
        assert len(teacher.asked) == 9, (knobs, teacher.identity)


def test_a_changed_passage_and_an_added_document_ask_only_their_passages(docs, bundled_tokenizer_dir, tmp_path):
    base, out = bundled_tokenizer_dir, tmp_path / "out"
    run(docs, base, out, FakeTeacher())
    before = {p["text"] for p in read_jsonl(out / "passages.jsonl")}

    (docs / "doc1.txt").write_text(document(1).replace("painted green", "painted a deep sea green") + "\n")
    teacher = FakeTeacher()
    run(docs, base, out, teacher)
    changed = [p for p in read_jsonl(out / "passages.jsonl") if p["text"] not in before]
    assert len(changed) == 1 and changed[0]["source"] == "docs/d1.md"
    assert teacher.asked and asked_passages(teacher, changed) == {changed[0]["id"]} and len(teacher.asked) == 1

    texts = {f"docs/d{d}.md": (docs / f"doc{d}.txt").read_text().strip() for d in range(3)}
    write_docs(docs, {**texts, "docs/new.md": document(7, sentences=4)})
    teacher = FakeTeacher()
    stats = run(docs, base, out, teacher)
    new = [p for p in read_jsonl(out / "passages.jsonl") if p["source"] == "docs/new.md"]
    assert len(teacher.asked) == len(new) == stats["documents"]["docs/new.md"]["asked"] >= 2
    assert asked_passages(teacher, new) == {p["id"] for p in new}
    assert stats["documents"]["docs/d0.md"]["cached"] == 3


def test_the_same_passage_in_two_documents_is_asked_once(tmp_path, bundled_tokenizer_dir):
    docs = write_docs(tmp_path / "text", {"a/copy.md": document(0), "b/copy.md": document(0)})
    teacher = FakeTeacher()
    stats = run(docs, bundled_tokenizer_dir, tmp_path / "out", teacher)
    assert len(teacher.asked) == 3 and stats["asked"] == 6
    assert stats["documents"]["a/copy.md"]["kept"] == 6
    assert stats["documents"]["b/copy.md"]["removed"]["duplicate"] == 6  # the same questions: held once


def test_the_seed_counts_only_when_sampling():
    messages = [{"role": "user", "content": "x"}]
    greedy = {"schema": {}, "max_tokens": 8, "temperature": 0.0}
    sampled = {**greedy, "temperature": 0.7}
    assert cache_key(messages, "t", {**greedy, "seed": 1}) == cache_key(messages, "t", {**greedy, "seed": 2})
    assert cache_key(messages, "t", {**greedy, "temperature": 0}) == cache_key(messages, "t", {**greedy, "seed": 1})
    assert cache_key(messages, "t", {**sampled, "seed": 1}) != cache_key(messages, "t", {**sampled, "seed": 2})
    assert cache_key(messages, "t", {**greedy, "seed": 1}) != cache_key(messages, "u", {**greedy, "seed": 1})


# --- resume, failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_teacher_gone_half_way_keeps_what_it_wrote(docs, bundled_tokenizer_dir, tmp_path, monkeypatch, concurrency):
    base, out = bundled_tokenizer_dir, tmp_path / "out"
    monkeypatch.setenv("LORAPIPE_CACHE_DIR", str(tmp_path / "clean-cache"))
    run(docs, base, tmp_path / "clean", FakeTeacher())
    monkeypatch.setenv("LORAPIPE_CACHE_DIR", str(tmp_path / "cache"))

    gone = FakeTeacher(fail_after=4, concurrency=concurrency)
    with pytest.raises(TeacherUnavailable) as caught:
        run(docs, base, out, gone)
    message = str(caught.value)
    assert "after 4 of 9 passages, the teacher (the fake teacher) went away (connection refused)" in message
    assert "what it wrote is cached: rerun `dvc repro synth`" in message
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))  # outputs not replaced, no leftover

    again = FakeTeacher()
    stats = run(docs, base, out, again)
    assert stats["asked"] == 5 and stats["cached"] == 4 and not set(again.asked) & set(gone.asked)
    for name in ("passages.jsonl", "pairs.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()


@pytest.mark.parametrize("error", [TeacherRequestError("400: prompt too long"), RuntimeError("400 Bad Request")])
def test_a_failed_request_is_counted_and_asked_again_next_run(docs, bundled_tokenizer_dir, tmp_path, capsys, error):
    def refuse_item_102(content, n):
        if "Item 102 " in content:
            raise error
        return Reply(json.dumps({"pairs": fact_pairs(content, n)}), "stop")

    stats = run(docs, bundled_tokenizer_dir, tmp_path / "out", FakeTeacher(replies=refuse_item_102))
    assert stats["failed_requests"] == 1 == stats["documents"]["docs/d0.md"]["failed_requests"]
    assert stats["kept"] == 16
    err = capsys.readouterr().err
    assert f"failed ({error}); skipped, asked again next run" in err
    assert "1 request(s) failed" in err and "dvc repro --force synth" in err
    again = FakeTeacher()
    stats = run(docs, bundled_tokenizer_dir, tmp_path / "out", again)
    assert len(again.asked) == 1 and stats["failed_requests"] == 0 and stats["kept"] == 18


def test_a_teacher_no_longer_usable_stops_the_run(docs, bundled_tokenizer_dir, tmp_path):
    def key_refused(content, n):
        if "Item 2" in content:
            raise TeacherError("the endpoint refused the key in $TEACHER_KEY (401)")
        return Reply(json.dumps({"pairs": fact_pairs(content, n)}), "stop")

    with pytest.raises(TeacherError, match="refused the key"):
        run(docs, bundled_tokenizer_dir, tmp_path / "out", FakeTeacher(replies=key_refused))
    assert not (tmp_path / "out").exists()
    again = FakeTeacher()
    run(docs, bundled_tokenizer_dir, tmp_path / "out", again)
    assert len(again.asked) == 6  # d0's three passages were cached


def test_every_request_failing_is_an_error(docs, bundled_tokenizer_dir, tmp_path):
    def refuse(content, n):
        raise RuntimeError("500 model crashed")

    with pytest.raises(TeacherError, match=r"every request to the teacher \(the fake teacher\) failed"):
        run(docs, bundled_tokenizer_dir, tmp_path / "out", FakeTeacher(replies=refuse))
    assert not (tmp_path / "out").exists()


# --- filters and the split ---------------------------------------------------------------------------


def mixed_replies(content: str, n: int) -> Reply:
    """d0: no JSON; d1: cut at the token limit; d2: one good pair and one of each kind of bad pair."""
    if "Item 1" in content:
        return Reply("Sure! Here are some questions:", "stop")
    if "Item 2" in content:
        return Reply('{"pairs": [{"question": "How much', "length")
    good = fact_pairs(content, 1)
    return Reply(
        json.dumps(
            {
                "pairs": [
                    *good,
                    {"question": "What colour do elephants dance?", "answer": "purple elephants dance at night"},
                    {"question": good[0]["question"].upper(), "answer": good[0]["answer"]},  # near duplicate
                    {"question": "How heavy is it, in words?", "answer": "kilograms " * 40},  # too long
                    {"question": "Why?", "answer": "kilograms"},  # too short
                    {"question": "And the weight?", "answer": " "},  # too short: no answer
                ]
            }
        ),
        "stop",
    )


def test_a_cut_reply_keeps_its_whole_pairs_and_counts_the_cut_one(docs, bundled_tokenizer_dir, tmp_path):
    def cut_after_one(content: str, n: int) -> Reply:
        whole = json.dumps({"pairs": fact_pairs(content, 2)})
        return Reply(whole[: whole.rindex('"answer"')], "length")  # the second pair is cut in its answer

    stats = run(docs, bundled_tokenizer_dir, tmp_path / "out", FakeTeacher(replies=cut_after_one))
    assert stats["removed"]["truncated"] == stats["passages"] == 9
    assert stats["pairs_generated"] == stats["kept"] == 9  # one whole pair from each reply


def test_each_filter_is_counted_per_document(docs, bundled_tokenizer_dir, tmp_path):
    stats = run(
        docs, bundled_tokenizer_dir, tmp_path / "out", FakeTeacher(replies=mixed_replies), questions_per_passage=6
    )
    zero = dict.fromkeys(("not_json", "truncated", "too_short", "too_long", "echo", "ungrounded", "duplicate"), 0)
    documents = stats["documents"]
    assert documents["docs/d0.md"]["removed"] == {**zero, "not_json": 3}
    assert documents["docs/d1.md"]["removed"] == {**zero, "truncated": 3}
    assert documents["docs/d2.md"]["removed"] == {
        **zero,
        "ungrounded": 3,
        "duplicate": 3,
        "too_long": 3,
        "too_short": 6,
    }
    assert documents["docs/d2.md"]["pairs_generated"] == 18 and documents["docs/d2.md"]["kept"] == 3
    assert documents["docs/d0.md"]["pairs_generated"] == 0 and documents["docs/d0.md"]["kept"] == 0
    assert stats["removed"] == {**zero, "not_json": 3, "truncated": 3, "ungrounded": 3, "duplicate": 3,
                                "too_long": 3, "too_short": 6}  # fmt: skip
    pairs = read_jsonl(tmp_path / "out" / "pairs.jsonl")
    assert [p["answer"] for p in pairs] == ["2 kilograms", "4 kilograms", "6 kilograms"]


@pytest.mark.parametrize(("limit", "kept"), [(30, 0), (31, 0), (32, 9)])
def test_an_answer_that_reaches_its_max_length_was_cut_there(docs, bundled_tokenizer_dir, tmp_path, limit, kept):
    # 30 characters: the grammar stops a field at maxLength, and a cut that ends in a space loses it
    # to the strip, so an answer one character short of the limit was cut too.
    answer = "kilograms kilograms kilograms!"
    reply = Reply(json.dumps({"pairs": [{"question": "How heavy are the items?", "answer": answer}]}), "stop")
    teacher = FakeTeacher(replies=lambda content, n: reply)
    stats = run(docs, bundled_tokenizer_dir, tmp_path / "out", teacher, max_answer_chars=limit, dedup_threshold=1.0)
    assert stats["removed"]["too_long"] == 9 - kept and stats["kept"] == min(kept, 1)  # one question, 8 duplicates


def test_min_grounding_zero_keeps_ungrounded_answers(docs, bundled_tokenizer_dir, tmp_path):
    stats = run(
        docs,
        bundled_tokenizer_dir,
        tmp_path / "out",
        FakeTeacher(replies=mixed_replies),
        questions_per_passage=6,
        min_grounding=0.0,
    )
    # the elephants' question, the same in each passage, is kept once: a duplicate in the other two
    assert stats["removed"]["ungrounded"] == 0 and stats["removed"]["duplicate"] == 5
    assert stats["documents"]["docs/d2.md"]["kept"] == 4


def test_the_eval_split_is_seeded_per_document(docs, bundled_tokenizer_dir, tmp_path):
    marks = {}
    for seed in (1, 1, 2, 3, 4):
        stats = run(docs, bundled_tokenizer_dir, tmp_path / "out", FakeTeacher(), eval_fraction=0.2, seed=seed)
        pairs = read_jsonl(tmp_path / "out" / "pairs.jsonl")
        for source, counts in stats["documents"].items():
            held = [p for p in pairs if p["source"] == source and p["split"] == "eval"]
            assert len(held) == counts["eval"] == 1  # round(0.2 × 6) = 1
            assert counts["train"] == 5
        marks.setdefault(seed, []).append([p["split"] for p in pairs])
    assert marks[1][0] == marks[1][1]
    assert len({tuple(m[0]) for m in marks.values()}) > 1


def test_a_document_with_two_pairs_holds_one_out_and_one_with_one_pair_none(tmp_path, bundled_tokenizer_dir):
    two = "Item 501 weighs 3 kilograms.\n\nItem 502 weighs 4 kilograms."
    docs = write_docs(tmp_path / "text", {"docs/two.md": two, "docs/one.md": "Item 601 weighs 5 kilograms."})
    stats = run(docs, bundled_tokenizer_dir, tmp_path / "out", FakeTeacher(), eval_fraction=0.01)
    assert stats["documents"]["docs/two.md"]["eval"] == 1 and stats["documents"]["docs/two.md"]["train"] == 1
    assert stats["documents"]["docs/one.md"]["eval"] == 0 and stats["documents"]["docs/one.md"]["train"] == 1


# --- questions_per_passage 0, zero kept ------------------------------------------------------------------


def test_zero_questions_asks_nothing_and_writes_the_passages(docs, bundled_tokenizer_dir, tmp_path, monkeypatch):
    import lorapipe.synth

    monkeypatch.setattr(lorapipe.synth, "make_teacher", lambda *a, **k: pytest.fail("no teacher is made"))
    teacher = FakeTeacher()
    for given in (teacher, None):
        stats = run(docs, bundled_tokenizer_dir, tmp_path / "out", given, questions_per_passage=0)
        assert teacher.asked == [] and not teacher.checked
    out = tmp_path / "out"
    assert (out / "pairs.jsonl").read_text() == ""
    assert len(read_jsonl(out / "passages.jsonl")) == stats["passages"] == 9
    assert (out / "index" / "passages.jsonl").is_file()
    assert stats["asked"] == stats["cached"] == stats["kept"] == 0 and stats["teacher"] is None


@pytest.mark.parametrize(
    ("reply", "knobs", "filter_", "fix"),
    [
        (Reply('{"pairs": [{"question": "What is the colour?", "answer": "violet elephants"}]}', "stop"),
         {}, "ungrounded", "lower synth.min_grounding (0.5)"),
        (Reply('{"pairs": [{"question": "What', "length"), {"max_new_tokens": 16}, "truncated",
         "synth.max_new_tokens (16): raise it"),
        (Reply("I cannot do that.", "stop"), {}, "not_json", "use a larger teacher"),
    ],
)  # fmt: skip
def test_zero_kept_names_the_filter_and_the_knob(
    docs, bundled_tokenizer_dir, tmp_path, capsys, reply, knobs, filter_, fix
):
    stats = run(docs, bundled_tokenizer_dir, tmp_path / "out", FakeTeacher(replies=lambda c, n: reply), **knobs)
    assert stats["kept"] == 0 and (tmp_path / "out" / "pairs.jsonl").read_text() == ""
    err = capsys.readouterr().err
    assert "[synth] no question-answer pair was kept from 9 passage(s)" in err
    assert f"the {filter_} filter removed the most" in err and fix in err
    assert "Training goes on with the text alone." in err


def test_without_a_teacher_one_is_made_checked_and_closed(docs, bundled_tokenizer_dir, tmp_path, monkeypatch):
    import lorapipe.synth

    made, teachers = [], []
    monkeypatch.setattr(
        lorapipe.synth,
        "make_teacher",
        lambda s, **k: made.append((s, k)) or teachers.append(FakeTeacher()) or teachers[-1],
    )
    run(docs, bundled_tokenizer_dir, tmp_path / "out", None, max_new_tokens=200, model_name="m")
    run(docs, bundled_tokenizer_dir, tmp_path / "out", "teacher.gguf", resume=False)
    (params, options), (gguf_params, _) = made
    assert params.teacher == "base" and params.max_new_tokens == 200 and params.passage_tokens == 40
    assert options == {"model_name": "m", "base_dir": bundled_tokenizer_dir} and gguf_params.teacher == "teacher.gguf"
    assert all(t.checked and t.closed and len(t.asked) == 9 for t in teachers)


# --- the stage module and the command ------------------------------------------------------------------


def stage_params(**synth):
    from lorapipe.params import validate_params

    return validate_params({"synth": {"passage_tokens": 40, "overlap_tokens": 0, **synth}}, "test")


def test_the_stage_checks_the_teacher_first_and_closes_it(docs, bundled_tokenizer_dir, tmp_path, monkeypatch):
    import lorapipe.stages.synth as stage

    teacher = FakeTeacher()
    made = []
    monkeypatch.setattr(stage, "make_teacher", lambda s, **k: made.append((s, k)) or teacher)
    stage.run(stage_params(eval_fraction=0.2), docs, bundled_tokenizer_dir, tmp_path / "out")
    assert teacher.checked and teacher.closed and len(teacher.asked) == 9
    assert made[0][1] == {"model_name": "smollm2-135m-instruct", "base_dir": bundled_tokenizer_dir}
    assert teacher.requests[0]["max_tokens"] == 160 and teacher.requests[0]["seed"] == 42
    assert len(read_jsonl(tmp_path / "out" / "pairs.jsonl")) == 18


def test_the_stage_names_an_unusable_teacher_before_any_work(docs, bundled_tokenizer_dir, tmp_path, monkeypatch):
    import lorapipe.stages.synth as stage

    class Unreachable(FakeTeacher):
        def check(self):
            raise TeacherError("cannot reach http://127.0.0.1:9/v1/models (connection refused)")

    teacher = Unreachable()
    monkeypatch.setattr(stage, "make_teacher", lambda s, **k: teacher)
    monkeypatch.setattr(stage, "synthesize", lambda *a, **k: pytest.fail("no work before the check"))
    with pytest.raises(SystemExit, match=r"\[synth\] error: cannot reach http://127.0.0.1:9/v1/models"):
        stage.run(stage_params(), docs, bundled_tokenizer_dir, tmp_path / "out")
    assert teacher.closed


def test_the_stage_turns_a_teacher_gone_into_a_message(docs, bundled_tokenizer_dir, tmp_path, monkeypatch):
    import lorapipe.stages.synth as stage

    monkeypatch.setattr(stage, "make_teacher", lambda s, **k: FakeTeacher(fail_after=2))
    with pytest.raises(SystemExit, match=r"after 2 of 9 passages, the teacher .* went away .*rerun `dvc repro synth`"):
        stage.run(stage_params(), docs, bundled_tokenizer_dir, tmp_path / "out")


def test_lorapipe_synth_with_zero_questions(docs, tiny_model_dir, tmp_path, monkeypatch):
    import lorapipe.stages.synth as stage
    from lorapipe.cli import main

    monkeypatch.chdir(tmp_path)  # no params.yaml here: the defaults
    monkeypatch.setattr(stage, "make_teacher", lambda *a, **k: pytest.fail("no teacher is made"))
    flags = ["--text-dir", str(docs), "--base-dir", str(tiny_model_dir), "--output-dir", "synth"]
    knobs = ["--synth.questions_per_passage", "0", "--synth.passage_tokens", "40", "--synth.overlap_tokens", "0"]
    assert main(["synth", *flags, *knobs]) == 0
    assert (tmp_path / "synth" / "pairs.jsonl").read_text() == ""
    assert len(read_jsonl(tmp_path / "synth" / "passages.jsonl")) == 9
    assert main(["synth", "--text-dir", "nowhere", "--base-dir", str(tiny_model_dir)]) == 2


def test_lorapipe_synth_no_resume_asks_again(docs, tiny_model_dir, tmp_path, monkeypatch):
    import lorapipe.stages.synth as stage
    from lorapipe.cli import main

    monkeypatch.chdir(tmp_path)
    teachers = []
    monkeypatch.setattr(stage, "make_teacher", lambda *a, **k: teachers.append(FakeTeacher()) or teachers[-1])
    flags = ["--text-dir", str(docs), "--base-dir", str(tiny_model_dir), "--synth.passage_tokens", "40",
             "--synth.overlap_tokens", "0"]  # fmt: skip
    for extra in ([], [], ["--no-resume"]):
        assert main(["synth", *flags, *extra]) == 0
    assert [len(t.asked) for t in teachers] == [9, 0, 9]
    assert len(read_jsonl(tmp_path / "data" / "synth" / "pairs.jsonl")) == 18


def test_killed_at_the_mid_fault_point_it_resumes(docs, bundled_tokenizer_dir, tmp_path):
    """SIGKILL with half the requests answered (LORAPIPE_FAULT=synth:mid): those are cached, no output
    is written, and the rerun asks only the others."""
    import os
    import subprocess
    import sys

    script = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from test_synth import FakeTeacher, run; from lorapipe import faults;"
        "faults.enter_stage('synth'); run(sys.argv[2], sys.argv[3], sys.argv[4], FakeTeacher())"
    )
    env = {**os.environ, "LORAPIPE_FAULT": "synth:mid", "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [sys.executable, "-c", script, str(Path(__file__).parent), str(docs), str(bundled_tokenizer_dir)]
    killed = subprocess.run([*args, str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert "[fault] synth:mid" in killed.stdout
    assert not (tmp_path / "out").exists()
    assert len(list((tmp_path / "lorapipe-cache" / "synth").glob("*.json"))) == 4  # 9 // 2 answered

    again = FakeTeacher()
    stats = run(docs, bundled_tokenizer_dir, tmp_path / "out", again)
    assert stats["cached"] == 4 and len(again.asked) == stats["asked"] == 5 and stats["kept"] == 18


# --- the endpoint teacher against the fake OpenAI-compatible server -------------------------------------


NAMES = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa quebec".split()
)
NAMES.append("romeo")


def prose(d: int) -> str:
    """A paragraph of six facts with different subjects (the fake endpoint asks about each sentence's
    first content word and answers with the sentence)."""
    return " ".join(f"The {NAMES[6 * d + i]} crate weighs {i + 2} kilograms." for i in range(6))


def endpoint_params(url: str, **synth):
    return stage_params(base_url=url, model="fake-teacher", eval_fraction=0.2, **synth)


def test_the_stage_with_an_endpoint_resumes_after_it_went_away(bundled_tokenizer_dir, tmp_path):
    import lorapipe.stages.synth as stage
    from fake_teacher import FakeTeacher as FakeEndpoint

    docs = write_docs(tmp_path / "text", {f"docs/p{d}.md": prose(d) for d in range(3)})
    out = tmp_path / "out"
    with FakeEndpoint(die_after=4) as server:
        with pytest.raises(SystemExit) as caught:
            stage.run(endpoint_params(server.url), docs, bundled_tokenizer_dir, out)
        assert str(caught.value).startswith(f"[synth] error: after 4 of 6 passages, the teacher at {server.url} went")
        assert str(caught.value).endswith(
            "what it wrote is cached: rerun `dvc repro synth` (or `lorapipe synth`) to resume"
        )
        assert not out.exists() and len(server.passages_asked()) == 4
        server.revive()
        stage.run(endpoint_params(server.url, concurrency=4), docs, bundled_tokenizer_dir, out)
        assert len(server.passages_asked()) == 6  # the 2 others only
    stats = json.loads((out / "stats.json").read_text())
    assert stats["teacher"] == f"endpoint:{server.url}|fake-teacher"  # the 4 answered before came from the cache
    pairs = read_jsonl(out / "pairs.jsonl")
    assert len(pairs) == stats["kept"] == 12 and stats["eval"] == 3
    texts = {p["id"]: p["text"] for p in read_jsonl(out / "passages.jsonl")}
    assert all(p["answer"] in texts[p["passage_id"]] for p in pairs)  # the fake answers with a sentence


def test_an_endpoint_refusing_one_passage_is_counted(tmp_path, bundled_tokenizer_dir):
    import lorapipe.stages.synth as stage
    from fake_teacher import FakeTeacher as FakeEndpoint

    docs = write_docs(tmp_path / "text", {"docs/a.md": prose(0), "docs/b.md": prose(1) + "\n\nTOOLONG is a marker."})
    with FakeEndpoint() as server:
        stage.run(endpoint_params(server.url), docs, bundled_tokenizer_dir, tmp_path / "out")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["failed_requests"] == 1 == stats["documents"]["docs/b.md"]["failed_requests"]
    assert stats["documents"]["docs/a.md"]["kept"] == 4


def test_an_unreachable_endpoint_is_named_before_any_work(docs, bundled_tokenizer_dir, tmp_path, monkeypatch):
    import lorapipe.stages.synth as stage
    from fake_teacher import FakeTeacher as FakeEndpoint

    with FakeEndpoint() as server:
        url = server.url
    monkeypatch.setattr(stage, "synthesize", lambda *a, **k: pytest.fail("no work before the check"))
    with pytest.raises(SystemExit, match=re.escape(url)):
        stage.run(endpoint_params(url), docs, bundled_tokenizer_dir, tmp_path / "out")
