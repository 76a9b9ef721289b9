"""Validation perplexity of a transformers model and of a GGUF under llama.cpp, on the same token ids
(the base tokenizer's), so the numbers compare; and the choice of a quantization from them.
Used by the evaluate stages (every GGUF of the export) and by the export (``export.quants: auto``).

    from lorapipe.perplexities import gguf_perplexity, hf_perplexity, val_sequences
    sequences = val_sequences("data/dataset/val.jsonl", tokenizer, 32)
    hf_perplexity("models/merged", sequences)["perplexity"]
"""

from __future__ import annotations

from pathlib import Path

from lorapipe.io import read_jsonl
from lorapipe.likelihood import perplexity, sequence_nll
from lorapipe.llama import gguf_logits
from lorapipe.models import load_causal_lm
from lorapipe.rows import IGNORE, tokenize_row

Sequences = list[tuple[list[int], list[int]]]


def val_sequences(val_path: str | Path, tokenizer, max_samples: int) -> Sequences:
    """(ids, labels) of the first `max_samples` rows of `val_path` (JSONL): text rows score every token,
    chat rows the assistant's answers only. Raises ValueError when the file has no rows."""
    rows = read_jsonl(val_path)[:max_samples]
    if not rows:
        raise ValueError(f"{val_path} has no rows to evaluate")
    return [tokenize_row(row, tokenizer) for row in rows]


def summary(nll: float, count: int) -> dict[str, float]:
    """``{"loss": nats per token, "perplexity": exp(loss), "tokens": count}`` of a summed NLL."""
    loss = nll / max(count, 1)
    return {"loss": round(loss, 6), "perplexity": round(perplexity(loss), 4), "tokens": count}


def hf_perplexity(model_dir: str | Path, sequences: Sequences) -> dict[str, float]:
    """summary() of the transformers model in `model_dir` on `sequences` (likelihood.sequence_nll)."""
    return summary(*sequence_nll(load_causal_lm(model_dir).eval(), sequences))


def gguf_perplexity(gguf_path: str | Path, sequences: Sequences) -> dict[str, float]:
    """summary() of the GGUF under llama.cpp on `sequences`: its logits for every position
    (llama.gguf_logits), log-softmax in float64, the NLL of the tokens whose label is not IGNORE."""
    import numpy as np

    nll, count = 0.0, 0
    for (_, labels), logits in zip(sequences, gguf_logits(gguf_path, [ids for ids, _ in sequences])):
        shifted = logits[:-1].astype(np.float64)
        shifted -= shifted.max(-1, keepdims=True)
        logprobs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        targets = np.array(labels[1:])
        scored = np.nonzero(targets != IGNORE)[0]
        nll -= float(logprobs[scored, targets[scored]].sum())
        count += len(scored)
    return summary(nll, count)


def relative(value: float, reference: float) -> float:
    """(value − reference) / reference, rounded to 6 places; 0 for a zero reference."""
    return round((value - reference) / reference, 6) if reference else 0.0


def choose_quant(ladder: dict[str, dict], tolerance: float) -> tuple[str, str]:
    """The quantization to ship from `ladder` ({quant: {"vs_merged": how much worse than the merged
    model, as a share, "bytes": file size}}): the smallest file at most `tolerance` (a share: 0.05 =
    5%) worse than the merged model; when none is, the least worse. The export's ladder passes the
    relative perplexity increase; evaluate's quant_by_task a task score's shortfall (and words its own
    reason). Returns (quant, why) — why is one line, about perplexity, for the log and export.json.
    Raises ValueError for an empty ladder or one whose values are all NaN."""
    ladder = {q: m for q, m in ladder.items() if m["vs_merged"] == m["vs_merged"]}  # NaN: not measured
    if not ladder:
        raise ValueError("no quantization with a measured perplexity to choose from")
    within = [q for q, m in ladder.items() if m["vs_merged"] <= tolerance]
    if within:
        chosen = min(within, key=lambda q: ladder[q]["bytes"])
        return chosen, (
            f"the smallest of {len(within)} within {tolerance:.1%} of the merged model's perplexity "
            f"({ladder[chosen]['vs_merged']:+.1%})"
        )
    chosen = min(ladder, key=lambda q: ladder[q]["vs_merged"])
    return chosen, (
        f"none is within {tolerance:.1%} of the merged model's perplexity; the closest "
        f"({ladder[chosen]['vs_merged']:+.1%})"
    )
