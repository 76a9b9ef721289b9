"""The GPU story on paper: Mistral-7B QLoRA at sequence length 512 and 1024 on an 8 GB and a 24 GB
card, as `lorapipe plan` estimates it, beside published figures for Unsloth and for a plain
transformers + peft setup.

Run: .venv/bin/python bench/bench_gpu_plan.py   (seconds; no GPU needed)

Memory is lorapipe.plan.estimate_memory_gib (GiB) for what the train stage runs on CUDA (nf4 with double
quantization, LoRA r16 on every projection, gradient checkpointing, paged 8-bit AdamW), at the
largest batch of 1, 2, 4 or 8 that fits. Tokens per second is lorapipe.plan.estimate_tokens_per_second
(`lorapipe plan --peak-tflops`): the GPU efficiency × the card's peak bfloat16 tensor FLOP/s ÷ the model
FLOPs per token; lorapipe.plan.training_efficiency on CUDA was measured on an H200 for a 1B and an 8B
shape (bench/gpu_check.py) as a share of what an 8192² product reaches, about 80% of the datasheet
peak there (lorapipe.plan.DATASHEET_REACHED), so the datasheet peaks below are scaled by it.
"""

from __future__ import annotations

from lorapipe.plan import (
    DATASHEET_REACHED,
    estimate_memory_gib,
    estimate_tokens_per_second,
    load_facts,
    training_efficiency,
    training_flops_per_token,
    training_settings,
)

MODEL = "mistralai/Mistral-7B-v0.1"
# card: (memory GiB, dense bf16 tensor TFLOP/s with float32 accumulation, where that figure comes from)
CARDS = {
    "RTX 4060, 8 GB": (
        8.0,
        30.2,
        "24 SMs × 2.46 GHz boost × 512 bf16 FMA per SM and clock at half rate for "
        "float32 accumulation, the per-SM rate of NVIDIA's Ada whitepaper "
        "(https://images.nvidia.com/aem-dam/Solutions/geforce/ada/"
        "nvidia-ada-gpu-architecture.pdf); derived, not a published figure",
    ),
    "RTX 4090, 24 GB": (
        24.0,
        165.2,
        "NVIDIA Ada whitepaper, RTX 4090 peak BF16 tensor TFLOPS with FP32 "
        "accumulate, dense (https://images.nvidia.com/aem-dam/Solutions/geforce/ada/"
        "nvidia-ada-gpu-architecture.pdf)",
    ),
}
PUBLISHED = [
    (
        "Hugging Face + Unsloth blog, Mistral 7b QLoRA r16 on every projection, gradient checkpointing, "
        "1× A100 40GB, Slim Orca",
        "transformers + peft 1×; + Flash Attention 2 1.17×; Unsloth 1.88×, −65.9% VRAM",
        "https://huggingface.co/blog/unsloth-trl",
    ),
    (
        "the same, free Colab T4, Alpaca",
        "transformers + peft 1×; PyTorch 2.1.1 1.07×; Unsloth 1.56×, −13.7% VRAM",
        "https://huggingface.co/blog/unsloth-trl",
    ),
    (
        "Unsloth benchmarks, Llama 3.1 8B QLoRA r32, batch 1, longest context that fits",
        "8 GB: Unsloth 2,972 tokens, transformers + Flash Attention 2 out of memory; "
        "24 GB: Unsloth 78,475, transformers + FA2 5,789",
        "https://docs.unsloth.ai/basics/unsloth-benchmarks",
    ),
]


def main() -> None:
    facts = load_facts(MODEL)
    print(
        f"{facts.name}, {facts.parameters / 1e9:.2f} B parameters; GPU efficiency (measured on an H200) "
        f"{training_efficiency('cuda', facts.hidden_size):.0%} of what a large product reaches, "
        f"{DATASHEET_REACHED:.0%} of the card's datasheet peak\n"
    )
    print(
        "| card | seq len | batch | estimated peak GiB | fits | model GFLOP per token | expected tokens/s "
        "(lorapipe: transformers + peft + bitsandbytes) | Unsloth, by the published ratio (1.56–1.88×) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for card, (memory, tflops, _) in CARDS.items():
        for seq in (512, 1024):
            settings = training_settings(seq, 16, "auto", True, "bf16", "cuda")
            fitting = [
                b for b in (1, 2, 4, 8) if estimate_memory_gib(facts, batch_size=b, **settings)["total"] <= memory
            ]
            batch = max(fitting) if fitting else 1
            estimate = estimate_memory_gib(facts, batch_size=batch, **settings)
            per_token = training_flops_per_token(facts, seq, estimate["lora_parameters"], True)
            speed = estimate_tokens_per_second(per_token, "cuda", tflops * 1e12 * DATASHEET_REACHED, facts.hidden_size)
            print(
                f"| {card} | {seq} | {batch} | {estimate['total']:.1f} | {'yes' if fitting else 'no'} | "
                f"{per_token / 1e9:.1f} | {speed:,.0f} | {speed * 1.56:,.0f}–{speed * 1.88:,.0f} |"
            )
    print("\nPeak FLOP/s assumed per card:\n")
    for card, (_, tflops, source) in CARDS.items():
        print(f"- {card}: {tflops} TFLOP/s — {source}")
    print("\nPublished figures (relative: none of these sources gives absolute tokens per second for Mistral-7B):\n")
    print("| setup | result | source |\n|---|---|---|")
    for setup, result, source in PUBLISHED:
        print(f"| {setup} | {result} | {source} |")


if __name__ == "__main__":
    main()
