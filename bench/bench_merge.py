"""Peak memory of the merge against the size of the weights, on a random model of about 1.1 B
parameters (TinyLlama's shape) saved in float16, with a rank-16 adapter on every projection.

Run: .venv/bin/python bench/bench_merge.py   (about 3 minutes; needs ~10 GB of free disk in /tmp)

The merge runs in a fresh process that reports its peak resident memory (VmHWM) and its resident
memory after importing the libraries, before loading anything (the runtime baseline).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

MERGE = """
import json, re, sys, time
from pathlib import Path
def rss(field):
    return int(re.search(field + r":\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) / 2**20
import torch, transformers, peft, safetensors
from lorapipe import merge_adapter
baseline = rss("VmRSS")
started = time.perf_counter()
merge_adapter(sys.argv[1], sys.argv[2], sys.argv[3], dtype=sys.argv[4])
print(json.dumps({"peak": rss("VmHWM"), "baseline": baseline, "seconds": time.perf_counter() - started}))
"""


def build(folder: Path) -> tuple[Path, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lorapipe.models import bundled_gguf

    gguf = bundled_gguf("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.float16)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    base = folder / "base"
    model.save_pretrained(base, max_shard_size="2GB")
    tokenizer.save_pretrained(base)
    adapter = get_peft_model(
        model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    )
    adapter.save_pretrained(folder / "adapter")
    tokenizer.save_pretrained(folder / "adapter")
    return base, folder / "adapter"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base, adapter = build(Path(tmp))
        weights = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 2**30
        parameters = weights * 2**30 / 2
        print(
            f"- random Llama, {parameters / 1e9:.2f} B parameters, float16 weights {weights:.2f} GB "
            f"(sharded at 2 GB), LoRA r16 on every projection"
        )
        print(
            "| merge.dtype | peak GB | runtime baseline GB | peak − baseline | (peak − baseline) / weights | "
            "seconds |\n|---|---|---|---|---|---|"
        )
        for dtype in ("float16", "bfloat16"):
            run = subprocess.run(
                [sys.executable, "-c", MERGE, str(base), str(adapter), str(Path(tmp) / dtype), dtype],
                capture_output=True,
                text=True,
            )
            if run.returncode != 0:
                print(f"| {dtype} | failed: {run.stderr.strip().splitlines()[-1]} | | | | |")
                continue
            m = json.loads(run.stdout.strip().splitlines()[-1])
            size = weights  # both are 2 bytes per weight
            print(
                f"| {dtype} | {m['peak']:.2f} | {m['baseline']:.2f} | {m['peak'] - m['baseline']:.2f} | "
                f"{(m['peak'] - m['baseline']) / size:.2f} | {m['seconds']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
