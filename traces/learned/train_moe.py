"""Train a small OLMoE-style Mixture-of-Experts language model from random initialisation on the byte corpus.

The model is ``transformers``' ``OlmoeForCausalLM`` (softmax router, top-k without renormalisation) at a small
geometry: by default 12 layers of 64 experts, 8 routed per token. The router losses are OLMoE's (arXiv
2409.02060, section 2: load-balancing weight 0.01, router z-loss weight 0.001), computed per layer and averaged
over layers (:func:`router_losses`). transformers' own ``load_balancing_loss_func`` pools the assignments of
all layers before balancing them, which leaves each single layer free to be very unbalanced; a first run with
it gave per-layer skews up to 8 (docs/traces.md), so it is not used. Weights are bf16 for the forward and backward passes;
the optimizer keeps fp32 master copies (the usual mixed-precision recipe), so small updates are not lost to
bf16 rounding. Batches mix the three domains equally, each row a random window of one domain's train stream.

Writes into ``--out-dir``: ``model/`` (``save_pretrained``), ``loss.csv`` (train loss every ``log_every``
steps, held-out loss per domain every ``eval_every`` steps) and ``train_run.json`` (arguments, model config,
final losses, tokens seen, wall time, hardware and library versions).

Usage (tiny CPU smoke run, then the real one on a GPU)::

    python traces/learned/train_moe.py --corpus .dev/learned/corpus.npz --out-dir .dev/learned/run \\
        --preset tiny --steps 20
    python traces/learned/train_moe.py --corpus .dev/learned/corpus.npz --out-dir /tmp/run --steps 2000
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_corpus import BOS_ID, DOMAINS, EOS_ID, PAD_ID, VOCAB_SIZE  # noqa: E402


@dataclass
class ModelShape:
    """Geometry of the MoE model."""

    num_layers: int = 12
    num_experts: int = 64
    top_k: int = 8
    hidden_size: int = 512
    expert_hidden_size: int = 256  # OLMoE-1B-7B uses 1024 for a 2048-wide model: the same 1/2 ratio
    num_heads: int = 8
    max_positions: int = 1024


PRESETS: dict[str, ModelShape] = {
    "olmoe-12L-64E": ModelShape(),
    # For CPU smoke tests of this script and of the recorder: same structure, minutes become seconds.
    "tiny": ModelShape(num_layers=2, num_experts=8, top_k=2, hidden_size=64, expert_hidden_size=32, num_heads=4),
}


@dataclass
class TrainArgs:
    corpus: str
    """corpus .npz built by prepare_corpus.py"""
    out_dir: str
    """folder for the model, loss.csv and train_run.json"""
    preset: str = "olmoe-12L-64E"
    """model geometry, one of PRESETS"""
    steps: int = 2000
    """optimizer steps"""
    batch_size: int = 64
    """sequences per step (a multiple of the number of domains keeps the mix exact)"""
    seq_len: int = 512
    """tokens per training sequence, BOS included"""
    lr: float = 1.5e-3
    """peak learning rate"""
    min_lr_ratio: float = 0.1
    """cosine decay ends at lr * min_lr_ratio"""
    warmup_steps: int = 150
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    aux_loss_coef: float = 0.01
    """load-balancing loss weight; 0.01 as OLMoE"""
    z_loss_coef: float = 0.001
    """router z-loss weight; 0.001 as OLMoE"""
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200
    eval_windows: int = 16
    """held-out windows per domain for the eval loss"""
    device: str = "auto"
    time_limit_s: float = 0.0
    """stop early (and say so in train_run.json) once this much wall time has passed; 0 = no limit"""
    extra: dict[str, Any] = field(default_factory=dict)


def build_model(shape: ModelShape, aux_loss_coef: float, seed: int) -> torch.nn.Module:
    """An ``OlmoeForCausalLM`` with the byte vocabulary, initialised from ``seed``."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    config = OlmoeConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.expert_hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        num_experts=shape.num_experts,
        num_experts_per_tok=shape.top_k,
        max_position_embeddings=shape.max_positions,
        output_router_logits=True,
        router_aux_loss_coef=aux_loss_coef,
        norm_topk_prob=False,  # OLMoE's choice
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        tie_word_embeddings=False,
    )
    devices_rng = torch.random.fork_rng(devices=[])  # leave the caller's global RNG untouched
    with devices_rng:
        torch.manual_seed(seed)
        model = OlmoeForCausalLM(config)
    return model


def expert_bytes(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of one routed expert's weights (gate, up and down projections) at ``dtype``."""
    experts = model.model.layers[0].mlp.experts
    per_expert = (experts.gate_up_proj[0].numel() + experts.down_proj[0].numel())
    return int(per_expert * torch.finfo(dtype).bits // 8)


class WindowSampler:
    """Random windows of each domain's token stream, BOS-prefixed, drawn from one numpy Generator."""

    def __init__(self, streams: dict[str, np.ndarray], seq_len: int, rng: np.random.Generator) -> None:
        for name, stream in streams.items():
            if stream.size < seq_len:
                raise ValueError(f"domain {name!r} has {stream.size} tokens, fewer than seq_len={seq_len}")
        self.streams = streams
        self.seq_len = seq_len
        self.rng = rng
        self.names = list(streams)

    def batch(self, batch_size: int) -> np.ndarray:
        out = np.empty((batch_size, self.seq_len), dtype=np.int64)
        out[:, 0] = BOS_ID
        for row in range(batch_size):
            stream = self.streams[self.names[row % len(self.names)]]
            start = int(self.rng.integers(0, stream.size - self.seq_len + 1))
            out[row, 1:] = stream[start : start + self.seq_len - 1]
        return out


def fixed_windows(stream: np.ndarray, count: int, seq_len: int) -> np.ndarray:
    """``count`` evenly spaced BOS-prefixed windows of ``stream`` (the same every eval)."""
    starts = np.linspace(0, stream.size - seq_len, count).astype(np.int64)
    out = np.empty((count, seq_len), dtype=np.int64)
    out[:, 0] = BOS_ID
    for i, s in enumerate(starts):
        out[i, 1:] = stream[s : s + seq_len - 1]
    return out


def router_losses(router_logits: tuple[torch.Tensor, ...], top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-layer Switch load-balancing loss and router z-loss, each averaged over layers.

    For one layer with assignment fractions ``f_e`` (share of the layer's top-k assignments that go to expert
    ``e``; the ``f_e`` sum to 1) and mean router probabilities ``P_e``, the balancing loss is
    ``E * sum_e f_e P_e``: 1 when perfectly balanced, the normalisation of Switch Transformer (arXiv 2101.03961,
    eq. 4) and of the MegaBlocks code OLMoE was trained with. (transformers' version lets ``f_e`` sum to ``k``,
    which multiplies the loss, and so the effective weight, by ``k``.) The z-loss is the mean squared
    log-sum-exp of the logits (ST-MoE, arXiv 2202.08906). Also returns the mean over layers of the busiest expert's load over the
    uniform load (the popularity skew of the training batch), for the log.
    """
    balance, z, skew = [], [], []
    for logits in router_logits:
        logits = logits.float()
        probs = torch.softmax(logits, dim=-1)
        num_experts = probs.shape[-1]
        chosen = torch.topk(probs, top_k, dim=-1).indices
        fractions = torch.zeros_like(probs).scatter_(1, chosen, 1.0).mean(dim=0) / top_k
        balance.append(num_experts * (fractions * probs.mean(dim=0)).sum())
        z.append(torch.logsumexp(logits, dim=-1).square().mean())
        skew.append(fractions.detach().max() * num_experts)
    return torch.stack(balance).mean(), torch.stack(z).mean(), torch.stack(skew).mean()


def lr_at(step: int, args: TrainArgs) -> float:
    """Linear warm-up, then cosine decay to ``lr * min_lr_ratio``."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return args.lr * (args.min_lr_ratio + (1.0 - args.min_lr_ratio) * cosine)


def hardware_info(device: torch.device) -> dict[str, Any]:
    """What ran the training: read from the machine, for the provenance card."""
    import transformers

    info: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
        )
    return info


@torch.no_grad()
def eval_losses(model: torch.nn.Module, windows: dict[str, torch.Tensor]) -> dict[str, float]:
    """Held-out next-byte cross-entropy (nats per byte) per domain, without the aux loss."""
    model.eval()
    out = {}
    for name, batch in windows.items():
        logits = model(input_ids=batch, output_router_logits=False).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        out[name] = float(loss)
    model.train()
    return out


def train(args: TrainArgs) -> dict[str, Any]:
    """Run the training; returns the run record that is also written to ``train_run.json``."""
    if args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; choose one of {sorted(PRESETS)}")
    if args.steps < 1 or args.batch_size < 1 or args.seq_len < 8:
        raise ValueError("steps and batch_size must be >= 1 and seq_len >= 8")
    shape = PRESETS[args.preset]
    if args.seq_len > shape.max_positions:
        raise ValueError(f"seq_len={args.seq_len} exceeds the model's max_positions={shape.max_positions}")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    corpus_path = Path(args.corpus)
    if not corpus_path.exists():
        raise FileNotFoundError(f"corpus {corpus_path} not found; build it with prepare_corpus.py")
    with np.load(corpus_path, allow_pickle=False) as z:
        train_streams = {d: z[f"{d}/train"] for d in DOMAINS}
        heldout_streams = {d: z[f"{d}/heldout"] for d in DOMAINS}
        corpus_manifest = json.loads(str(z["manifest"]))

    rng = np.random.default_rng(args.seed)
    sampler = WindowSampler(train_streams, args.seq_len, rng)
    eval_windows = {
        d: torch.from_numpy(fixed_windows(s, args.eval_windows, args.seq_len)).to(device)
        for d, s in heldout_streams.items()
    }

    model = build_model(shape, args.aux_loss_coef, args.seed)
    use_bf16 = device.type == "cuda"
    # transformers' default experts implementation (grouped_mm) runs a layer's experts as one kernel.
    model.to(device=device, dtype=torch.bfloat16 if use_bf16 else torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    master = [p.detach().float().clone().requires_grad_(True) for p in params]
    # Weight decay on matrices only (embeddings, projections, routers), not on the norms' gains.
    decay = [m for p, m in zip(params, master) if p.ndim >= 2]
    no_decay = [m for p, m in zip(params, master) if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=device.type == "cuda",
    )

    n_params = sum(p.numel() for p in params)
    n_expert_params = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    print(
        f"device {device}; {n_params / 1e6:.1f} M parameters ({n_expert_params / 1e6:.1f} M in experts); "
        f"{args.steps} steps of {args.batch_size}x{args.seq_len} tokens",
        flush=True,
    )

    loss_path = out_dir / "loss.csv"
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    model.train()
    stopped_early = False
    last_train = {"loss": float("nan"), "aux": float("nan"), "z": float("nan")}
    steps_done = 0
    for step in range(args.steps):
        if args.time_limit_s and time.perf_counter() - start > args.time_limit_s:
            stopped_early = True
            break
        lr = lr_at(step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = torch.from_numpy(sampler.batch(args.batch_size)).to(device, non_blocking=True)
        out = model(input_ids=batch, output_router_logits=True)
        lm_loss = torch.nn.functional.cross_entropy(
            out.logits[:, :-1].float().reshape(-1, out.logits.size(-1)), batch[:, 1:].reshape(-1)
        )
        balance_loss, z_loss, batch_skew = router_losses(out.router_logits, shape.top_k)
        (lm_loss + args.aux_loss_coef * balance_loss + args.z_loss_coef * z_loss).backward()
        for p, m in zip(params, master):
            m.grad = p.grad.float() if p.grad is not None else torch.zeros_like(m)
            p.grad = None
        grad_norm = torch.nn.utils.clip_grad_norm_(master, args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_copy_(params, master)
        steps_done = step + 1

        if steps_done % args.log_every == 0 or steps_done == args.steps:
            last_train = {"loss": float(lm_loss.detach()), "aux": float(balance_loss.detach()), "z": float(z_loss.detach())}
            row: dict[str, Any] = {
                "step": steps_done,
                "tokens": steps_done * args.batch_size * args.seq_len,
                "lr": lr,
                "train_loss": round(last_train["loss"], 5),
                "aux_loss": round(last_train["aux"], 5),
                "z_loss": round(last_train["z"], 5),
                "batch_skew": round(float(batch_skew), 4),
                "grad_norm": round(float(grad_norm), 4),
                "elapsed_s": round(time.perf_counter() - start, 1),
            }
            if steps_done % args.eval_every == 0 or steps_done == args.steps:
                for d, v in eval_losses(model, eval_windows).items():
                    row[f"heldout_{d}"] = round(v, 5)
                print(json.dumps(row), flush=True)
            rows.append(row)
    wall_s = time.perf_counter() - start
    final_eval = eval_losses(model, eval_windows)
    if rows and f"heldout_{DOMAINS[0]}" not in rows[-1]:
        rows[-1].update({f"heldout_{d}": round(v, 5) for d, v in final_eval.items()})

    fieldnames = ["step", "tokens", "lr", "train_loss", "aux_loss", "z_loss", "batch_skew", "grad_norm", "elapsed_s"]
    fieldnames += [f"heldout_{d}" for d in DOMAINS]
    tmp = loss_path.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(loss_path)

    model.save_pretrained(out_dir / "model")
    record = {
        "args": dataclasses.asdict(args),
        "model_shape": dataclasses.asdict(shape),
        "model_config": model.config.to_dict(),
        "parameters": n_params,
        "expert_parameters": n_expert_params,
        "expert_bytes_bf16": expert_bytes(model),
        "experts_implementation": getattr(model.config, "_experts_implementation", None),
        "steps_done": steps_done,
        "stopped_early_by_time_limit": stopped_early,
        "tokens_seen": steps_done * args.batch_size * args.seq_len,
        "final_train_loss": last_train["loss"],
        "final_aux_loss": last_train["aux"],
        "final_z_loss": last_train["z"],
        "final_heldout_loss": final_eval,
        "wall_s": round(wall_s, 1),
        "hardware": hardware_info(device),
        "corpus": {
            "path": corpus_path.name,
            "domains": {
                d: {s: {k: v for k, v in info.items() if k != "files"} for s, info in corpus_manifest["domains"][d].items()}
                for d in DOMAINS
            },
            "settings": corpus_manifest["settings"],
        },
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tmp = out_dir / "train_run.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(out_dir / "train_run.json")
    print(f"done: {steps_done} steps in {wall_s:.0f} s; held-out loss {final_eval}", flush=True)
    return record


def parse_args(argv: list[str] | None = None) -> TrainArgs:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(TrainArgs):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True, type=str)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)
    return TrainArgs(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    train(parse_args())
