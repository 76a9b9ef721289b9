"""LoRA on each supported decoder architecture: target modules chosen per architecture, and one
training step on a tiny random model of each.

Run: .venv/bin/pytest tests/test_architectures.py
"""

import pytest
import torch

from lorapipe.train import default_target_modules

LLAMA_LIKE = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _tiny(kind):
    import transformers as t

    common = {
        "vocab_size": 128,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
    }
    if kind == "llama":
        return t.LlamaForCausalLM(t.LlamaConfig(**common)), LLAMA_LIKE
    if kind == "mistral":
        return t.MistralForCausalLM(t.MistralConfig(**common)), LLAMA_LIKE
    if kind == "qwen2":
        return t.Qwen2ForCausalLM(t.Qwen2Config(**common)), LLAMA_LIKE
    if kind == "gemma":
        return t.GemmaForCausalLM(t.GemmaConfig(**common, head_dim=8)), LLAMA_LIKE
    if kind == "gemma3":
        return t.Gemma3ForCausalLM(t.Gemma3TextConfig(**common, head_dim=8, sliding_window=16)), LLAMA_LIKE
    if kind == "gpt2":  # GPT-2 style, as DialoGPT
        return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64)), {
            "c_attn",
            "c_proj",
            "c_fc",
        }
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "gemma", "gemma3", "gpt2"])
def test_targets_and_one_training_step(kind):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model, expected = _tiny(kind)
    targets = default_target_modules(model)
    assert set(targets) == expected
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    ids = torch.randint(0, 128, (2, 16))
    before = [p.detach().clone() for p in trainable]
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.optim.AdamW(trainable, lr=1e-2).step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainable))


def test_t5_targets():
    import transformers as t

    model = t.T5ForConditionalGeneration(
        t.T5Config(
            vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu"
        )
    )
    assert set(default_target_modules(model)) == {"q", "k", "v", "o", "wi_0", "wi_1", "wo"}


def test_flan_t5_style_model_trains_through_the_seq2seq_path(tmp_path, bundled_tokenizer_dir):
    """A tiny FLAN-T5-shaped model (gated GELU) learns from chat and text rows, saves and merges."""
    import transformers as t
    from safetensors.torch import load_file

    from lorapipe import merge_adapter
    from lorapipe.io import write_json, write_jsonl
    from lorapipe.params import LoraParams, TrainParams
    from lorapipe.train import train_lora

    tokenizer = t.AutoTokenizer.from_pretrained(bundled_tokenizer_dir)
    config = t.T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    base = tmp_path / "t5"
    t.T5ForConditionalGeneration(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    rows = [
        {
            "messages": [
                {"role": "system", "content": "Answer in JSON."},
                {"role": "user", "content": f"play song number {i}"},
                {"role": "assistant", "content": f'{{"intent": "PlayMusic", "n": {i}}}'},
            ],
            "task": "chat",
        }
        for i in range(6)
    ]
    rows.append({"text": "Low-rank adapters train two thin matrices beside each frozen weight.", "task": "text"})
    data = tmp_path / "dataset"
    data.mkdir()
    write_jsonl(data / "train.jsonl", rows)
    write_jsonl(data / "val.jsonl", rows[:2])
    write_json(data / "stats.json", {"max_seq_len": 64})

    result = train_lora(
        data,
        base,
        tmp_path / "adapter",
        lora=LoraParams(rank=4, alpha=8),
        train=TrainParams(
            max_steps=6,
            lr=3e-2,
            batch_size=4,
            log_every=2,
            precision="fp32",
            save_steps=0,
            eval_steps=0,
            warmup_steps=0,
        ),
    )
    assert result.resolved.seq2seq and result.metrics.steps == 6 and result.metrics.val_loss > 0
    assert set(result.resolved.target_modules) == {"q", "k", "v", "o", "wi_0", "wi_1", "wo"}
    losses = [loss for _, loss in result.history]
    assert losses[-1] < losses[0]
    merged = merge_adapter(base, tmp_path / "adapter", tmp_path / "merged")
    weights = load_file(merged / "model.safetensors")
    assert not any("lora" in name for name in weights)
    assert t.AutoConfig.from_pretrained(merged).is_encoder_decoder
