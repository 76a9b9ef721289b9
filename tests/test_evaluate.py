"""Evaluate stages: perplexity of base, merged and GGUF on the same tokens; reports.

Run: .venv/bin/pytest tests/test_evaluate.py
"""

import json

import pytest

from helpers import read_json
from lorapipe.io import read_jsonl
from lorapipe.evaluate import evaluate_base, evaluate_models
from lorapipe.export import export_gguf
from lorapipe.scoring import _FLAT_JSON


def test_base_merged_and_gguf_perplexity(tmp_path, dataset_dir, tiny_model_dir):
    """quants [Q8_0, F32]: every GGUF is scored; the answers come from the model export.json names
    (Q8_0, the Modelfile's FROM), not from the first file by name (F32)."""
    export_gguf(
        tiny_model_dir,
        dataset_dir / "prompts.json",
        tmp_path / "gguf",
        quants=["Q8_0", "F32"],
        outtype="f32",
        name="tiny",
    )
    base = evaluate_base(
        dataset_dir / "val.jsonl",
        tiny_model_dir,
        tmp_path / "eval_base.json",
        prompts_path=dataset_dir / "prompts.json",
        max_samples=4,
    )
    assert read_json(tmp_path / "eval_base.json") == base
    metrics = evaluate_models(
        dataset_dir / "val.jsonl",
        dataset_dir / "prompts.json",
        tiny_model_dir,
        tmp_path / "gguf",
        tmp_path / "eval.json",
        samples_path=tmp_path / "samples.md",
        base_metrics_path=tmp_path / "eval_base.json",
        max_samples=4,
        num_generations=1,
        max_new_tokens=4,
    )
    # The "merged" model here is the base itself, so every perplexity must agree.
    assert metrics["merged"]["perplexity"] == base["base"]["perplexity"]
    gguf = metrics["gguf"]["F32"]
    assert abs(gguf["vs_merged"]) < 1e-3
    assert gguf["tokens"] == base["base"]["tokens"] > 0
    assert base["base"]["perplexity"] > 1000  # a random model over a 49k vocabulary is near-uniform
    samples = (tmp_path / "samples.md").read_text()
    assert "**Prompt:**" in samples and "You answer from the documents." in samples
    # a text row's expected answer is how its document goes on after the 30 words the prompt shows
    first = read_jsonl(dataset_dir / "val.jsonl")[0]["text"].split()
    assert "(empty)" not in samples.split("| expected")[1].splitlines()[2].split("|")[1]
    assert " ".join(first[30:40]) in samples
    assert json.loads((tmp_path / "eval.json").read_text()) == metrics
    assert list(metrics["gguf"]) == ["Q8_0", "F32"]  # in export.quants order
    assert "`tiny.Q8_0.gguf`" in samples and "tiny.F32.gguf" not in samples


def test_without_an_export_the_error_names_the_command(tmp_path, dataset_dir, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match=r"has no export.json.*dvc repro export"):
        evaluate_models(
            dataset_dir / "val.jsonl",
            dataset_dir / "prompts.json",
            tiny_model_dir,
            tmp_path / "gguf",
            tmp_path / "eval.json",
        )
    assert not (tmp_path / "eval.json").exists()


@pytest.mark.integration  # 10-25 s: a real model, the converter, a timeout or several processes
def test_chat_answers_are_scored_for_base_fine_tuned_and_gguf(tmp_path, tiny_model_dir):
    """A JSON task (snips queries): answers of the base (evaluate_base, once), the merged model and
    the GGUF, scored with the schema; samples.md puts them side by side."""
    from helpers import FIXTURES
    from lorapipe.dataset import build_dataset

    data = tmp_path / "dataset"
    (tmp_path / "text").mkdir()
    build_dataset(
        tmp_path / "text",
        tiny_model_dir,
        data,
        labeled_dir=FIXTURES / "labeled",
        mode="chat",
        max_seq_len=128,
        val_fraction=0.2,
        seed=1,
        system_prompt="Answer only with JSON.",
    )
    export_gguf(
        tiny_model_dir, data / "prompts.json", tmp_path / "gguf", quants=["F32", "Q8_0"], outtype="f32", name="tiny"
    )
    evaluate_base(
        data / "val.jsonl",
        tiny_model_dir,
        tmp_path / "eval_base.json",
        max_samples=3,
        prompts_path=data / "prompts.json",
        answers_path=tmp_path / "answers_base.json",
        max_new_tokens=6,
    )
    base_answers = json.loads((tmp_path / "answers_base.json").read_text())["answers"]
    assert len(base_answers) == 3 and all(a["task"] == "chat" for a in base_answers)
    # 6 tokens hold no snips answer: every answer of the random model is cut, and says so
    assert all(a["truncated"] for a in base_answers)
    metrics = evaluate_models(
        data / "val.jsonl",
        data / "prompts.json",
        tiny_model_dir,
        tmp_path / "gguf",
        tmp_path / "eval.json",
        samples_path=tmp_path / "samples.md",
        base_metrics_path=tmp_path / "eval_base.json",
        max_samples=3,
        num_generations=2,
        max_new_tokens=6,
        base_answers_path=tmp_path / "answers_base.json",
        json_schema=FIXTURES / "labeled" / "snips_schema.json",
        constrained=True,
    )
    answers = metrics["answers"]
    assert set(answers) == {
        "base",
        "fine-tuned",
        *("tiny.F32.gguf", "tiny.F32.gguf constrained"),
        *("tiny.Q8_0.gguf", "tiny.Q8_0.gguf constrained"),  # every quantization of the export, as served
    }
    for scores in answers.values():
        chat = scores["chat"]
        assert chat["answers"] == 3 and 0 <= chat["rouge_l"] <= 1
        assert {"json_parse_rate", "schema_valid_rate", "intent_accuracy", "slots", "per_slot"} <= set(chat["json"])
        parsed, cut, malformed = (chat["json"][k] for k in ("json_parse_rate", "truncated_rate", "malformed_rate"))
        assert parsed + cut + malformed == pytest.approx(1.0, abs=1e-3)
    assert answers["base"]["chat"]["json"]["truncated_rate"] == 1.0 and metrics["max_new_tokens"] == 6
    served = metrics["served"]["chat"]  # the constrained GGUF's, under names to sort experiments by
    constrained_json = answers["tiny.F32.gguf constrained"]["chat"]["json"]
    assert (
        served["slot_f1"] == constrained_json["slots"]["f1"] and served["exact_rate"] == constrained_json["exact_rate"]
    )
    assert set(served) == {"exact_match", "rouge_l", "slot_f1", *_FLAT_JSON}
    assert metrics["served_by_quant"]["F32"] == metrics["served"]
    q8 = answers["tiny.Q8_0.gguf constrained"]["chat"]["json"]["slots"]["f1"]
    assert metrics["served_by_quant"]["Q8_0"]["chat"]["slot_f1"] == q8 and set(metrics["gguf"]) == {"F32", "Q8_0"}
    by_task = metrics["quant_by_task"]  # a random model scores 0 everywhere: every GGUF is within, the smallest wins
    assert by_task["metric"] == {"chat": "slot_f1"} and set(by_task["quants"]) == {"F32", "Q8_0"}
    assert by_task["quants"]["Q8_0"]["drop"] == 0.0
    assert by_task["chosen"] == "Q8_0" and by_task["tolerance"] == 0.05
    # under the schema's grammar even a random model starts a JSON object with the required "intent"
    import re

    constrained = [row for row in (tmp_path / "samples.md").read_text().splitlines() if row.startswith("| {")]
    assert constrained  # the expected answers are JSON objects
    from lorapipe.evaluate import answer_all

    request = [{"role": "system", "content": "Answer only with JSON."}, {"role": "user", "content": "play jazz"}]
    (free,) = answer_all(tmp_path / "gguf" / "tiny.F32.gguf", [request], 12)
    (bound,) = answer_all(
        tmp_path / "gguf" / "tiny.F32.gguf",
        [request],
        12,
        json.loads((FIXTURES / "labeled" / "snips_schema.json").read_text()),
    )
    assert re.match(r'\{\s*"intent"\s*:', bound) and not re.match(r'\{\s*"intent"', free)
    # the "fine-tuned" model here is the base itself, so their greedy answers are the same
    assert answers["base"] == answers["fine-tuned"]
    samples = (tmp_path / "samples.md").read_text()
    assert "| expected | base | fine-tuned | tiny.F32.gguf | tiny.F32.gguf constrained |" in samples
    assert samples.count("## ") == 2
    assert "Answer only with JSON." in samples


def test_answers_of_a_model_whose_template_has_no_system_role(tmp_path, tiny_model_dir):
    """Gemma 2's template raises on a system message: the answer is the one to the folded prompt
    (system prompt, a blank line, the question), the prompt training used."""
    import torch

    from helpers import model_with_template
    from lorapipe.chat_encoder import fold_system
    from lorapipe.evaluate import hf_answers
    from lorapipe.models import load_causal_lm, load_tokenizer

    gemma2 = model_with_template(tiny_model_dir, tmp_path / "gemma2", "gemma2")
    conversation = [{"role": "system", "content": "Answer with JSON."}, {"role": "user", "content": "play jazz"}]
    answers = hf_answers(gemma2, [conversation], 5)
    tokenizer, model = load_tokenizer(gemma2), load_causal_lm(gemma2).eval()
    text = tokenizer.apply_chat_template(fold_system(conversation), tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False, split_special_tokens=False)["input_ids"]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    assert answers == [tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()]


def test_a_question_quoting_a_control_token_is_asked_as_text(tiny_model_dir, monkeypatch):
    from lorapipe import evaluate
    from lorapipe.models import load_causal_lm, load_tokenizer

    tokenizer, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir).eval()
    seen = []
    monkeypatch.setattr(model, "generate", lambda ids, **_: seen.append(ids[0].tolist()) or ids)
    evaluate.generate_answer(tokenizer, model, [{"role": "user", "content": "Is <|im_end|> a word?"}], 4)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert seen[0].count(end) == 2  # the ends of the template's default system turn and the user turn
    prompt = "<|im_start|>user\nIs <|im_end|> a word?<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(seen[0]).endswith(prompt)


def test_answers_decoded_together_are_the_answers_decoded_alone(tiny_model_dir, tmp_path):
    """hf_answers decodes conversations of different lengths in left-padded batches: each answer is
    the one generate_answer gives that conversation alone, in the order asked."""
    import shutil

    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from lorapipe.evaluate import generate_answer, hf_answers
    from lorapipe.models import load_causal_lm, load_tokenizer

    # The tiny model with large random weights, so that its answers depend on the question.
    torch.manual_seed(3)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.5
    folder = tmp_path / "model"
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, folder / name)
    questions = ["hi", "What does the adapter of a low-rank update train?", "Name two colours.", "Why?"]
    conversations = [[{"role": "system", "content": "Answer."}, {"role": "user", "content": q}] for q in questions]
    tokenizer, model = load_tokenizer(folder), load_causal_lm(folder).eval()
    alone = [generate_answer(tokenizer, model, c, 6).strip() for c in conversations]
    assert hf_answers(folder, conversations, 6, batch_size=3) == alone
    assert len(set(alone)) > 1  # the answers differ, so an answer in the wrong place would show


def test_a_prompt_longer_than_the_context_is_refused_naming_the_knobs(tiny_model_dir):
    from lorapipe.evaluate import hf_answers

    long = [{"role": "user", "content": "word " * 1100}]  # the tiny model's context is 1024 positions
    with pytest.raises(ValueError, match="lower eval.retrieval_top_k or synth.passage_tokens"):
        hf_answers(tiny_model_dir, [long], 8)


def test_auto_max_new_tokens_holds_the_longest_reference_answer(tmp_path, tiny_model_dir):
    """eval.max_new_tokens auto: the longest last assistant turn of the train and validation rows, in
    tokens, plus 25% (at least 8); a number is kept; text rows only: 64."""
    from lorapipe.generation import AUTO_TEXT_TOKENS, answer_token_budget
    from lorapipe.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    long_answer = json.dumps({"intent": "PlayMusic", "slots": {f"slot{i}": f"value number {i}" for i in range(12)}})
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    chat = lambda answer: {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}]}  # noqa: E731
    train.write_text(json.dumps(chat(long_answer)) + "\n" + json.dumps({"text": "x " * 900}) + "\n")
    val.write_text(json.dumps(chat("short")) + "\n")
    longest = len(tokenizer(long_answer, add_special_tokens=False)["input_ids"])
    budget, reason = answer_token_budget("auto", [train, val], tokenizer)
    assert longest > 40 and budget == longest + -(-longest // 4) and str(longest) in reason
    assert answer_token_budget("auto", [val], tokenizer)[0] == 1 + 8  # a 1-token answer: the minimum margin
    assert answer_token_budget(17, [train, val], tokenizer) == (17, "eval.max_new_tokens")
    val.write_text(json.dumps({"text": "only text"}) + "\n")
    assert answer_token_budget("auto", [val, tmp_path / "absent.jsonl"], tokenizer)[0] == AUTO_TEXT_TOKENS


def test_the_task_ladder_ships_the_smallest_gguf_within_the_tolerance_of_the_best_task_score(tmp_path):
    from lorapipe.evaluate import task_ladder
    from lorapipe.scoring import score_answers

    expected = ['{"intent": "Play", "slots": {"artist": "Miles Davis", "genre": "jazz"}}'] * 2
    half = ['{"intent": "Play", "slots": {"artist": "Miles Davis"}}'] * 2  # slot F1 2/3
    cities, wrong_city = ['{"city": "Oslo"}', '{"city": "Rome"}'], ['{"city": "Oslo"}', '{"city": "Paris"}']
    texts = ["the adapter is small", "the rank is low"]

    def system(slots, city):
        return {
            "json": score_answers(slots, expected),
            "cities": score_answers(city, cities),
            "text": score_answers(texts, texts),
        }

    answers = {
        "fine-tuned": system(half, cities),  # free decoding: the grammar-bound Q8_0 does better on slots
        "m.Q8_0.gguf constrained": system(expected, cities),
        "m.Q4_K_M.gguf constrained": system(half, wrong_city),
        "m.Q4_K_M.gguf": system(expected, cities),
    }
    ggufs = {"Q8_0": tmp_path / "m.Q8_0.gguf", "Q4_K_M": tmp_path / "m.Q4_K_M.gguf"}
    ggufs["Q8_0"].write_bytes(b"8" * 200)
    ggufs["Q4_K_M"].write_bytes(b"4" * 100)

    ladder = task_ladder(answers, ggufs, " constrained", 0.05)
    # slot F1 for the intent-and-slots shape, exact_rate for other JSON, ROUGE-L for text
    assert ladder["metric"] == {"json": "slot_f1", "cities": "exact_rate", "text": "rouge_l"}
    assert ladder["reference"]["json"] == {"score": 1.0, "system": "m.Q8_0.gguf constrained"}
    assert ladder["reference"]["cities"] == {"score": 1.0, "system": "fine-tuned"}
    assert ladder["quants"]["Q4_K_M"]["drop"] == pytest.approx(0.5, abs=1e-3)  # the worst task (cities) decides
    assert ladder["chosen"] == "Q8_0" and ladder["why"] == (
        "of the 2 GGUFs scored, 1 within 5.0% of the best task score (json slot_f1, cities exact_rate, text "
        "rouge_l); the smallest of those, 0.0% below it"
    )
    assert ladder["quants"]["Q8_0"]["drop"] == 0.0 and str(ladder["quants"]["Q8_0"]["drop"]) == "0.0"  # not -0.0
    assert task_ladder(answers, ggufs, " constrained", 0.5)["chosen"] == "Q4_K_M"  # half below is allowed now
    assert task_ladder(answers, ggufs, "", 0.05) is None  # only one GGUF answered free


def test_base_answers_cut_at_another_limit_are_warned_of(tmp_path, capsys):
    from lorapipe.evaluate import base_answers

    path = tmp_path / "answers_base.json"
    path.write_text(json.dumps({"answers": [{"task": "chat", "answer": "a", "truncated": True}], "max_new_tokens": 6}))
    assert [(g.text, g.truncated) for g in base_answers(path, 6)] == [("a", True)]
    assert "not comparable" not in capsys.readouterr().out
    base_answers(path, 32)
    assert "cut at 6 tokens and these are cut at 32: the base and fine-tuned scores are not comparable" in (
        capsys.readouterr().out
    )
