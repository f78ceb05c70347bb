"""Record the routing of a local Hugging Face MoE model as v1 traces (prefill, and decode with --max-new-tokens).

  moe-cache-env record --model DIR --prompts prompts.jsonl --max-new-tokens 64 -o traces/mine.npz

writes traces/mine.npz (prefill: every prompt token) and traces/mine-decode.npz (one row per generated token,
greedy). The model loads with AutoModelForCausalLM from a local directory or the local Hugging Face cache only:
model hubs are never contacted. The prompts file is plain text (one prompt per line) or JSONL (.jsonl) with
{"text": ..., "domain": ...} or {"tokens": [ids...], "domain": ...} per line; token ids need no tokenizer.
Needs the 'record' extra: pip install -e ".[record]".
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from moe_cache_env.cli import CommandError

DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--model", required=True, help="local model directory (save_pretrained output) or cached id")
    parser.add_argument("--prompts", required=True, help="prompts file: text lines, or .jsonl objects")
    parser.add_argument("-o", "--output", required=True, help="prefill trace path (.npz)")
    parser.add_argument("--max-new-tokens", type=int, default=0, help="greedy tokens generated per prompt (0: none)")
    parser.add_argument("--decode-output", help="decode trace path (default: OUTPUT with a -decode suffix)")
    parser.add_argument("--text-field", default="text", help="JSONL key of the prompt text (default: text)")
    parser.add_argument("--tokens-field", default="tokens", help="JSONL key of prompt token ids (default: tokens)")
    parser.add_argument("--domain-field", default="domain", help="JSONL key of the prompt's domain (default: domain)")
    parser.add_argument("--max-prompt-tokens", type=int, help="truncate longer prompts to their first N tokens")
    parser.add_argument("--no-special-tokens", action="store_true", help="tokenize without BOS/EOS special tokens")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="weights dtype (auto: the checkpoint's on GPU, float32 on CPU)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--expert-bytes", type=int, help="bytes of one expert (default: from the model's weights)")
    parser.add_argument("--model-name", help="model name stored in the traces (default: the directory's name)")
    parser.add_argument("--source", default="", help="the traces' source sentence (default: model + versions)")
    parser.add_argument("--record-logits", action="store_true",
                        help="also write the router logits to OUTPUT-router-logits.npz (float32, tokens x layers x E)")
    parser.add_argument("--no-stop-at-eos", action="store_true", help="keep decoding past end-of-sequence tokens")
    parser.add_argument("--speculate", type=int, nargs="?", const=2, default=0, metavar="D",
                        help="also record the routers of layers l+1..l+D applied to layer l's hidden state "
                        "(trace format 1.1; D defaults to 2, the simulator's longest lookahead; 0: off)")
    parser.add_argument("--speculate-top", type=int, default=8, metavar="M",
                        help="experts kept per speculative prediction (default: %(default)s)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code shipped in the model directory (runs that code)")


def _with_suffix(path: Path, suffix: str) -> Path:
    return path.with_name(f"{path.stem}{suffix}{path.suffix}") if path.suffix else path.with_name(path.name + suffix)


def _load_model(args: argparse.Namespace, transformers: Any, torch: Any) -> tuple[Any, Any]:
    local = Path(args.model).exists()
    where = "directory" if local else "Hugging Face cache entry"
    common = dict(local_files_only=True, trust_remote_code=args.trust_remote_code)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(args.device)
        except RuntimeError as exc:
            raise CommandError(f"--device {args.device!r}: {exc}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise CommandError(f"--device {args.device} asks for CUDA but torch sees no CUDA device")
    if args.dtype == "auto":
        dtype = "auto" if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    # transformers renamed torch_dtype to dtype in 4.56.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    common["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = dtype
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, **common)
    except (OSError, ValueError) as exc:
        hint = (
            "" if local else
            " Model hubs are unreachable: pass a local directory holding config.json and the weights "
            "(the output of save_pretrained), or an id already in the local Hugging Face cache."
        )
        reason = str(exc).splitlines()[0].rstrip(".")
        raise CommandError(f"cannot load model {where} {args.model!r} offline: {reason}.{hint}") from None
    return model.to(device), device


#: Files one of which a local model directory needs for its tokenizer; without them transformers 5 returns an
#: empty tokenizer of the model's default class instead of failing.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "tokenizer_config.json",
)


def _load_tokenizer(args: argparse.Namespace, transformers: Any) -> Any:
    local = Path(args.model)
    if local.is_dir() and not any((local / name).exists() for name in TOKENIZER_FILES):
        raise CommandError(
            f"no tokenizer loads from {args.model!r} (none of {', '.join(TOKENIZER_FILES)}); save one next to the "
            f"model, or give the prompts as token ids in a .jsonl file ({{\"{args.tokens_field}\": [...]}})"
        )
    try:
        return transformers.AutoTokenizer.from_pretrained(
            args.model, local_files_only=True, trust_remote_code=args.trust_remote_code
        )
    except (OSError, ValueError, TypeError) as exc:
        raise CommandError(
            f"no tokenizer loads from {args.model!r} ({str(exc).splitlines()[0]}); save one next to the model, "
            f"or give the prompts as token ids in a .jsonl file ({{\"{args.tokens_field}\": [...]}})"
        ) from None


def run(args: argparse.Namespace) -> int:
    from moe_cache_env.traces.format import save_trace
    from moe_cache_env.traces.record import read_prompts, record_routing, require_transformers

    try:
        transformers = require_transformers()
    except ImportError as exc:
        raise CommandError(str(exc)) from None
    import numpy as np
    import torch

    from moe_cache_env._io import atomic_write, check_output_not_input

    if args.max_new_tokens < 0:
        raise CommandError(f"--max-new-tokens must be 0 or more, got {args.max_new_tokens}")
    if args.max_prompt_tokens is not None and args.max_prompt_tokens < 1:
        raise CommandError(f"--max-prompt-tokens must be at least 1, got {args.max_prompt_tokens}")
    if args.speculate < 0:
        raise CommandError(f"--speculate must be 0 (off) or a number of layers ahead, got {args.speculate}")
    if args.speculate_top < 1:
        raise CommandError(f"--speculate-top must be at least 1, got {args.speculate_top}")
    if args.expert_bytes is not None and args.expert_bytes < 1:
        raise CommandError(f"--expert-bytes must be a positive number of bytes, got {args.expert_bytes}")
    output = Path(args.output)
    decode_output = Path(args.decode_output) if args.decode_output else _with_suffix(output, "-decode")
    if args.max_new_tokens and decode_output.resolve() == output.resolve():
        raise CommandError("--decode-output must differ from --output")
    for written in (output, decode_output):
        check_output_not_input(written, args.prompts, args.model)

    prompts = read_prompts(
        args.prompts, text_field=args.text_field, domain_field=args.domain_field, tokens_field=args.tokens_field
    )
    model, device = _load_model(args, transformers, torch)
    tokenizer = _load_tokenizer(args, transformers) if any(p.text is not None for p in prompts) else None
    sequences: list[list[int]] = []
    for prompt in prompts:
        if prompt.tokens is not None:
            ids = list(prompt.tokens)
        else:
            ids = list(tokenizer(prompt.text, add_special_tokens=not args.no_special_tokens)["input_ids"])
        if not ids:
            raise CommandError(f"{args.prompts}:{prompt.line}: the prompt tokenizes to nothing")
        sequences.append(ids[: args.max_prompt_tokens] if args.max_prompt_tokens else ids)
    domains = [p.domain for p in prompts] if prompts[0].domain is not None else None

    model_path = Path(args.model)
    traces = record_routing(
        model,
        sequences,
        max_new_tokens=args.max_new_tokens,
        domains=domains,  # type: ignore[arg-type]
        expert_bytes=args.expert_bytes,
        model_name=args.model_name or (model_path.name if model_path.exists() else args.model),
        source=args.source,
        record_logits=args.record_logits,
        device=device,
        stop_at_eos=not args.no_stop_at_eos,
        prompts_file=str(args.prompts),
        speculate=args.speculate,
        speculate_top=args.speculate_top,
    )
    for phase, path in (("prefill", output), ("decode", decode_output)):
        trace = traces.get(phase)
        if trace is None:
            continue
        save_trace(trace, path)
        layers = trace.meta["moe_layer_indices"]
        print(
            f"wrote {path} ({phase}): {trace.num_tokens} tokens in {len(trace.sequence_bounds())} sequences, "
            f"{trace.num_layers} MoE layers (decoder layers {layers[0]}..{layers[-1]}), {trace.num_experts} experts, "
            f"top-{trace.top_k}, {trace.expert_bytes} bytes per expert; ids "
            + "; ".join(trace.meta["routing"]["selection"])
        )
        if args.record_logits:
            logits_path = _with_suffix(path, "-router-logits")
            arrays = {"router_logits": trace.router_logits, "sequence": trace.sequence}

            def write(handle: Any, arrays: dict = arrays) -> None:
                np.savez_compressed(handle, **arrays)

            atomic_write(logits_path, write)
            print(f"wrote {logits_path}: router logits {trace.router_logits.shape} float32")
    return 0
