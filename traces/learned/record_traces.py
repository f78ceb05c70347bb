"""Record prefill and decode routing traces of the trained MoE on held-out text of each domain.

Prompts are windows of each domain's held-out stream (documents never seen in training): ``prefill_per_domain``
evenly spaced windows per domain, each moved forward to the start of a line and BOS-prefixed, ``prompt_len``
tokens long. Domains are interleaved (code, prose, structured, code, ...), so any contiguous half of the
sequences holds all domains in equal parts. The prefill trace records every prompt; the decode trace records
greedy generation of ``max_new_tokens`` tokens after the first ``decode_per_domain`` prompts of each domain;
as the order is the same, decode sequence ``i`` continues the prompt of prefill sequence ``i``.
Recording is :func:`moe_cache_env.traces.record.record_routing` (hooks on every router).

Writes ``<name>-prefill.npz`` / ``<name>-decode.npz`` (trace format v1) and a provenance card
``<name>-<phase>.card.json`` for each, into ``--out-dir``.

Usage::

    PYTHONPATH=. python traces/learned/record_traces.py --run-dir /tmp/run --corpus .dev/learned/corpus.npz \\
        --out-dir moe_cache_env/traces/bundled/learned
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_corpus import BOS_ID, DOMAINS  # noqa: E402

NEWLINE = ord("\n")


def heldout_prompts(stream: np.ndarray, count: int, prompt_len: int) -> list[list[int]]:
    """``count`` non-overlapping BOS-prefixed windows of ``stream``, each starting at a line start."""
    body = prompt_len - 1
    span = stream.size // count
    if span < 2 * body:
        raise ValueError(f"held-out stream of {stream.size} tokens is too short for {count} prompts of {prompt_len}")
    prompts = []
    for i in range(count):
        start = i * span
        # Move to just after the next newline (within the first half of the span) so prompts start at a line.
        newlines = np.flatnonzero(stream[start : start + span - body] == NEWLINE)
        if newlines.size:
            start += int(newlines[0]) + 1
        prompts.append([BOS_ID] + stream[start : start + body].astype(np.int64).tolist())
    return prompts


def interleave(per_domain: dict[str, list[list[int]]]) -> tuple[list[list[int]], list[str]]:
    """Round-robin the domains' prompts: sequence i belongs to domain i mod D."""
    sequences, domains = [], []
    count = min(len(v) for v in per_domain.values())
    for i in range(count):
        for name, prompts in per_domain.items():
            sequences.append(prompts[i])
            domains.append(name)
    return sequences, domains


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True, help="folder written by train_moe.py (model/, train_run.json)")
    parser.add_argument("--corpus", required=True, help="the corpus .npz the model was trained on")
    parser.add_argument("--out-dir", required=True, help="where traces and cards are written")
    parser.add_argument("--name", default=None, help="file-name stem (default tiny-olmoe-<L>L-<E>E)")
    parser.add_argument("--prefill-per-domain", type=int, default=48)
    parser.add_argument("--decode-per-domain", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--speculate", type=int, default=0, metavar="D",
                        help="record speculative routing D layers ahead (record --speculate; 0: off)")
    parser.add_argument("--speculate-top", type=int, default=8, metavar="M")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM

    from moe_cache_env.traces.format import Trace, save_trace
    from moe_cache_env.traces.record import record_routing

    run_dir = Path(args.run_dir)
    run_record = json.loads((run_dir / "train_run.json").read_text())
    shape = run_record["model_shape"]
    args.name = args.name or f"tiny-olmoe-{shape['num_layers']}L-{shape['num_experts']}E"
    # The model's name in the traces' meta says where it comes from: this project, not a published checkpoint.
    args.model_name = f"moe-cache-env/{args.name}"
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model", dtype=dtype).to(device)

    with np.load(args.corpus, allow_pickle=False) as z:
        heldout = {d: z[f"{d}/heldout"] for d in DOMAINS}
    prefill_prompts = {d: heldout_prompts(s, args.prefill_per_domain, args.prompt_len) for d, s in heldout.items()}
    sequences, domains = interleave(prefill_prompts)
    decode_sequences, decode_domains = interleave({d: p[: args.decode_per_domain] for d, p in prefill_prompts.items()})

    expert_bytes = int(run_record["expert_bytes_bf16"])
    training = {
        "steps": run_record["steps_done"],
        "tokens_seen": run_record["tokens_seen"],
        "final_train_loss_nats_per_byte": round(run_record["final_train_loss"], 4),
        "final_heldout_loss_nats_per_byte": {k: round(v, 4) for k, v in run_record["final_heldout_loss"].items()},
        "seed": run_record["args"]["seed"],
        "hardware": run_record["hardware"].get("gpu", run_record["hardware"]["device"]),
    }
    source = (
        f"routing of a {shape['num_layers']}-layer, {shape['num_experts']}-expert top-{shape['top_k']} OLMoE-style "
        "byte-level LM trained from scratch on code, English prose and structured text (traces/learned/), "
        "recorded on held-out documents"
    )
    common = dict(expert_bytes=expert_bytes, model_name=args.model_name, source=source, device=device,
                  speculate=args.speculate, speculate_top=args.speculate_top)

    started = time.perf_counter()
    prefill = record_routing(model, sequences, max_new_tokens=0, domains=domains, **common)["prefill"]
    prefill_s = time.perf_counter() - started
    started = time.perf_counter()
    decode = record_routing(
        model, decode_sequences, max_new_tokens=args.max_new_tokens, domains=decode_domains, **common
    )["decode"]
    decode_s = time.perf_counter() - started
    print(f"recorded prefill in {prefill_s:.0f} s, decode in {decode_s:.0f} s", flush=True)

    out_dir = Path(args.out_dir)
    for phase, recorded in (("prefill", prefill), ("decode", decode)):
        meta = dict(recorded.meta, name=f"{args.name}-{phase}", training=training)
        trace = Trace(experts=recorded.experts, sequence=recorded.sequence, meta=meta, weights=recorded.weights,
                      speculative_experts=recorded.speculative_experts,
                      speculative_weights=recorded.speculative_weights)
        path = save_trace(trace, out_dir / f"{args.name}-{phase}.npz")
        card = build_card(
            trace, phase, run_record, args, path=path, record_seconds=prefill_s if phase == "prefill" else decode_s
        )
        tmp = out_dir / f".{args.name}-{phase}.card.json.tmp"
        tmp.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        tmp.replace(out_dir / f"{args.name}-{phase}.card.json")
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {trace.num_tokens} tokens, "
              f"{len(trace.sequence_bounds())} sequences", flush=True)
    return 0


def build_card(trace: Any, phase: str, run_record: dict[str, Any], args: argparse.Namespace, *, path: Path,
               record_seconds: float) -> dict[str, Any]:
    """The provenance card of one trace: what model, trained how, on what, recorded how, where and when."""
    counts: dict[str, int] = {}
    for d in trace.domains():
        counts[d] = counts.get(d, 0) + 1
    return {
        "trace": path.name,
        "sha256": _sha256(path),
        "phase": phase,
        "model": trace.meta["model"],
        "tokens": trace.num_tokens,
        "sequences": len(trace.sequence_bounds()),
        "sequences_per_domain": counts,
        "geometry": {
            "num_layers": trace.num_layers,
            "num_experts": trace.num_experts,
            "top_k": trace.top_k,
            "expert_bytes": trace.expert_bytes,
            "expert_bytes_note": "true bytes of one expert of this model in bf16 (gate, up, down projections)",
        },
        "recording": {
            "prompts": f"{args.prefill_per_domain} held-out windows per domain of {args.prompt_len} tokens (BOS "
            "included), starting at a line, domains interleaved",
            "decode": None if phase == "prefill" else (
                f"greedy, up to {args.max_new_tokens} new tokens after the first {args.decode_per_domain} prompts "
                "of each domain, stopping at end-of-sequence"
            ),
            "recorder": "moe_cache_env.traces.record.record_routing",
            "wall_s": round(record_seconds, 1),
            "date_utc": trace.meta["provenance"]["date_utc"],
            "dtype": trace.meta["provenance"]["dtype"],
        },
        "training": {
            "script": "traces/learned/train_moe.py",
            "arguments": run_record["args"],
            "model_config": {
                k: run_record["model_config"][k]
                for k in (
                    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_experts", "num_experts_per_tok", "norm_topk_prob",
                    "router_aux_loss_coef", "max_position_embeddings",
                )
                if k in run_record["model_config"]
            },
            "parameters": run_record["parameters"],
            "expert_parameters": run_record["expert_parameters"],
            "steps": run_record["steps_done"],
            "stopped_early_by_time_limit": run_record["stopped_early_by_time_limit"],
            "tokens_seen": run_record["tokens_seen"],
            "final_train_loss_nats_per_byte": run_record["final_train_loss"],
            "final_aux_loss": run_record["final_aux_loss"],
            "final_heldout_loss_nats_per_byte": run_record["final_heldout_loss"],
            "wall_s": run_record["wall_s"],
            "finished_utc": run_record["finished_utc"],
            "seed": run_record["args"]["seed"],
        },
        "data": {
            "script": "traces/learned/prepare_corpus.py",
            **run_record["corpus"],
        },
        "hardware": run_record["hardware"],
    }


if __name__ == "__main__":
    raise SystemExit(main())
