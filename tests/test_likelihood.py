"""Likelihood under a model: summed NLL of the loss-carrying tokens in padded batches, perplexity.

Run: .venv/bin/pytest tests/test_likelihood.py
"""

from __future__ import annotations

import math

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from lorapipe.likelihood import PERPLEXITY_CAP, perplexity


def test_perplexity_is_exp_of_the_loss_capped():
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert perplexity(1e6) == math.exp(PERPLEXITY_CAP)


def test_sequence_nll_in_padded_batches_equals_one_sequence_at_a_time():
    import torch

    from lorapipe.likelihood import sequence_nll

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).eval()
    sequences = []
    for n in (5, 9, 17, 3, 12, 2):
        ids = torch.randint(0, 100, (n,)).tolist()
        sequences.append((ids, [-100] * (n // 2) + ids[n // 2 :]))
    sequences.append(([1, 2, 3], [-100, -100, -100]))  # no token carries loss
    reference, tokens = 0.0, 0
    for ids, labels in sequences:
        scored = sum(x != -100 for x in labels[1:])
        if scored:
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
            reference, tokens = reference + loss * scored, tokens + scored
    nll, count = sequence_nll(model, sequences, batch_size=4)
    assert count == tokens and nll == pytest.approx(reference, rel=1e-5)
