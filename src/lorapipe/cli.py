"""The `lorapipe` command: each pipeline stage as a subcommand, over the same functions DVC runs.

    lorapipe train --lora.rank 8          # run one stage with params.yaml plus overrides
    lorapipe train --task queries         # one task's adapter, into models/lora_queries
    lorapipe train --machine-rank 1       # machine 1 of a run across machines (machine 0: dvc repro)
    lorapipe extract --input-dir a/ b/ --output-dir out/ --no-resume   # extract other folders
    lorapipe ask "What is LoRA?"          # one answer from the exported GGUF
    lorapipe ask --retrieval "What is LoRA?"   # ... with the top passages of data/synth/index in the prompt
    lorapipe serve --port 8000            # HTTP API: /status, /query, /v1/chat/completions, /train
    lorapipe chat                         # talk to the model in the terminal
    lorapipe plan --model mistralai/Mistral-7B-Instruct-v0.2 --load-in-4bit --device-memory-gb 8
    lorapipe check                        # validate params.yaml and the files it names

Each stage command takes exactly the params keys that stage reads (``--<section>.<key>``), the
same keys `dvc.yaml` lists for it; values are read as YAML (``--export.quants "[Q8_0, F16]"``), text params
as typed (``--dataset.system_prompt "Answer: JSON."``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import types
import typing
from pathlib import Path
from typing import get_args

import yaml

from lorapipe import paths
from lorapipe.params import (
    ANSWER_MAX_TOKENS,
    DEFAULTS,
    STAGE_SECTIONS,
    Device,
    Params,
    ParamsError,
    Preset,
    choices,
    flag_help,
    apply_overrides,
    load_params,
    stage_keys,
    validate_params,
)


# Short spellings of some keys, as the README documents them (`--min-length` = `--extract.min_length`).
_ALIASES = {
    "extract.min_length": ("--min-length",),
    "extract.device": ("--device",),
    "extract.workers": ("--workers",),
    "extract.pdf_backend": ("--pdf-backend",),
    "dataset.max_seq_len": ("--max-seq-len",),
    "dataset.overlap_tokens": ("--overlap-tokens",),
    "dataset.val_fraction": ("--val-ratio",),
    "dataset.max_samples": ("--max-samples",),
    "train.epochs": ("--epochs",),
    "train.lr": ("--lr",),
    "train.batch_size": ("--batch-size",),
    "train.grad_accum": ("--grad-accum",),
    "lora.rank": ("--lora-rank",),
    "lora.alpha": ("--lora-alpha",),
    "train.precision": ("--precision",),
    "train.resume": ("--resume",),
    "train.eval_steps": ("--eval-steps",),
    "train.preset": ("--preset",),
    "train.num_processes": ("--num-processes",),
    "train.packing": ("--packing",),
    "export.outtype": ("--outtype",),
    "export.ollama_name": ("--ollama-name",),
}


def _dir(dest: str, default: Path | None, help: str, *flags: str) -> tuple[tuple[str, ...], dict]:
    return flags, {"dest": dest, "metavar": "DIR", "default": str(default) if default else None, "help": help}


# The flags of each stage command beyond its params keys: (flag names, argparse keywords).
_STAGE_FLAGS: dict[str, list[tuple[tuple[str, ...], dict]]] = {
    "extract": [
        (
            ("--input-dir", "--input"),
            {"nargs": "+", "dest": "input_dirs", "metavar": "DIR", "help": "input folders (default: data/raw/docs)"},
        ),
        _dir("output_dir", paths.EXTRACTED, "output folder (default: data/extracted_text)", "--output-dir"),
        (
            ("--no-resume",),
            {
                "dest": "extract.resume",
                "action": "store_const",
                "const": "false",
                "help": "ignore cached texts and extract everything again (extract.resume: false)",
            },
        ),
    ],
    "synth": [
        _dir("output_dir", paths.SYNTH, "output folder (default: data/synth)", "--output-dir"),
        (
            ("--no-resume",),
            {
                "dest": "synth.resume",
                "action": "store_const",
                "const": "false",
                "help": "ignore cached replies and ask the teacher again (synth.resume: false)",
            },
        ),
    ],
    "dataset": [
        _dir(
            "labeled_dir", paths.RAW_LABELED, "labeled JSON/JSONL examples (default: data/raw/labeled)", "--labeled-dir"
        ),
        _dir("output_dir", paths.DATASET, "output folder (default: data/dataset)", "--output-dir"),
        _dir(
            "synth_dir",
            paths.SYNTH,
            "the synth stage's output: its pairs.jsonl becomes the question–answer task; none there, no such task "
            "(default: data/synth)",
            "--synth-dir",
        ),
    ],
    "train": [
        (("--task",), {"metavar": "NAME", "help": "train an adapter on one task's rows only, into models/lora_NAME"}),
        (
            ("--machine-rank",),
            {
                "type": int,
                "default": 0,
                "metavar": "R",
                "help": "join a training run across machines as machine R (1 to num_machines - 1 of "
                "train.accelerate_config), in a checkout of machine 0's commit after `dvc pull base dataset`; "
                "machine 0 runs `dvc repro` and writes the adapter (default: 0, this machine trains and writes)",
            },
        ),
    ],
    "merge": [
        _dir("merged_dir", paths.MERGED, "the merged model folder (written; default: models/merged)", "--merged-dir")
    ],
    "evaluate_base": [
        _dir(
            "reports_dir",
            paths.REPORTS,
            "writes eval_base.json, answers_base.json and knowledge_base.json here (default: reports)",
            "--reports-dir",
        ),
        (
            ("--eval-qa",),
            {
                "dest": "eval_qa",
                "metavar": "FILE",
                "default": str(paths.EVAL_QA),
                "help": "your knowledge questions, JSONL {question, answer, source?, key?} "
                f"(default: {paths.EVAL_QA}, skipped when absent)",
            },
        ),
    ],
    "evaluate": [
        _dir(
            "adapter_dir",
            paths.ADAPTER,
            "the adapter whose MLflow run gets the metrics (default: models/lora_output)",
            "--adapter-dir",
        )
    ],
    "export": [
        _dir("output_dir", paths.GGUF, "output folder (default: models/gguf)", "--output-dir"),
        (
            ("--quant",),
            {
                "dest": "quant",
                "action": "append",
                "metavar": "TYPE",
                "help": "a quantization to write, repeatable (--quant Q4_K_M --quant Q8_0), or auto (the ladder, "
                "the smallest within export.quant_tolerance is the model); replaces export.quants",
            },
        ),
        (
            ("--lora-gguf",),
            {
                "dest": "export.lora_gguf",
                "action": "store_const",
                "const": "true",
                "help": "also write the adapter alone as <name>.lora.gguf (export.lora_gguf: true)",
            },
        ),
    ],
}


# What each stage command reads that an earlier stage writes: (flags, dest, default folder, the files
# in it the command reads). Each is checked before any work; a missing one is named with the command
# that writes it and the flag (``models/base not found: run `dvc repro base` or pass --base-dir``).
_DATASET_FILES = {
    "train": (paths.TRAIN_ROWS.name, paths.VAL_ROWS.name, paths.DATASET_STATS.name),
    "export": (paths.PROMPTS.name,),
    "evaluate_base": (paths.VAL_ROWS.name, paths.PROMPTS.name, paths.TRAIN_ROWS.name),
    "evaluate": (paths.VAL_ROWS.name, paths.PROMPTS.name),
}
_BASE = (("--base-dir",), "base_dir", paths.BASE_MODEL, ("config.json",))
_ADAPTER = (("--adapter-dir",), "adapter_dir", paths.ADAPTER, ("adapter_config.json",))
_MERGED = (("--merged-dir",), "merged_dir", paths.MERGED, ("config.json",))
_INPUTS: dict[str, list[tuple[tuple[str, ...], str, Path, tuple[str, ...]]]] = {
    "synth": [(("--text-dir", "--input-dir"), "text_dir", paths.EXTRACTED, (paths.MANIFEST_NAME,)), _BASE],
    "dataset": [(("--text-dir", "--input-dir"), "text_dir", paths.EXTRACTED, (paths.MANIFEST_NAME,)), _BASE],
    "train": [(("--dataset-dir",), "dataset_dir", paths.DATASET, _DATASET_FILES["train"]), _BASE],
    "merge": [_BASE, _ADAPTER],
    "export": [_MERGED, (("--dataset-dir",), "dataset_dir", paths.DATASET, _DATASET_FILES["export"]), _ADAPTER, _BASE],
    "evaluate_base": [
        (("--dataset-dir",), "dataset_dir", paths.DATASET, _DATASET_FILES["evaluate_base"]),
        _BASE,
        (("--synth-dir",), "synth_dir", paths.SYNTH, (paths.PAIRS.name, paths.RETRIEVAL_INDEX.name)),
    ],
    "evaluate": [
        (("--dataset-dir",), "dataset_dir", paths.DATASET, _DATASET_FILES["evaluate"]),
        _MERGED,
        (("--gguf-dir",), "gguf_dir", paths.GGUF, ("export.json",)),
        (("--reports-dir",), "reports_dir", paths.REPORTS, (paths.EVAL_BASE.name, paths.KNOWLEDGE_BASE.name)),
    ],
}


def _check_inputs(args: argparse.Namespace, stage: str, unread: frozenset[str] = frozenset()) -> dict[str, Path]:
    """The input folders of `stage` by dest; raises FileNotFoundError naming the first missing folder
    or file, the command that writes it and the flag that points elsewhere. A dest in `unread` (an input
    this run does not read) is passed on as given, unchecked."""
    folders = {}
    for flags, dest, default, files in _INPUTS.get(stage, []):
        if dest in unread:
            folders[dest] = Path(getattr(args, dest))
            continue
        maker = _maker(default, files)
        folder = paths.require(getattr(args, dest), flags[0], maker)
        for name in files:
            paths.require(folder / name, flags[0], maker)
        folders[dest] = folder
    return folders


def _maker(default: Path, files: tuple[str, ...]) -> str:
    """The stage that writes the input folder `default` (reports/: the stage that writes its file)."""
    return paths.MADE_BY.get(default) or paths.MADE_BY[default / files[0]]


def _add_stage_command(commands, stage: str) -> None:
    """``lorapipe <stage>``: a flag per params key the stage reads (help from the schema), plus its own."""
    sub = commands.add_parser(stage, help=f"run the {stage} stage")
    sub.add_argument("--params", default=str(paths.PARAMS), help="params file (default: params.yaml)")
    for key in stage_keys(stage):
        allowed = choices(key)
        metavar = "{" + ",".join(allowed) + "}" if allowed else "VALUE"
        sub.add_argument(
            f"--{key}", *_ALIASES.get(key, ()), dest=key, default=None, help=flag_help(key), metavar=metavar
        )
    for flags, options in _STAGE_FLAGS.get(stage, []):
        sub.add_argument(*flags, **options)
    for flags, dest, default, files in _INPUTS.get(stage, []):
        maker = _maker(default, files)
        sub.add_argument(
            *flags,
            dest=dest,
            metavar="DIR",
            default=str(default),
            help=f"the {maker} stage's output to read (default: {default})",
        )


def _add_retrieval_flags(command) -> None:
    """``--retrieval``, ``--index`` and ``--top-k`` of ``ask`` and ``serve``."""
    command.add_argument(
        "--retrieval",
        action="store_true",
        help="answer with the passages a BM25 index finds for the question in the prompt, as the knowledge "
        "evaluation measured it",
    )
    command.add_argument(
        "--index",
        metavar="DIR",
        default=str(paths.RETRIEVAL_INDEX),
        help=f"the index for --retrieval (default: {paths.RETRIEVAL_INDEX}, the synth stage's)",
    )
    command.add_argument(
        "--top-k", type=_positive(int), metavar="N", help="passages per prompt (default: eval.retrieval_top_k)"
    )


def _add_model_commands(commands) -> None:
    """``ask``, ``serve`` and ``chat``: the exported model at work."""
    default_gguf = "(default: the model models/gguf/export.json names)"
    ask = commands.add_parser("ask", help="answer a question with the exported GGUF (llama.cpp)")
    ask.add_argument("question")
    ask.add_argument("--gguf", help=f"GGUF file {default_gguf}")
    ask.add_argument(
        "--prompts", default=str(paths.PROMPTS), help="the system prompts (default: data/dataset/prompts.json)"
    )
    ask.add_argument(
        "--max-tokens",
        type=_positive(int),
        default=ANSWER_MAX_TOKENS,
        help="tokens per answer at most (default: %(default)s)",
    )
    ask.add_argument(
        "--task",
        help="the task whose system prompt the question gets (prompts.json; default: the first, or with "
        "--retrieval synth.task's)",
    )
    ask.add_argument(
        "--json-schema",
        help="decode the answer under this JSON Schema (llama.cpp grammar), as `lorapipe serve` does with "
        "eval.json_schema, but without the span constraint; default: free text",
    )
    _add_retrieval_flags(ask)
    serve = commands.add_parser("serve", help="serve the exported model over HTTP (FastAPI, 127.0.0.1)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, local only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--gguf", help=f"GGUF file to serve {default_gguf}")
    serve.add_argument(
        "--transformers",
        action="store_true",
        help="serve the merged model (models/merged, or --merged-dir) with transformers instead",
    )
    serve.add_argument("--merged-dir", default=str(paths.MERGED), help="merged model folder for --transformers")
    serve.add_argument(
        "--json-schema",
        help="JSON Schema the answers are decoded under (llama.cpp grammar) unless a request says "
        '"constrained": false; default: params.yaml\'s eval.json_schema, the schema the evaluation scored',
    )
    serve.add_argument(
        "--no-json-schema", action="store_true", help="serve without a schema, even when eval.json_schema names one"
    )
    serve.add_argument(
        "--span-constraint",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="limit the schema's free string values (slot values) to spans of each request's user message "
        'unless a request says "span_constraint": false; default: params.yaml\'s eval.span_constraint',
    )
    _add_retrieval_flags(serve)
    chat = commands.add_parser("chat", help="talk to the exported model in the terminal")
    chat.add_argument("--gguf", help=f"GGUF file {default_gguf}")
    chat.add_argument(
        "--max-tokens",
        type=_positive(int),
        default=ANSWER_MAX_TOKENS,
        help="tokens per answer at most (default: %(default)s)",
    )


def _add_plan_command(commands) -> None:
    plan = commands.add_parser("plan", help="estimate peak memory and training time before training")
    plan.add_argument("--params", default=str(paths.PARAMS), help="defaults come from this params file")
    plan.add_argument("--model", help="model name, Hub id or folder (default: model.name, or models/base if built)")
    plan.add_argument(
        "--dataset-dir",
        help="the time estimate reads stats.json here (default: data/dataset when the dataset stage has run)",
    )
    plan.add_argument(
        "--task",
        help="plan the time of `lorapipe train --task NAME`: that task's training rows alone (default: all tasks)",
    )
    plan.add_argument("--max-seq-len", type=_positive(int), help="tokens per row (default: dataset.max_seq_len)")
    plan.add_argument("--batch-size", type=_positive(int), help="rows per forward pass (default: train.batch_size)")
    plan.add_argument("--lora-rank", type=_positive(int), help="the adapter's rank (default: lora.rank)")
    plan.add_argument(
        "--load-in-4bit", action="store_true", default=None, help="plan QLoRA (default: quant.load_in_4bit, preset)"
    )
    plan.add_argument(
        "--device", choices=get_args(Device), default="auto", help="plan for this device (auto: the one here)"
    )
    plan.add_argument(
        "--device-memory-gb",
        type=_positive(float),
        help="memory budget in GiB: a card sold as '8 GB' has 8 GiB (default: what the device has free)",
    )
    plan.add_argument(
        "--preset",
        choices=get_args(Preset),
        help="plan for this hardware (default: train.preset): its memory budget and 4-bit setting",
    )
    plan.add_argument(
        "--peak-tflops",
        type=_positive(float),
        help="the card's datasheet peak dense bf16 TFLOP/s, to estimate speed for a GPU that is not here",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorapipe", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for stage in STAGE_SECTIONS:
        _add_stage_command(commands, stage)
    _add_model_commands(commands)
    _add_plan_command(commands)
    check = commands.add_parser(
        "check",
        help="validate params.yaml and the files it names (under data/raw/config/; eval.json_schema must be a "
        "JSON Schema) and print the resolved values",
    )
    check.add_argument(
        "--params",
        default=str(paths.PARAMS),
        help="the params file (default: params.yaml); the files it names are read relative to the folder "
        "you run in, as the pipeline reads them from the project root",
    )
    commands.add_parser("install-converter", help="unpack llama.cpp's converter into the user cache")
    return parser


def _is_text(key: str) -> bool:
    """Whether the param `key` (``section.name``) takes text only (``str`` or ``str | None``): its flag's
    value is then the text as typed, not YAML (``--dataset.system_prompt "Answer: JSON"`` stays text)."""
    section, _, name = key.partition(".")
    field = Params.model_fields[section].annotation.model_fields[name]
    union = typing.get_origin(field.annotation) in (typing.Union, types.UnionType)
    kinds = set(typing.get_args(field.annotation)) if union else {field.annotation}
    return kinds - {type(None)} == {str}


def _overrides(args: argparse.Namespace, stage: str) -> dict:
    """The ``--section.key`` flags given: text params as typed (``null`` or ``~`` is None where None is
    allowed), every other value read as YAML (``--export.quants "[Q8_0, F16]"``, ``--lora.rank 8``)."""
    out = {}
    for key in stage_keys(stage):
        if (value := getattr(args, key, None)) is None:
            continue
        if _is_text(key) and value not in ("null", "~"):
            out[key] = value
            continue
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ParamsError(f"--{key} {value!r} is not a YAML value ({exc.__class__.__name__})") from None
    return out


def _load_params(args: argparse.Namespace, overrides: dict | None = None) -> Params:
    """params.yaml (or ``--params``) with `overrides`. Outside a project (no params.yaml here and no
    ``--params`` given) the schema's defaults, said once on stderr; a ``--params`` file that is missing
    raises FileNotFoundError naming it."""
    if args.params == str(paths.PARAMS) and not paths.PARAMS.exists():
        print(f"[lorapipe] no {paths.PARAMS} here: using the defaults (pass --params FILE for yours)", file=sys.stderr)
        return validate_params(apply_overrides({}, overrides or {}), "the defaults")
    return load_params(args.params, overrides)


def _positive(kind: type):
    """An argparse type: a number of `kind` above zero."""

    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def _gguf(given: str | None) -> Path:
    """The GGUF `--gguf` names, else the model of the export in models/gguf; raises FileNotFoundError
    naming the missing path (and `dvc repro export`)."""
    from lorapipe.artifacts import model_gguf

    if given:
        return paths.require(given, "--gguf")
    return model_gguf(paths.require(paths.GGUF, "--gguf"))


def _retrieval(args: argparse.Namespace):
    """The serve.Retrieval ``--retrieval`` asks for (the index ``--index`` names, ``--top-k`` else params'
    eval.retrieval_top_k, the task synth.task), or None. Raises FileNotFoundError naming a missing index
    and `dvc repro synth`; ValueError for --index or --top-k without --retrieval, and for an index of no
    passage."""
    if not args.retrieval:
        if args.top_k is not None or args.index != str(paths.RETRIEVAL_INDEX):
            raise ValueError("--index and --top-k choose what --retrieval puts in the prompt: add --retrieval")
        return None
    from lorapipe.retrieval import load_index
    from lorapipe.serve import Retrieval

    index = load_index(args.index)
    if not index.passages:
        raise ValueError(
            f"{args.index} holds no passage (the synth stage found no extracted text: a task from labeled rows "
            "alone): --retrieval has nothing to put in the prompt; leave it out, or add documents and `dvc repro`"
        )
    p = load_params(paths.PARAMS) if paths.PARAMS.is_file() else DEFAULTS
    return Retrieval(index, args.top_k or p.eval.retrieval_top_k, p.synth.task, Path(args.index))


def _serve_span_constraint(args: argparse.Namespace, schema: str | None) -> bool:
    """--span-constraint / --no-span-constraint, else params.yaml's eval.span_constraint when serving
    the GGUF under a schema. Raises ValueError for --span-constraint without a schema or with --transformers."""
    transformers = getattr(args, "transformers", False)
    if args.span_constraint is not None:
        if args.span_constraint and (schema is None or transformers):
            raise ValueError(
                "--span-constraint limits the strings of the schema's grammar, which only the llama.cpp engine "
                "decodes under: serve the GGUF (no --transformers) with a schema (--json-schema FILE or "
                "params.yaml's eval.json_schema)"
            )
        return args.span_constraint
    on = (
        schema is not None
        and not transformers
        and paths.PARAMS.is_file()
        and load_params(paths.PARAMS).eval.span_constraint
    )
    if on:
        print("[serve] slot values are limited to spans of the query (eval.span_constraint)", flush=True)
    return bool(on)


def _serve_schema(args: argparse.Namespace) -> str | None:
    """The JSON Schema file `lorapipe serve` decodes under: --json-schema, else params.yaml's
    eval.json_schema (the task's schema, which the evaluation scored), else none; --no-json-schema: none.
    Raises ValueError for both flags, FileNotFoundError for a schema file that is not there."""
    if args.no_json_schema:
        if args.json_schema:
            raise ValueError("--json-schema and --no-json-schema contradict each other: give one")
        return None
    if args.json_schema:
        return str(paths.require(args.json_schema, "--json-schema"))
    named = load_params(paths.PARAMS).eval.json_schema if paths.PARAMS.is_file() else None
    if not named:
        return None
    from lorapipe.labeled import load_json_schema

    load_json_schema(named, "eval.json_schema")  # refused here naming the param, not --json-schema
    print(f"[serve] answers are decoded under eval.json_schema {named} (--no-json-schema: free text)", flush=True)
    return named


def _ask(args: argparse.Namespace) -> None:
    from lorapipe.generation import answer_all
    from lorapipe.io import read_json
    from lorapipe.labeled import load_json_schema

    gguf = _gguf(args.gguf)
    prompts = read_json(paths.require(args.prompts, "--prompts"))
    schema = None
    if args.json_schema:
        schema = load_json_schema(
            paths.require(args.json_schema, "--json-schema"), "--json-schema", warn=f"[ask] warning: {args.json_schema}"
        )
    retrieval = _retrieval(args)
    if not isinstance(prompts, dict) or not prompts:
        raise ValueError(f"{args.prompts} names no task's system prompt: rebuild it with `dvc repro dataset`")
    if args.task is not None and args.task not in prompts:
        raise ValueError(f"--task {args.task!r} is not a task of {args.prompts}; its tasks: {', '.join(prompts)}")
    if retrieval is None:
        system_prompt = prompts[args.task] if args.task else next(iter(prompts.values()))
        conversation = [{"role": "system", "content": system_prompt}, {"role": "user", "content": args.question}]
        answer = answer_all(gguf, [conversation], args.max_tokens, schema)[0]
        print(f"Q: {args.question}\nA ({gguf.name}, llama.cpp{', under the schema' if schema else ''}): {answer}")
        return
    system_prompt = prompts.get(args.task or retrieval.task) or next(iter(prompts.values()))
    messages, passages = retrieval.apply(
        [{"role": "system", "content": system_prompt}, {"role": "user", "content": args.question}]
    )
    answer = answer_all(gguf, [messages], args.max_tokens, schema)[0]
    print(f"Q: {args.question}\nA ({gguf.name}, llama.cpp, with {retrieval.describe()}): {answer}")
    for number, passage in enumerate(passages, 1):
        print(f"[{number}] {passage.get('id') or passage.get('source')} (BM25 {passage['score']:.2f})")
    if not passages:
        print(f"(no passage of {retrieval.folder} shares a word with the question: answered without one)")


def _plan(args: argparse.Namespace) -> int:
    from lorapipe.plan import plan_report

    p = _load_params(args)
    model = args.model or (str(paths.BASE_MODEL) if (paths.BASE_MODEL / "config.json").is_file() else p.model.name)
    four_bit = (
        args.load_in_4bit if args.load_in_4bit else (None if p.quant.load_in_4bit == "auto" else p.quant.load_in_4bit)
    )
    text, fits = plan_report(
        model,
        max_seq_len=p.dataset.max_seq_len if args.max_seq_len is None else args.max_seq_len,
        batch_size=p.train.batch_size if args.batch_size is None else args.batch_size,
        lora_rank=p.lora.rank if args.lora_rank is None else args.lora_rank,
        load_in_4bit=four_bit,
        device=args.device,
        precision=p.train.precision,
        device_memory_gib=args.device_memory_gb,
        grad_accum=p.train.grad_accum,
        steps=p.train.max_steps,
        epochs=p.train.epochs,
        processes=p.train.num_processes,
        dataset_stats=paths.require(Path(args.dataset_dir) / paths.DATASET_STATS.name, "--dataset-dir")
        if args.dataset_dir
        else paths.DATASET_STATS,
        preset_name=args.preset or p.train.preset,
        peak_tflops=args.peak_tflops,
        task=args.task,
    )
    print(text)
    return 0 if fits else 1


def _run_stage(args: argparse.Namespace) -> None:
    """Run one stage's module (``lorapipe.stages.<stage>``) with params.yaml plus the flags' overrides,
    once its inputs are found."""
    from lorapipe import faults

    overrides = _overrides(args, args.command)
    if getattr(args, "quant", None):
        overrides["export.quants"] = args.quant
    params = _load_params(args, overrides)
    unread = (
        frozenset({"text_dir"}) if args.command == "dataset" and not _dataset_reads_text(args, params) else frozenset()
    )
    folders = _check_inputs(args, args.command, unread)
    _warn_schema_keywords(params, args.command)
    faults.enter_stage(args.command)
    _STAGE_RUNNERS[args.command](args, params, folders)


def _warn_schema_keywords(params: Params, stage: str) -> None:
    """The keywords JSON Schema would ignore in the eval.json_schema `stage` reads, as warnings
    (`lorapipe.labeled.warn_unknown_keywords`), as the pipeline's stages print them; a schema that
    cannot be read is left to the stage, whose error names it."""
    from lorapipe.labeled import load_json_schema
    from lorapipe.param_files import named_files

    for key, value in named_files(params, stage):
        if key == "eval.json_schema":
            with contextlib.suppress(OSError, ValueError):
                load_json_schema(Path(value), key, warn=f"[{stage}] warning: {key}: {value}")


def _dataset_reads_text(args: argparse.Namespace, p: Params) -> bool:
    """Does `lorapipe dataset` read the extract stage's output? Not with ``dataset.mode: chat``, nor with
    ``auto`` (and no text task in ``dataset.tasks``) when --labeled-dir holds labeled rows, --text-dir is
    the default, no extracted document is there (no manifest, or an empty one) and data/raw/docs holds none
    to extract: build_dataset then builds the labeled rows alone, as it would in the pipeline without
    documents (said on stdout)."""
    from lorapipe.dataset import has_extracted_text, labeled_files

    d = p.dataset
    if d.mode == "text" or any(t.kind == "text" for t in d.tasks):
        return True
    if d.mode == "chat":
        return False
    text_dir = Path(args.text_dir)
    if text_dir.resolve() != paths.EXTRACTED.resolve() or has_extracted_text(text_dir):
        return True
    if not labeled_files(Path(args.labeled_dir)):
        return True
    from lorapipe.extract import convertible_documents

    waiting = len(convertible_documents(paths.RAW_DOCS))
    if waiting:
        manifest = text_dir / paths.MANIFEST_NAME
        what = f"{manifest} lists no document" if manifest.is_file() else f"{text_dir} not found"
        raise FileNotFoundError(
            f"{what}: run `dvc repro extract` (or `lorapipe extract`) first: {paths.RAW_DOCS} holds "
            f"{waiting} document(s) to extract; or --dataset.mode chat to build the labeled rows of "
            f"{args.labeled_dir} alone"
        )
    print(
        f"[dataset] no extracted text in {text_dir}: the labeled rows of {args.labeled_dir} alone "
        "(run `lorapipe extract` first to add the documents)",
        flush=True,
    )
    return False


def _base(args: argparse.Namespace, p: Params, folders: dict[str, Path]) -> None:
    from lorapipe.stages.base import run

    run(p)


def _extract(args: argparse.Namespace, p: Params, folders: dict[str, Path]) -> None:
    from lorapipe.stages.extract import run

    inputs = [paths.require(d, "--input-dir") for d in args.input_dirs or [paths.RAW_DOCS]]
    run(p, inputs, Path(args.output_dir))


def _dataset(args: argparse.Namespace, p: Params, folders: dict[str, Path]) -> None:
    from lorapipe.stages.dataset import run

    run(
        p,
        folders["text_dir"],
        Path(args.labeled_dir),
        Path(args.output_dir),
        folders["base_dir"],
        synth_dir=Path(args.synth_dir),
    )


def _synth(args: argparse.Namespace, p: Params, folders: dict[str, Path]) -> None:
    from lorapipe.stages.synth import run

    run(p, folders["text_dir"], folders["base_dir"], Path(args.output_dir))


def _train(args: argparse.Namespace, p: Params, folders: dict[str, Path]) -> None:
    if args.machine_rank:  # another machine of a run across machines (README: More GPUs, more machines)
        from lorapipe.distributed import join_training

        join_training(p, args.machine_rank, args.task, **folders)
        return
    from lorapipe.stages.train import run

    run(p, args.task, **folders)


def _merge(args: argparse.Namespace, p: Params, folders: dict[str, Path]) -> None:
    from lorapipe.stages.merge import run

    run(p, Path(args.merged_dir), **folders)


def _export(args: argparse.Namespace, p: Params, folders: dict[str, Path]) -> None:
    from lorapipe.stages.export import run

    run(p, folders.pop("merged_dir"), Path(args.output_dir), **folders)


def _evaluate_base(args: argparse.Namespace, p: Params, folders: dict[str, Path]) -> None:
    from lorapipe.stages.evaluate_base import run

    eval_qa = Path(args.eval_qa)
    if eval_qa != paths.EVAL_QA:  # the default may be absent (no questions of your own); one you name may not
        paths.require(eval_qa, "--eval-qa")
    run(p, reports_dir=Path(args.reports_dir), eval_qa=eval_qa, **folders)


def _evaluate(args: argparse.Namespace, p: Params, folders: dict[str, Path]) -> None:
    from lorapipe.stages.evaluate import run

    run(p, adapter_dir=Path(args.adapter_dir), **folders)


# Each stage command and how its flags reach the stage module's run() (lorapipe.stages.<stage>).
_STAGE_RUNNERS = {
    "base": _base,
    "extract": _extract,
    "synth": _synth,
    "dataset": _dataset,
    "train": _train,
    "merge": _merge,
    "export": _export,
    "evaluate_base": _evaluate_base,
    "evaluate": _evaluate,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in STAGE_SECTIONS:
            _run_stage(args)
        elif args.command == "ask":
            _ask(args)
        elif args.command == "plan":
            return _plan(args)
        elif args.command == "serve":
            from lorapipe.serve import serve

            if args.gguf:
                paths.require(args.gguf, "--gguf")
            if args.transformers and Path(args.merged_dir) != paths.MERGED:
                paths.require(args.merged_dir, "--merged-dir")
            schema = _serve_schema(args)
            serve(
                args.host,
                args.port,
                args.merged_dir if args.transformers else args.gguf,
                "transformers" if args.transformers else "llama.cpp",
                schema,
                _retrieval(args),
                _serve_span_constraint(args, schema),
            )
        elif args.command == "chat":
            from lorapipe.serve import chat_loop

            chat_loop(_gguf(args.gguf), args.max_tokens)
        elif args.command == "check":
            from lorapipe.param_files import check_param_files, named_files

            params = load_params(args.params)
            check_param_files(params, None, source=Path(args.params))
            print(yaml.safe_dump(params.model_dump(), sort_keys=False), end="")
            named = [f"{key} ({value})" for key, value in named_files(params, None)]
            print(
                f"[check] {args.params} is valid (every param resolved above, defaults filled in)"
                + (f"; the files it names are in place and readable: {', '.join(named)}" if named else ""),
                file=sys.stderr,
            )
            if params.train.max_steps > 0:
                from lorapipe.plan import warn_warmup

                warn_warmup(params.train.warmup_steps, params.train.max_steps, "[check]")
            if params.train.max_steps > 0 and params.train.epochs != DEFAULTS.train.epochs:
                print(
                    f"[check] note: train.max_steps is {params.train.max_steps}, so train.epochs "
                    f"({params.train.epochs}) is not used (max_steps: -1 trains for the epochs)",
                    file=sys.stderr,
                )
        elif args.command == "install-converter":
            from lorapipe.export import install_converter

            print(install_converter())
    except (ParamsError, OSError, ValueError) as exc:
        print(f"lorapipe {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
