"""Merge stage: merged outputs equal the adapter model's and differ from the base; idempotent.

Run: .venv/bin/pytest tests/test_merge.py
"""

import torch

from helpers import MERGED_FILES

from lorapipe import merge_adapter
from lorapipe.models import load_causal_lm


def test_merged_equals_adapter_and_differs_from_base(tmp_path, tiny_model_dir, trained_adapter, capsys):
    from peft import PeftModel

    out = merge_adapter(tiny_model_dir, trained_adapter, tmp_path / "merged", dtype="float32")
    names = {p.name for p in out.iterdir()}
    assert names == MERGED_FILES
    ids = torch.tensor([[1, 17, 400, 9000, 23, 5]])
    with torch.no_grad():
        base = load_causal_lm(tiny_model_dir).eval()(ids).logits
        adapted = PeftModel.from_pretrained(load_causal_lm(tiny_model_dir), trained_adapter).eval()(ids).logits
        merged = load_causal_lm(out).eval()(ids).logits
    assert torch.allclose(merged, adapted, atol=1e-5)
    assert not torch.allclose(merged, base, atol=1e-3)

    merge_adapter(tiny_model_dir, trained_adapter, out, dtype="float32")
    assert "already merged" in capsys.readouterr().out


def test_merge_needs_inputs(tmp_path, tiny_model_dir):
    import pytest

    with pytest.raises(FileNotFoundError, match="run the train stage"):
        merge_adapter(tiny_model_dir, tmp_path / "missing", tmp_path / "merged")
