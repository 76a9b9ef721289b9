"""Likelihood of text under a model: the summed negative log-likelihood of the tokens that carry
loss, and perplexity. Used by training (validation loss) and both evaluate stages, and by nothing
that scores answers, so an edit to answer scoring (lorapipe.scoring) reruns no training.

    from lorapipe.likelihood import perplexity, sequence_nll
    nll, tokens = sequence_nll(model, [(ids, labels)])   # nats, count
    perplexity(nll / tokens)
"""

from __future__ import annotations

import math

PERPLEXITY_CAP = 50.0  # nats: exp(50) ≈ 5.2e21 stands for "diverged" instead of an overflow to inf


def perplexity(loss: float) -> float:
    """exp(`loss`), the perplexity of a mean negative log-likelihood per token in nats, with the loss
    capped at PERPLEXITY_CAP so that a diverged run reports a large finite number."""
    return math.exp(min(loss, PERPLEXITY_CAP))


def sequence_nll(
    model, sequences: list[tuple[list[int], list[int]]], device: str = "cpu", batch_size: int = 8
) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of the next tokens that carry loss (labels ≠ -100), and
    their count, under `model` (a causal LM: ids [batch, length] in, logits out) on `device`.
    Sequences of similar length are scored together, right-padded (padding is masked and carries no
    loss, so the sums equal scoring each sequence alone)."""
    import torch

    nll, count = 0.0, 0
    order = sorted(
        (i for i, (_, labels) in enumerate(sequences) if any(x != -100 for x in labels[1:])),
        key=lambda i: len(sequences[i][0]),
    )
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = [sequences[i] for i in order[start : start + batch_size]]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (seq, seq_labels) in enumerate(chunk):
                ids[row, : len(seq)] = torch.tensor(seq)
                labels[row, : len(seq)] = torch.tensor(seq_labels)
                mask[row, : len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
            targets = labels[:, 1:].to(device)
            scored = targets != -100
            logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            nll -= float(logprobs[scored].sum())
            count += int(scored.sum())
    return nll, count
