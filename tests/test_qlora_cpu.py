"""QLoRA end to end on the tiny model: train on bitsandbytes 4-bit layers, save, merge, export.

bitsandbytes' 4-bit layers train on the CPU (slowly), so `quant.load_in_4bit: true` is tested here
without a GPU; the same run on CUDA carries the `gpu` marker and is skipped without one. What the
merge guarantees for a QLoRA adapter: the merged model is the full-precision base plus the adapter,
as for LoRA (the adapter is merged into the base's own weights, not into their 4-bit rounding); it is
not exactly the 4-bit model the adapter was trained with, but differs from it by the base's rounding
only, and keeps what training gained.

Run: .venv/bin/pytest tests/test_qlora_cpu.py   (about 40 s on 2 CPU threads, half of it the GGUF export)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from helpers import ADAPTER_FILES, read_json, small_text_dataset

STEPS = 5
LAYERS = 2 * 7  # the tiny Llama's 2 blocks × q, k, v, o, gate, up, down projections
PROMPT = "You answer from the lorapipe documents only."


def skip_with_cuda() -> None:
    """The CPU runs need a host without CUDA: train_lora trains where CUDA is (test_4bit_training_on_cuda)."""
    from lorapipe.hardware import cuda_available

    if cuda_available():
        pytest.skip("trains on the CPU, and this host has CUDA: test_4bit_training_on_cuda runs there")


@dataclass
class FourBitRecord:
    """What the model in training showed: its 4-bit layers and every forward pass through them."""

    model: object = None
    layers: list = field(default_factory=list)  # the bitsandbytes Linear4bit layers
    passes: list = field(default_factory=list)  # (layer index, training mode, grad enabled, repacked weights)


def record_4bit_layers(monkeypatch) -> FourBitRecord:
    """Watch the model train_lora trains: wrap its model loading (lorapipe.train._load_model) and hook
    each bitsandbytes 4-bit layer, recording every forward pass through it (after the pass, so a pass
    that repacked its weights for CPU inference shows as repacked)."""
    import bitsandbytes as bnb
    import torch

    import lorapipe.train

    record = FourBitRecord()
    load = lorapipe.train._load_model

    def watched(*args, **kwargs):
        model, seq2seq, targets = load(*args, **kwargs)
        record.model = model
        record.layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        for index, layer in enumerate(record.layers):

            def seen(module, inputs, output, index=index):
                state = module.weight.quant_state
                repacked = bool(getattr(state, "packing_format_for_cpu", False))
                record.passes.append((index, module.training, torch.is_grad_enabled(), repacked))

            layer.register_forward_hook(seen)
        return model, seq2seq, targets

    monkeypatch.setattr(lorapipe.train, "_load_model", watched)
    return record


def train_4bit(work: Path, tiny_model_dir: Path, **train):
    """train_lora with quant.load_in_4bit true, seeded: every step trains on all 5 rows (batch 8), no
    dropout, so that the loss of each step is comparable with the first's; an evaluation every 2
    steps, as pipelines evaluate mid-training (the 4-bit layers must not be repacked for inference)."""
    from lorapipe.params import LoraParams, QuantParams, TrainParams
    from lorapipe.train import train_lora

    settings = dict(max_steps=STEPS, lr=2e-2, batch_size=8, log_every=1, eval_steps=2, warmup_steps=0)
    settings.update(save_steps=0, torch_compile=False)  # no checkpoints; compiling would outlast the steps
    return train_lora(
        small_text_dataset(work, tiny_model_dir),
        tiny_model_dir,
        work / "adapter",
        lora=LoraParams(rank=8, alpha=16, dropout=0.0),
        train=TrainParams(**{**settings, **train}),
        quant=QuantParams(load_in_4bit=True, quant_type="nf4", double_quant=True),
        seed=0,
        checkpoint_dir=work / "checkpoints",
        metrics_path=work / "train.json",
        run_info={"run_id": None},
    )


@pytest.fixture(scope="module")
def qlora(tmp_path_factory, tiny_model_dir):
    """One QLoRA run on the CPU, watched: (its TrainResult, FourBitRecord, the work folder).

    The 4-bit layers are built believing the CPU has avx512_bf16, whatever it has: on such a CPU
    bitsandbytes repacks a layer's weights at its first inference pass into a layout without a backward
    (lorapipe.train.keep_4bit_weights_trainable), so the run's evaluations test that trap on any CPU."""
    import bitsandbytes.nn.modules

    skip_with_cuda()
    work = tmp_path_factory.mktemp("qlora")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)
        record = record_4bit_layers(monkeypatch)
        result = train_4bit(work, tiny_model_dir, precision="fp32")
    return result, record, work


def check_trained_on_4bit_layers(result, record: FourBitRecord, work: Path) -> None:
    """The run says 4-bit, and it was: every adapted projection is a bitsandbytes nf4 layer under the
    adapter, only the adapter trains, every 4-bit layer ran in training, the first pass through them
    was a training pass, and none ever ran on weights repacked for CPU inference (the trap of DESIGN.md)."""
    from peft.tuners.lora import LoraLayer

    assert result.resolved.load_in_4bit is True
    resolved = yaml.safe_load((work / "adapter" / "lorapipe_params.yaml").read_text())["resolved"]
    assert resolved["load_in_4bit"] is True and read_json(work / "train.json")["load_in_4bit"] is True

    adapted = [m for m in record.model.modules() if isinstance(m, LoraLayer)]
    assert len(record.layers) == len(adapted) == LAYERS
    assert [m.get_base_layer() for m in adapted] == record.layers
    assert {layer.weight.quant_state.quant_type for layer in record.layers} == {"nf4"}
    trainable = {name for name, p in record.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert result.metrics.trainable_parameters == sum(p.numel() for p in record.model.parameters() if p.requires_grad)

    # bitsandbytes repacks for inference in eval mode only; the first pass may lack gradients under
    # reentrant gradient checkpointing, whose backward runs each block again with them
    assert record.passes[0][1], "a 4-bit layer ran inference before training"
    assert {index for index, training, grad, _ in record.passes if training and grad} == set(range(LAYERS))
    assert any(not training for _, training, _, _ in record.passes)  # the evaluations ran on these layers too
    assert not any(repacked for *_, repacked in record.passes), "4-bit weights were repacked for CPU inference"


def check_loss_falls(result) -> None:
    steps, losses = zip(*result.history)
    assert steps == tuple(range(1, STEPS + 1))
    assert losses[-1] < losses[0] - 0.1, losses  # nats per token; 10.79 → 10.41 measured on the CPU
    assert [s for s, _ in result.eval_history] == [2, 4, STEPS]


def check_adapter_folder(work: Path) -> None:
    from safetensors import safe_open

    adapter = work / "adapter"
    assert {p.name for p in adapter.iterdir()} == ADAPTER_FILES
    config = read_json(adapter / "adapter_config.json")
    assert config["r"] == 8 and config["peft_type"] == "LORA"
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as saved:
        names = list(saved.keys())
        assert len(names) == 2 * LAYERS and all(".lora_A." in n or ".lora_B." in n for n in names)
        # nothing of the 4-bit base (packed weights, quantization constants) leaks into the adapter
        assert not any("absmax" in n or "quant" in n for n in names)
        assert any(saved.get_tensor(n).abs().max() > 0 for n in names if ".lora_B." in n)  # B starts at zero


def test_4bit_training_on_the_cpu(qlora):
    result, record, work = qlora
    assert result.resolved.device == "cpu" and result.resolved.gradient_checkpointing is False
    check_trained_on_4bit_layers(result, record, work)
    assert {layer.support_avx512bf16_for_cpu for layer in record.layers} == {False}  # repacking switched off
    check_loss_falls(result)
    check_adapter_folder(work)


def merged_logits(tiny_model_dir: Path, adapter: Path, merged: Path, ids: list[int]) -> dict:
    """Logits on `ids` and the mean NLL of the next tokens of: the base, the base loaded 4-bit (nf4 as in
    training), each with the adapter, and the merged model; on the CPU."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lorapipe.models import load_causal_lm
    from lorapipe.train import quantization_config

    def four_bit():
        config = quantization_config(True, "nf4", True, "fp32")
        return AutoModelForCausalLM.from_pretrained(
            tiny_model_dir, dtype=torch.float32, quantization_config=config, device_map={"": "cpu"}
        )

    models = {
        "base": lambda: load_causal_lm(tiny_model_dir),
        "base+adapter": lambda: PeftModel.from_pretrained(load_causal_lm(tiny_model_dir), adapter),
        "4bit": four_bit,
        "4bit+adapter": lambda: PeftModel.from_pretrained(four_bit(), adapter),
        "merged": lambda: load_causal_lm(merged),
    }
    batch = torch.tensor([ids])
    out = {}
    with torch.no_grad():
        for name, build in models.items():
            run = build().eval()(batch, labels=batch)  # after training: inference may repack the 4-bit weights
            out[name] = (run.logits[0], float(run.loss))
    return out


def test_qlora_adapter_merges_and_exports(qlora, tiny_model_dir):
    """Merge: base + adapter in full precision, within float rounding; against the 4-bit model the
    adapter was trained with, within the base's 4-bit rounding, keeping the loss it gained. Export:
    the merged weights go into the GGUF, which llama.cpp loads."""
    import numpy as np
    from gguf import GGUFReader
    from llama_cpp import Llama

    from lorapipe import export_gguf, merge_adapter
    from lorapipe.io import read_jsonl
    from lorapipe.models import load_causal_lm, load_tokenizer

    _, _, work = qlora
    merged = merge_adapter(tiny_model_dir, work / "adapter", work / "merged", dtype="float32")
    assert read_json(merged / "merge.json")["dtype"] == "float32"
    text = read_jsonl(work / "dataset" / "train.jsonl")[0]["text"]
    ids = load_tokenizer(tiny_model_dir)(text)["input_ids"][:48]
    runs = merged_logits(tiny_model_dir, work / "adapter", merged, ids)
    logits = {name: run[0] for name, run in runs.items()}
    loss = {name: run[1] for name, run in runs.items()}

    def gap(a: str, b: str) -> float:
        return float((logits[a] - logits[b]).abs().max())

    assert gap("merged", "base+adapter") < 1e-5  # the merge is exact, as for LoRA
    assert gap("merged", "base") > 0.3  # the adapter changes the model (1.2 measured)
    rounding = gap("base", "4bit")  # what nf4 does to the base (0.11 measured)
    assert 1e-3 < rounding < gap("merged", "base")
    assert gap("merged", "4bit+adapter") < 2 * rounding  # 0.09 measured
    gained = loss["4bit"] - loss["4bit+adapter"]  # what training gained on the model it trained
    assert gained > 0.1 and loss["base"] - loss["merged"] > 0.9 * gained  # 0.52 and 0.52 nats measured

    (work / "prompts.json").write_text(json.dumps({"text": PROMPT}))
    info = export_gguf(merged, work / "prompts.json", work / "gguf", quants=["F32"], outtype="f32", name="tiny")
    gguf = work / "gguf" / "tiny.F32.gguf"
    assert sorted(p.name for p in gguf.parent.iterdir()) == ["Modelfile", "export.json", "tiny.F32.gguf"]
    assert info["verification"]["top1_agreement"] == 1.0 and info["verification"]["max_abs_diff"] < 1e-3

    tensors = {t.name: t for t in GGUFReader(str(gguf)).tensors}
    per_block = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")
    expected = {f"blk.{b}.{t}.weight" for b in range(2) for t in per_block}
    assert set(tensors) == expected | {"token_embd.weight", "output_norm.weight"}  # tied: no output.weight
    # v_proj goes into the GGUF as it is (q and k are permuted for llama.cpp's rotary layout)
    v_merged = load_causal_lm(merged).model.layers[0].self_attn.v_proj.weight.detach().numpy()
    v_base = load_causal_lm(tiny_model_dir).model.layers[0].self_attn.v_proj.weight.detach().numpy()
    v_gguf = np.asarray(tensors["blk.0.attn_v.weight"].data).reshape(v_merged.shape)
    assert np.allclose(v_gguf, v_merged, atol=1e-6) and not np.allclose(v_gguf, v_base, atol=1e-4)
    llm = Llama(str(gguf), n_ctx=64, verbose=False)
    assert llm.n_vocab() == 49152
    llm.close()


@pytest.mark.gpu
def test_4bit_training_on_cuda(tmp_path, tiny_model_dir, monkeypatch):
    """QLoRA as the pipeline runs it on a GPU: nf4 with bf16 compute where supported, gradient
    checkpointing, paged 8-bit AdamW; the adapter merges (on the CPU) as on the CPU run."""
    import torch

    from lorapipe import merge_adapter
    from lorapipe.models import load_causal_lm

    record = record_4bit_layers(monkeypatch)
    result = train_4bit(tmp_path, tiny_model_dir, precision="auto")
    assert result.resolved.device == "cuda" and result.resolved.gradient_checkpointing is True
    assert result.resolved.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert {layer.weight.device.type for layer in record.layers} == {"cuda"}
    check_trained_on_4bit_layers(result, record, tmp_path)
    check_loss_falls(result)
    check_adapter_folder(tmp_path)
    merged = merge_adapter(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged", dtype="float32")
    ids = torch.tensor([[1, 17, 400, 9000, 23, 5]])
    with torch.no_grad():
        base = load_causal_lm(tiny_model_dir).eval()(ids).logits
        after = load_causal_lm(merged).eval()(ids).logits
    assert not torch.allclose(after, base, atol=1e-3)
