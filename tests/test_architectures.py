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

    common = {"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
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
        return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64)), \
            {"c_attn", "c_proj", "c_fc"}
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
