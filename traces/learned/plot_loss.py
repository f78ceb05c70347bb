"""Plot the training loss curve of the learned-routing MoE from ``loss.csv`` (written by train_moe.py).

Usage::

    python traces/learned/plot_loss.py traces/learned/loss.csv -o traces/learned/loss.png
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path


def read_loss_csv(path: Path) -> dict[str, list[float]]:
    """Columns of the loss CSV as float lists (empty cells become NaN)."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path} holds no rows; was the training run cut before its first log step?")
    return {key: [float(r[key]) if r[key] not in ("", None) else float("nan") for r in rows] for key in rows[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("loss_csv", type=Path)
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    # train_moe.py's load-balancing loss is Switch-normalised: 1 when perfectly balanced.
    parser.add_argument("--balanced-aux", type=float, default=1.0, help="the aux loss of a perfectly balanced router")
    parser.add_argument("--title", default="tiny-olmoe-12L-64E training (byte-level LM, 12 layers x 64 experts, top-8)")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = read_loss_csv(args.loss_csv)
    steps = cols["step"]
    fig, (ax_lm, ax_aux) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    ax_lm.plot(steps, cols["train_loss"], lw=0.8, color="0.6", label="train (mixed domains)")
    for key in (k for k in cols if k.startswith("heldout_")):
        points = [(s, v) for s, v in zip(steps, cols[key]) if v == v]  # NaN != NaN: skip rows without eval
        ax_lm.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=key.replace("_", " "))
    ax_lm.set_xlabel("optimizer step")
    ax_lm.set_ylabel("next-byte cross-entropy (nats)")
    ax_lm.set_ylim(bottom=0)
    ax_lm.grid(alpha=0.3)
    ax_lm.legend()
    ax_aux.plot(steps, cols["aux_loss"], lw=0.8, color="tab:red")
    ax_aux.axhline(args.balanced_aux, color="0.4", ls="--", lw=0.8, label=f"perfectly balanced ({args.balanced_aux:g})")
    ax_aux.set_xlabel("optimizer step")
    ax_aux.set_title("load-balancing loss (mean over layers)", fontsize=10)
    ax_aux.grid(alpha=0.3)
    ax_aux.legend()
    fig.suptitle(args.title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    tmp = args.output.with_suffix(".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(args.output)  # atomic
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
