"""Learned eviction: imitate Belady's choices (behaviour cloning, then DAgger) with a small MLP.

Each decision of the demand-only cache (``sim/evict.py``) offers its candidates, each described by the features
of ``MoECache-Evict-v0``'s slot rows (``sim/evict_kernel.F_*``, causal statistics only); Belady's choice is the
label. The MLP scores every candidate, and the loss is the cross-entropy of a softmax over the decision's
candidates against Belady's choices (every candidate tied at the farthest next use; a listwise imitation loss:
only the ranking within a decision matters).

- :func:`collect` replays traces under a rule (``lru`` for the first round, the learned rule for DAgger rounds)
  and records decisions with Belady's labels;
- :func:`fit_mlp` trains on recorded decisions (torch, CPU; deterministic for a seed: its own generator, no
  global RNG);
- :func:`train_dagger` runs rounds of collect and fit, aggregating the data, and returns an
  :class:`~moe_cache_env.sim.evict.EvictionModel` with its measured decision time.

Needs torch (the ``rl`` or ``record`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from moe_cache_env.sim import evict_kernel as EK
from moe_cache_env.sim.config import SimConfig
from moe_cache_env.sim.evict import EvictionModel, EvictionReplay, measure_decision_ms
from moe_cache_env.traces.format import Trace


@dataclass(frozen=True)
class Decisions:
    """Recorded decisions: candidate rows ``x`` (n, F) float32, ``label`` (n,) 1.0 for Belady's choices,
    ``group`` (n,) int64 the decision of each row (ascending; every group has at least one label)."""

    x: np.ndarray
    label: np.ndarray
    group: np.ndarray

    @property
    def num_decisions(self) -> int:
        return int(len(np.unique(self.group)))

    @staticmethod
    def concat(parts: Sequence["Decisions"]) -> "Decisions":
        xs, ys, gs = [], [], []
        offset = 0
        for p in parts:
            if len(p.group) == 0:
                continue
            _, g = np.unique(p.group, return_inverse=True)
            xs.append(p.x)
            ys.append(p.label)
            gs.append(g + offset)
            offset += int(g.max()) + 1
        if not xs:
            return Decisions(np.zeros((0, EK.NUM_MODEL_FEATURES), np.float32), np.zeros(0, np.float32),
                             np.zeros(0, np.int64))
        return Decisions(np.concatenate(xs), np.concatenate(ys), np.concatenate(gs))


def belady_labels(next_use: np.ndarray, group: np.ndarray) -> Decisions:
    """1.0 for every candidate of a decision whose next use is the decision's farthest (Belady's choices: keys
    tied at the farthest use, e.g. never needed again, are all optimal), else 0.0."""
    if len(group) == 0:
        return np.zeros(0, dtype=np.float32)
    far = np.full(int(group.max()) + 1, -np.inf)
    np.maximum.at(far, group, next_use)
    return (next_use == far[group]).astype(np.float32)


def _complete_groups(x: np.ndarray, next_use: np.ndarray, group: np.ndarray) -> Decisions:
    """Label the recorded rows (:func:`belady_labels`); drop decisions with fewer than two rows (one cut short by
    a full buffer)."""
    if len(group) == 0:
        return Decisions.concat([])
    sizes = np.bincount(group)
    keep = sizes[group] >= 2
    return Decisions(x[keep], belady_labels(next_use[keep], group[keep]), group[keep])


def collect(trace: Trace, config: SimConfig, *, seed: int, policy: str = "lru", model: EvictionModel | None = None,
            max_decisions: int = 20_000) -> Decisions:
    """Replay ``trace`` under ``policy`` and record about ``max_decisions`` decisions, spread evenly over the
    replay, with Belady's choice as label."""
    probe = EvictionReplay(trace, config, seed=seed, policy="lru")
    probe.run_all()
    total = max(probe.decisions, 1)
    every = max(1, int(np.ceil(total / max_decisions)))
    rows = int(probe.max_slots) * (total // every + 1)
    replay = EvictionReplay(trace, config, seed=seed, policy=policy, model=model, record_rows=rows,
                            record_every=every)
    replay.run_all()
    return _complete_groups(*replay.recorded())


def fit_mlp(data: Decisions, *, seed: int, hidden: tuple[int, int] = (32, 16), epochs: int = 6,
            batch_decisions: int = 256, lr: float = 3e-3, threads: int = 1,
            log: Callable[[str], None] | None = None) -> EvictionModel:
    """Train the listwise MLP on ``data``; returns the model (``decision_ms`` 0: see :func:`train_dagger`)."""
    import torch

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(int(seed))
    rng = np.random.default_rng(seed)
    x = data.x.astype(np.float64)
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    sd = np.where(sd > 1e-6, sd, 1.0)
    X = torch.tensor(((x - mu) / sd).astype(np.float32))
    Y = torch.tensor(data.label)
    G = torch.tensor(data.group)
    F = X.shape[1]
    H1, H2 = hidden

    def init(fan_in: int, shape: tuple[int, ...]) -> torch.Tensor:
        return (torch.randn(shape, generator=gen) * np.sqrt(2.0 / fan_in)).requires_grad_()

    params = [init(F, (F, H1)), torch.zeros(H1, requires_grad=True), init(H1, (H1, H2)),
              torch.zeros(H2, requires_grad=True), init(H2, (H2,)), torch.zeros(1, requires_grad=True)]
    opt = torch.optim.Adam(params, lr=lr)
    # rows are grouped by decision (ascending): a batch is a run of whole decisions
    starts = np.flatnonzero(np.r_[True, data.group[1:] != data.group[:-1]])
    bounds = np.r_[starts, len(data.group)]
    n_dec = len(starts)
    chunks = [(int(bounds[i]), int(bounds[min(i + batch_decisions, n_dec)])) for i in range(0, n_dec, batch_decisions)]

    def scores(xb: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2, w3, b3 = params
        h = torch.relu(xb @ w1 + b1)
        h = torch.relu(h @ w2 + b2)
        return h @ w3 + b3

    for epoch in range(epochs):
        total = 0.0
        for ci in rng.permutation(len(chunks)):
            a, b = chunks[ci]
            s = scores(X[a:b])
            g = G[a:b] - G[a]
            ng = int(g[-1]) + 1
            pos = Y[a:b] == 1.0
            # -log of the softmax mass on Belady's choices, per decision
            loss = (_group_lse(s, g, ng) - _group_lse(torch.where(pos, s, torch.full_like(s, -1e4)), g, ng)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * (b - a)
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: listwise loss {total / len(data.group):.4f}")
    w1, b1, w2, b2, w3, b3 = (p.detach().numpy().astype(np.float64) for p in params)
    return EvictionModel(mu=mu, sd=sd, w1=w1, b1=b1, w2=w2, b2=b2, w3=w3, b3=b3)


def _group_lse(s, g, ng: int):
    """logsumexp of ``s`` within each group ``g`` (0..ng-1)."""
    import torch

    gmax = torch.full((ng,), -1e30).scatter_reduce(0, g, s.detach(), reduce="amax", include_self=True)
    return gmax + torch.log(torch.zeros(ng).index_add(0, g, torch.exp(s - gmax[g])))


def agreement(model: EvictionModel, data: Decisions) -> float:
    """Share of ``data``'s decisions where the model's top candidate is one of Belady's choices."""
    x = data.x.astype(np.float64)
    out = np.zeros(len(x))
    feats = np.zeros((len(x), EK.NUM_FEATURES))
    feats[:, : EK.NUM_MODEL_FEATURES] = x
    EK.mlp_scores(feats, len(x), model.mu, model.sd, model.w1, model.b1, model.w2, model.b2, model.w3, model.b3,
                  out)
    order = np.lexsort((-out, data.group))
    first = np.r_[True, data.group[order][1:] != data.group[order][:-1]]
    return float(data.label[order][first].mean()) if len(out) else 0.0


def train_dagger(train: Sequence[tuple[Trace, SimConfig]], *, seed: int, rounds: int = 2,
                 decisions_per_replay: int = 15_000, epochs: int = 6, hidden: tuple[int, int] = (32, 16),
                 log: Callable[[str], None] | None = None, meta: dict[str, Any] | None = None) -> EvictionModel:
    """Behaviour cloning on decisions met under LRU (round 1), then ``rounds - 1`` DAgger rounds: replay under
    the current model, label its decisions with Belady's choice, aggregate, refit. Each (trace, config) is
    replayed with the workload schedule of ``seed``. Returns the last model with its decision time measured
    on a pool of the largest slot count seen."""
    parts: list[Decisions] = []
    model: EvictionModel | None = None
    slots = 2
    for r in range(rounds):
        for trace, config in train:
            policy = "lru" if model is None else "learned"
            parts.append(collect(trace, config, seed=seed, policy=policy, model=model,
                                 max_decisions=decisions_per_replay))
            slots = max(slots, config.cache.total_slots if config.cache is not None else 2)
        data = Decisions.concat(parts)
        if log is not None:
            log(f"round {r + 1}/{rounds}: {data.num_decisions} decisions, {len(data.group)} candidate rows")
        model = fit_mlp(data, seed=seed + 1000 * r, hidden=hidden, epochs=epochs, log=log)
        if log is not None:
            log(f"round {r + 1}: agreement with Belady on the aggregated data {agreement(model, data):.3f}")
    assert model is not None
    decision_ms = measure_decision_ms(model, slots)
    info = dict(meta or {})
    info.update({"rounds": rounds, "seed": seed, "decisions": data.num_decisions, "hidden": list(hidden),
                 "epochs": epochs, "decision_slots": slots})
    return EvictionModel(mu=model.mu, sd=model.sd, w1=model.w1, b1=model.b1, w2=model.w2, b2=model.b2,
                         w3=model.w3, b3=model.b3, decision_ms=decision_ms, meta=info)
