"""llama.cpp's logits for token sequences (the GGUF side of export's check and of perplexity). The
agreement with transformers on a real GGUF is tests/test_export.py's; here, the bookkeeping.

Run: .venv/bin/pytest tests/test_llama.py
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from lorapipe.llama import gguf_logits


class FakeLlama:
    """Stands in for llama_cpp.Llama: scores are the token ids spread over a 5-word vocabulary."""

    made: list[FakeLlama] = []  # noqa: RUF012 (the instances a test made, reset per test)
    fail_on: int | None = None  # a token id whose evaluation fails

    def __init__(self, path, n_ctx, **kwargs):
        self.n_ctx, self.closed, self.scores = n_ctx, False, []
        FakeLlama.made.append(self)

    def reset(self):
        self.scores = []

    def eval(self, ids):
        if self.fail_on is not None and self.fail_on in ids:
            raise RuntimeError("llama_decode failed")
        self.scores = [np.eye(5, dtype=np.float64)[i % 5] for i in ids] + [np.zeros(5)] * 3

    def close(self):
        self.closed = True


@pytest.fixture
def fake_llama(monkeypatch):
    FakeLlama.made = []
    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=FakeLlama))
    return FakeLlama


def test_one_array_per_sequence_of_its_length(fake_llama):
    out = gguf_logits("m.gguf", [[1, 2, 3], [4]])
    assert [a.shape for a in out] == [(3, 5), (1, 5)] and all(a.dtype == np.float32 for a in out)
    assert int(out[0][2].argmax()) == 3
    (model,) = fake_llama.made
    assert model.n_ctx == 3 + 8 and model.closed  # one model, a context fitting the longest


def test_the_model_is_closed_when_evaluation_fails(fake_llama, monkeypatch):
    monkeypatch.setattr(FakeLlama, "fail_on", 2)
    with pytest.raises(RuntimeError, match="llama_decode"):
        gguf_logits("m.gguf", [[1, 2]])
    assert fake_llama.made[0].closed
