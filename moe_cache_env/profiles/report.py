"""Text reports on profiles: the list, one profile in detail, a calibration summary, the per-model comparison.

All tables are Markdown pipe tables, readable in a terminal and pasteable into the docs.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from moe_cache_env.profiles.profile import HardwareProfile, compute_affine_fit, load_profile
from moe_cache_env.profiles.shapes import MODEL_EXPERT_SHAPES

MIB = 2**20

#: Expert size of the synthetic trace presets for qwen1.5-moe: the seed's "28 MB" expert
#: (shared/design/seed-system.md), read as MiB; compared beside the real shapes.
SEED_EXPERT_BYTES = 28 * MIB


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown pipe table with columns padded to equal width."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.0f}"
    return str(value)


def _device_name(profile: HardwareProfile) -> str:
    device = profile.raw.get("device")
    return str(device.get("name", "-")) if isinstance(device, Mapping) else "-"


def list_rows(profiles: Sequence[HardwareProfile]) -> list[dict[str, Any]]:
    """One summary record per profile (what ``moe-cache-env profiles`` prints)."""
    rows = []
    for p in profiles:
        rows.append(
            {
                "name": p.name,
                "device": _device_name(p),
                "h2d_gbps": p.h2d_gbps,
                "h2d_overhead_ms": p.h2d_overhead_ms,
                "compute_expert_bytes": p.compute_expert_bytes,
                "compute_1_token_ms": p.expert_compute_ms(1, p.compute_expert_bytes),
                "compute_max_tokens": p.compute_tokens[-1],
                "compute_max_tokens_ms": p.compute_ms[-1],
            }
        )
    return rows


def format_list(profiles: Sequence[HardwareProfile]) -> str:
    headers = ["name", "device", "h2d GB/s", "h2d overhead ms", "expert MiB", "compute ms (1 tok)", "compute ms (max tok)"]
    body = [
        [r["name"], r["device"], r["h2d_gbps"], r["h2d_overhead_ms"], r["compute_expert_bytes"] / MIB,
         r["compute_1_token_ms"], f"{r['compute_max_tokens_ms']:.4g} ({r['compute_max_tokens']:.0f} tok)"]
        for r in list_rows(profiles)
    ]
    return format_table(headers, body)


def compare_rows(profiles: Sequence[HardwareProfile], dtype_bytes: int = 2) -> list[dict[str, Any]]:
    """Per model preset and profile: one expert's host-to-GPU time, its compute at 1 token, and their ratio.

    Expert bytes are the real bf16 bytes of each preset's shape, plus the seed's 28 MiB expert that the
    synthetic qwen1.5-moe traces use. Compute is scaled from each profile's reference expert by bytes.
    """
    experts: list[tuple[str, int]] = [
        (f"{model} ({shape.hidden}x{shape.intermediate})", shape.params * dtype_bytes)
        for model, shape in MODEL_EXPERT_SHAPES.items()
    ]
    experts.append(("seed expert (28 MiB)", SEED_EXPERT_BYTES))
    rows = []
    for label, nbytes in experts:
        model = label.split(" ")[0]
        for p in profiles:
            transfer = p.transfer_ms(nbytes)
            compute = p.expert_compute_ms(1, nbytes)
            rows.append(
                {
                    "expert": label,
                    "expert_bytes": nbytes,
                    "profile": p.name,
                    "transfer_ms": transfer,
                    "compute_1_token_ms": compute,
                    "transfer_over_compute": transfer / compute,
                    "measured_compute_1_token_ms": _measured_compute_ms(p, model, nbytes, tokens=1),
                }
            )
    return rows


def _measured_compute_ms(profile: HardwareProfile, model: str, nbytes: int, tokens: int) -> float | None:
    """This expert's compute time as measured directly on the profile's GPU, if its checks recorded it.

    ``experiments/compute_scaling_check.py --record-as compute_scaling`` times every preset's own shape; the
    table shows it beside the byte-scaled value the simulator uses.
    """
    scaling = profile.raw.get("compute_scaling")
    if not isinstance(scaling, Mapping):
        checks = profile.raw.get("checks")
        scaling = checks.get("compute_scaling") if isinstance(checks, Mapping) else None
    if not isinstance(scaling, Mapping):
        return None
    for row in scaling.get("rows", []):
        if row.get("model") == model and row.get("expert_bytes") == nbytes and row.get("tokens") == tokens:
            return float(row["measured_ms"])
    return None


def format_compare(profiles: Sequence[HardwareProfile]) -> str:
    headers = ["expert (bf16)", "MiB", "profile", "h2d ms", "compute ms (1 tok)", "h2d / compute",
               "compute ms measured for this shape"]
    body = [
        [r["expert"], r["expert_bytes"] / MIB, r["profile"], r["transfer_ms"], r["compute_1_token_ms"],
         r["transfer_over_compute"], r["measured_compute_1_token_ms"]]
        for r in compare_rows(profiles)
    ]
    return format_table(headers, body)


def compute_affine_rows(profile: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per token count, ``fixed_ms + bytes / bandwidth`` fitted to the compute of every preset's own shape.

    Uses ``checks.compute_scaling`` (``experiments/compute_scaling_check.py``); empty if the profile has none.
    A fixed cost per expert call plus a weight-read term describes small and large experts alike, where
    scaling one reference expert by bytes does not.
    """
    return compute_affine_fit(profile)


def format_calibration(profile: Mapping[str, Any]) -> str:
    """The measured sections of a profile written by ``calibrate``, as tables."""
    out: list[str] = []
    device = profile.get("device", {})
    out.append(
        f"profile {profile['name']}: {device.get('name', '-')} (driver {device.get('driver', '-')}, "
        f"CUDA {device.get('cuda_runtime', '-')}, torch {device.get('torch', '-')})"
    )
    fits = profile.get("fits") or {
        "h2d": {"overhead_ms": profile["h2d_overhead_ms"], "gbps": profile["h2d_gbps"], **profile.get("h2d_fit", {})}
    }
    order = ["h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"]
    fits = dict(sorted(fits.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    if fits:
        out.append("\ntransfer fits: time = overhead + bytes / bandwidth")
        out.append(
            format_table(
                ["copy", "overhead ms", "GB/s", "rms residual ms", "max rel error", "points"],
                [[k, f.get("overhead_ms"), f.get("gbps"), f.get("residual_ms"), f.get("max_rel_error"),
                  len(f.get("points", []))] for k, f in fits.items()],
            )
        )
    measurements = profile.get("measurements")
    if measurements:
        sweep = {}
        for t in measurements["transfers"]:
            sweep.setdefault(t["bytes"], {})[f"{t['direction']}_{t['memory']}"] = t
        keys = [k for k in ("h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable") if k in fits]
        out.append("\ncopy sweep: median ms [p10, p90]")
        out.append(
            format_table(
                ["MiB", *keys],
                [[nbytes / MIB, *(_spread(points.get(k)) for k in keys)] for nbytes, points in sorted(sweep.items())],
            )
        )
    if profile.get("experts"):
        out.append("\nexperts, host to GPU: separate copies vs one contiguous block (median ms; fit's prediction)")
        out.append(
            format_table(
                ["memory", "experts", "separate ms", "block ms", "separate / block", "fit separate", "fit block"],
                [[e["memory"], e["experts"], e.get("separate_ms"), e.get("block_ms"), e.get("block_speedup"),
                  e.get("fit_separate_ms"), e.get("fit_block_ms")] for e in profile["experts"]],
            )
        )
    detail = profile.get("compute_detail")
    compute = profile["compute"]
    out.append(f"\nexpert compute, {compute['expert_bytes'] / MIB:.2f} MiB expert" + (
        f" ({detail['hidden']}x{detail['intermediate']} {detail['dtype']}): graph-replayed median ms [p10, p90]; "
        "eager = one call from Python" if detail else ""
    ))
    if detail:
        rows = [[int(t), f"{m:.4g} [{lo:.4g}, {hi:.4g}]", e] for t, m, lo, hi, e in zip(
            compute["tokens"], compute["ms"], detail["graph_p10_ms"], detail["graph_p90_ms"], detail["eager_ms"])]
        out.append(format_table(["tokens", "graph ms", "eager ms"], rows))
        check = detail.get("check", {})
        out.append(
            f"check vs float64 reference ({check.get('tokens')} tokens): relative error eager "
            f"{check.get('eager_rel_error', float('nan')):.2e}, graph {check.get('graph_rel_error', float('nan')):.2e}"
        )
    else:
        out.append(format_table(["tokens", "ms"], zip((int(t) for t in compute["tokens"]), compute["ms"])))
    if profile.get("device_copy"):
        d = profile["device_copy"]
        out.append(f"\nGPU-to-GPU copy of one expert ({d['kind']}): {d['median_ms']:.4g} ms, {d['gbps']:.4g} GB/s")
    if profile.get("overlap"):
        o = profile["overlap"]
        out.append(
            f"\nside-stream copy of {o['copy_bytes'] / MIB:.1f} MiB (pinned) during {o['expert_calls']} expert calls of "
            f"{o['tokens']} tokens: copy alone {o['copy_alone_ms']:.4g} ms, compute alone {o['compute_alone_ms']:.4g} ms, "
            f"together {o['total_concurrent_ms']:.4g} ms; overlap {o['overlap_fraction']:.0%}, compute slowed by "
            f"{o['compute_slowdown']:+.1%}, copy slowed by {o['copy_slowdown']:+.1%}"
        )
    seed_expert_ms = profile["h2d_overhead_ms"] + SEED_EXPERT_BYTES / (profile["h2d_gbps"] * 1e6)
    out.append(f"\nh2d time of one 28 MiB expert by the profile's line: {seed_expert_ms:.4g} ms")
    affine = compute_affine_rows(profile)
    if affine:
        out.append("\ncompute of each preset's own expert shape (compute_scaling), fitted as fixed + bytes / bandwidth")
        out.append(format_table(
            ["tokens", "fixed ms", "weight GB/s", "max rel error", "points"],
            [[r["tokens"], r["fixed_ms"], r["weight_gbps"], r["max_rel_error"], r["points"]] for r in affine],
        ))
    table = profile.get("non_expert")
    if table:
        out.append(
            f"\nnon-expert time per layer, {table.get('model')} geometry (attention, router, norms, shared experts; "
            f"graph-replayed device time, median ms); layer_overhead_ms = batch {table['default_batch']}, "
            f"context {table['default_context']}: {table['default_ms']:.4g} ms"
        )
        out.append(format_table(
            ["batch", "context", "ms [p10, p90]", "attention", "router", "shared expert", "eager ms"],
            [[r["batch"], r["context"], f"{r['ms']:.4g} [{r['p10_ms']:.4g}, {r['p90_ms']:.4g}]", r.get("attention_ms"),
              r.get("router_ms"), r.get("shared_expert_ms"), r.get("eager_ms")] for r in table["rows"]],
        ))
    host = profile.get("host")
    if host:
        out.append(
            f"\nhost cost per layer ({host.get('model')}, batch {host['batch']}, {host['top_k']} resident experts, "
            f"{host['layers']} layers, replayed by replay-gpu's engine): {host['synced_ms']:.4g} ms per layer; "
            f"launch {host['expert_launch_ms']:.4g} ms per expert, {host['layer_launch_ms']:.4g} ms per non-expert "
            f"graph; a host that only launches would take {host['model_without_decision_ms']:.4g} ms -> "
            f"host_decision_ms = {host['decision_ms']:.4g} ms (router sync, .cpu(), bookkeeping)"
        )
        excess = host["model_without_decision_ms"] - host["synced_ms"]
        if excess > 0:
            # the fit clamps the decision cost at 0; say so, since the profile then times resident layers too slow
            out.append(
                f"warning: the launch model alone already exceeds the measured layer by {excess:.4g} ms "
                f"({excess / host['synced_ms']:+.0%}), so host_decision_ms is clamped to 0 and this profile times an "
                "all-resident layer slower than the engine ran it (the per-expert launch cost, the slope between "
                f"{host['top_k']} and {host.get('double_top_k', 2 * host['top_k'])} experts, overstates the cost "
                f"at {host['top_k']})"
            )
    checks = profile.get("checks") or {}
    for key, check in sorted(checks.items()):
        if isinstance(check, Mapping) and "event_median_ms" in check:
            out.append(
                f"check {key}: measured {check['event_median_ms']:.4g} ms on {check.get('device', '-')} "
                f"({check.get('created_utc', 'undated')}), predicted {check['predicted_ms']:.4g} ms, "
                f"error {check['rel_error']:+.1%}"
            )
    return "\n".join(out)


def _spread(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "-"
    return f"{entry['median_ms']:.4g} [{entry['p10_ms']:.4g}, {entry['p90_ms']:.4g}]"


def load_profiles(names: Iterable[str]) -> list[HardwareProfile]:
    return [load_profile(n) for n in names]
