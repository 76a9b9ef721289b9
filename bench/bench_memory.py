"""Peak memory of training against `lorapipe plan`'s estimate: the bundled SmolLM2-135M and the
tests' tiny Llama (2 layers, 64 wide, the bundled tokenizer).

Run: .venv/bin/python bench/bench_memory.py   (from the project root; about 6 minutes on 2 cores)

Each configuration trains 2 steps (LoRA r16 on every projection) in a fresh process that reports its
own peak resident memory (VmHWM); the estimate comes from the model's config alone.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = [
    ("bundled", 4, 512, "bf16"),
    ("bundled", 4, 512, "fp32"),
    ("bundled", 1, 512, "fp32"),
    ("bundled", 4, 256, "fp32"),
    ("tiny", 4, 64, "fp32"),
]

TRAIN = """
import json, re, sys
from pathlib import Path
from lorapipe.params import LoraParams, TrainParams
from lorapipe.train import train_lora
data, base, out, batch, precision = sys.argv[1:6]
train_lora(data, base, out, lora=LoraParams(rank=16),
           train=TrainParams(max_steps=2, batch_size=int(batch), precision=precision, log_every=1, resume="never",
                             save_steps=0, eval_steps=0))
print(json.dumps(int(re.search(r"VmHWM:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) / 2**20))
"""


def dataset(folder: Path, max_seq_len: int) -> Path:
    """Rows long enough to fill `max_seq_len` tokens: the sample corpus's Markdown, repeated."""
    from lorapipe.io import write_json, write_jsonl

    text = "\n\n".join(p.read_text() for p in sorted(Path("data/raw/docs").glob("*.md"))) or "lorapipe " * 2000
    rows = [{"text": text[i * 500 :] + text[: i * 500], "source": f"row{i}", "task": "text"} for i in range(8)]
    folder.mkdir(parents=True)
    write_jsonl(folder / "train.jsonl", rows)
    write_jsonl(folder / "val.jsonl", rows[:2])
    write_json(folder / "stats.json", {"max_seq_len": max_seq_len})
    return folder


def tiny_model(base: Path, out: Path) -> Path:
    """The tests' tiny random Llama (tests/conftest.py), with the bundled model's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(base)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main() -> None:
    from lorapipe.models import prepare_base_model
    from lorapipe.plan import estimate_memory_gib, load_facts, training_settings

    with tempfile.TemporaryDirectory() as tmp:
        with contextlib.redirect_stdout(sys.stderr):  # the stage's progress is not part of the report
            bundled = prepare_base_model("smollm2-135m-instruct", Path(tmp) / "base")
        models = {"bundled": bundled, "tiny": tiny_model(bundled, Path(tmp) / "tiny")}
        print("| model | batch × seq | precision | measured GiB | estimated GiB | error |\n|---|---|---|---|---|---|")
        for name, batch, length, precision in CONFIGS:
            data = dataset(Path(tmp) / f"data-{name}-{batch}-{length}-{precision}", length)
            run = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    TRAIN,
                    str(data),
                    str(models[name]),
                    str(Path(tmp) / "out"),
                    str(batch),
                    precision,
                ],
                capture_output=True,
                text=True,
            )
            if run.returncode != 0:
                print(
                    f"| {name} | {batch} × {length} | {precision} | failed: {run.stderr.strip().splitlines()[-1]} | | |"
                )
                continue
            measured = json.loads(run.stdout.strip().splitlines()[-1])
            settings = training_settings(length, 16, "auto", False, precision, "cpu")
            estimate = estimate_memory_gib(load_facts(str(models[name])), batch_size=batch, **settings)["total"]
            print(
                f"| {name} | {batch} × {length} | {precision} | {measured:.2f} | {estimate:.2f} | "
                f"{(estimate - measured) / measured:+.1%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
