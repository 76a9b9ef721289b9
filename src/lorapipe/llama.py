"""llama.cpp on a GGUF file, shared by the export check and the evaluate stages.

    from lorapipe.llama import gguf_logits
    gguf_logits("models/gguf/lorapipe.Q4_K_M.gguf", [[1, 2, 3]])   # [array of shape (3, vocab)]

Its own module so that evaluate does not import export (nor rerun when Modelfile code changes).
"""

from __future__ import annotations

import os
from pathlib import Path


def threads() -> int:
    """Threads for llama.cpp's token-by-token generation: the physical cores this process may use
    (psutil; at most the CPUs of its affinity mask). llama-cpp-python's default is half the logical
    CPUs, one thread on a 2-core machine, where 2 threads generate 1.7 × faster (the bundled model,
    128 tokens: 1.24 s against 2.16 s, measured on the 2-core development machine)."""
    import psutil

    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(psutil.cpu_count(logical=False) or allowed, allowed))


def gguf_logits(gguf_path: str | Path, sequences: list[list[int]]) -> list:
    """llama.cpp's logits for each token sequence: one float32 array of shape (tokens, vocabulary)
    per sequence, loading the model once with a context just long enough for the longest."""
    import numpy as np
    from llama_cpp import Llama

    n_ctx = max(map(len, sequences)) + 8
    llm = Llama(
        str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, n_threads=threads(), verbose=False
    )
    out = []
    try:
        for ids in sequences:
            llm.reset()
            llm.eval(ids)
            out.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
    finally:
        llm.close()
    return out
