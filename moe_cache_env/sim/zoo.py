"""What the policy zoo fits before a replay (``docs/policies.md``).

- :func:`key_frequencies`: each (layer, expert)'s share of a fit trace's routing, the ranking a static hot set is
  chosen from (kTransformers' GPU experts);
- :func:`lru_miss_curves` and :func:`allocate_layer_slots`: each layer's LRU misses as a function of its slots
  on a fit trace, and the split of a global slot budget across layers that minimises their sum (AdapMoE's
  allocation, by dynamic programming); :func:`layer_caps` applies it to every step of a schedule;
- :func:`routing_weights`: the gate weight of each token's choices, normalised per token and layer (HybriMoE's
  MRS score reads them; a trace without weights gives each choice 1 / top_k);
- :class:`ActivationMatrixPredictor`: MoE-Infinity's activation-aware prediction: each sequence's expert
  activation matrix (layers x experts, the share of its tokens routed to each expert) is matched by cosine
  similarity against the matrices recorded on a fit trace, and the best match's row of the target layer is the
  confidence of each expert.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from moe_cache_env.sim.plugins import Predictor
from moe_cache_env.sim.schedule import Schedule
from moe_cache_env.traces.format import Trace

#: the predictor name the activation-aware policy registers (``plugins.register_predictor``)
ACTIVATION_PREDICTOR = "activation-matrix"
#: at most this many recorded activation matrices are kept (evenly spaced over the fit trace's sequences)
MAX_RECORDED = 512


def key_frequencies(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """(L*E,) how many tokens of ``experts`` (T, L, K) chose each key ``layer * E + expert``, as float64."""
    T, L, K = experts.shape
    keys = (np.arange(L, dtype=np.int64)[None, :, None] * num_experts + experts.astype(np.int64)).ravel()
    return np.bincount(keys, minlength=L * num_experts).astype(np.float64)


@njit(cache=True)
def _lru_positions(experts, num_experts, out_hist):
    """For every token and layer, each chosen expert's position in its layer's LRU order before the token (0 =
    most recent; ties within a token: the higher expert is more recent, as the kernel evicts the lower key
    first); never-seen experts count at position E. ``out_hist[l, p]`` counts requests at position p."""
    T, L, K = experts.shape
    E = num_experts
    last = np.full((L, E), -1, dtype=np.int64)
    for t in range(T):
        for l in range(L):
            for k in range(K):
                e = experts[t, l, k]
                dup = False
                for j in range(k):
                    if experts[t, l, j] == e:
                        dup = True
                if dup:
                    continue
                if last[l, e] < 0:
                    out_hist[l, E] += 1
                    continue
                pos = 0
                for f in range(E):
                    if last[l, f] > last[l, e] or (last[l, f] == last[l, e] and f > e):
                        pos += 1
                out_hist[l, pos] += 1
            for k in range(K):
                last[l, experts[t, l, k]] = t


def lru_miss_curves(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """(L, E + 1) misses of a per-layer demand-only LRU cache of c slots (column c) replaying ``experts``
    (T, L, K) one token per step. LRU is a stack algorithm (a cache of c slots holds the c most recently used
    experts), so one pass gives every capacity: a request misses at c slots iff its position is >= c."""
    L, E = experts.shape[1], num_experts
    hist = np.zeros((L, E + 1), dtype=np.int64)
    _lru_positions(np.ascontiguousarray(experts, dtype=np.int64), E, hist)
    # misses(c) = requests at positions >= c
    return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1].astype(np.float64)


def allocate_layer_slots(curves: np.ndarray, budget: int, min_slots: int, max_slots: int) -> np.ndarray:
    """(L,) slots per layer, each in [min_slots, max_slots], summing to ``budget``, minimising the total misses
    ``sum_l curves[l, c_l]``: the exact optimum by dynamic programming over layers (O(L * budget * E)); ties go
    to the allocation closest to the front layers' uniform share (the DP keeps the first optimum it meets)."""
    L = curves.shape[0]
    lo, hi = int(min_slots), int(max_slots)
    if not lo * L <= budget <= hi * L:
        raise ValueError(f"a budget of {budget} slots cannot give each of {L} layers between {lo} and {hi}")
    inf = np.inf
    # best[b]: least misses of the layers so far using b slots; choice[l, b]: slots of layer l at that optimum
    best = np.full(budget + 1, inf)
    best[0] = 0.0
    choice = np.zeros((L, budget + 1), dtype=np.int64)
    for layer in range(L):
        new = np.full(budget + 1, inf)
        pick = np.zeros(budget + 1, dtype=np.int64)
        for c in range(lo, hi + 1):
            cand = np.full(budget + 1, inf)
            cand[c:] = best[: budget + 1 - c] + curves[layer, c]
            better = cand < new
            new[better] = cand[better]
            pick[better] = c
        best = new
        choice[layer] = pick
    slots = np.zeros(L, dtype=np.int64)
    b = budget
    for layer in range(L - 1, -1, -1):
        slots[layer] = choice[layer, b]
        b -= slots[layer]
    return slots


def layer_caps(schedule_caps: np.ndarray, curves: np.ndarray, min_slots: int, max_slots: int) -> np.ndarray:
    """(S, L) each layer's slots at each step: the global budget of a step (``schedule_caps`` (S,) slots per
    layer times L; the KV cache may shrink it) allocated by :func:`allocate_layer_slots`."""
    L = curves.shape[0]
    out = np.zeros((schedule_caps.shape[0], L), dtype=np.int64)
    memo: dict[int, np.ndarray] = {}
    for s, per_layer in enumerate(schedule_caps.tolist()):
        budget = int(per_layer) * L
        if budget not in memo:
            memo[budget] = allocate_layer_slots(curves, budget, min(min_slots, int(per_layer)),
                                                max(max_slots, int(per_layer)))
        out[s] = memo[budget]
    return out


def routing_weights(trace: Trace) -> np.ndarray:
    """(T, L, K) float64: each token's gate weights at each layer, normalised to sum 1 (1 / top_k each when the
    trace records no weights, or a token's weights sum to 0)."""
    K = trace.top_k
    if trace.weights is None:
        return np.full(trace.experts.shape, 1.0 / K, dtype=np.float64)
    w = trace.weights.astype(np.float64)
    total = w.sum(axis=2, keepdims=True)
    uniform = np.full_like(w, 1.0 / K)
    return np.where(total > 0, w / np.where(total > 0, total, 1.0), uniform)


def activation_matrices(trace: Trace) -> np.ndarray:
    """(N, L, E) one expert activation matrix per sequence of ``trace``: the share of its tokens routed to each
    expert at each layer."""
    bounds = trace.sequence_bounds()
    L, E = trace.num_layers, trace.num_experts
    out = np.zeros((len(bounds), L, E), dtype=np.float64)
    layer = np.arange(L)[None, :, None]
    for i, (a, b) in enumerate(bounds.tolist()):
        ex = trace.experts[a:b].astype(np.int64)
        np.add.at(out[i], (np.broadcast_to(layer, ex.shape), ex), 1.0)
        out[i] /= max(b - a, 1)
    return out


class ActivationMatrixPredictor(Predictor):
    """MoE-Infinity's activation-aware prediction, per step.

    ``fit``: record the activation matrix of each sequence of the fit trace (at most :data:`MAX_RECORDED`).
    During the replay each sequence accumulates its own matrix from the steps already run; a prediction made in
    step ``s`` matches the matrix of each target token's sequence (its steps before ``s``: causal for every layer
    of step ``s``) against the recorded ones by cosine similarity, and answers the best match's share of tokens
    routed to each expert at the target layer; a sequence with no routing yet gets the recorded mean. A step's
    tokens combine as ``1 - prod(1 - c)``. (MoE-Infinity re-matches as each layer's routing arrives; matching
    once per step is this simulator's simplification.)
    """

    name = ACTIVATION_PREDICTOR

    def __init__(self) -> None:
        self._recorded: np.ndarray | None = None

    def fit(self, train: Trace) -> None:
        eams = activation_matrices(train)
        if len(eams) > MAX_RECORDED:
            eams = eams[np.linspace(0, len(eams) - 1, MAX_RECORDED).astype(np.int64)]
        self._recorded = eams

    def start(self, trace: Trace, schedule: Schedule) -> None:
        if self._recorded is None:
            raise ValueError(f"predictor {self.name!r} needs recorded activation matrices: give a fit trace")
        self._trace = trace
        self._schedule = schedule
        L, E, K = trace.num_layers, trace.num_experts, trace.top_k
        flat = self._recorded.reshape(len(self._recorded), L * E)
        norms = np.linalg.norm(flat, axis=1)
        self._unit = flat / np.where(norms > 0, norms, 1.0)[:, None]
        self._mean = self._recorded.mean(axis=0)
        _, self._seq_of_token = np.unique(trace.sequence, return_inverse=True)
        self._counts = np.zeros((int(self._seq_of_token.max()) + 1, L * E), dtype=np.float64)
        self._layer_offsets = (np.arange(L, dtype=np.int64) * E)[None, :, None]
        self._experts = trace.experts  # read only; no int64 copy of the routing per environment
        self._K = K

    def _token_rows(self, tokens: np.ndarray) -> np.ndarray:
        """(n, L, E) the matched activation matrix of each token's sequence, from its steps so far."""
        L, E = self._trace.num_layers, self._trace.num_experts
        out = np.empty((len(tokens), L, E), dtype=np.float64)
        for i, t in enumerate(tokens.tolist()):
            cur = self._counts[self._seq_of_token[t]]
            total = cur.sum()
            if total <= 0:
                out[i] = self._mean
                continue
            sims = self._unit @ cur  # cosine up to the positive factor |cur|
            out[i] = self._recorded[int(np.argmax(sims))]
        return out

    def confidences(self, s0: int, s1: int, lookahead: int) -> np.ndarray:
        sched, L = self._schedule, self._trace.num_layers
        E = self._trace.num_experts
        S = sched.num_steps
        out = np.zeros((s1 - s0, L, E), dtype=np.float64)
        for s in range(s0, s1):
            rows: dict[int, np.ndarray] = {}
            for st in (s, s + 1):
                if st < S:
                    tokens = sched.step_tokens[st, : sched.step_ntokens[st]]
                    # probability that at least one token of the step picks each expert, per layer
                    miss = np.prod(1.0 - np.minimum(self._token_rows(tokens), 1.0), axis=0)
                    rows[st] = 1.0 - miss
            for layer in range(L):
                st, lt = s + (layer + lookahead) // L, (layer + lookahead) % L
                if st in rows:
                    out[s - s0, layer] = rows[st][lt]
            # the step has run: its routing joins its sequences' matrices
            tokens = sched.step_tokens[s, : sched.step_ntokens[s]]
            for t in tokens.tolist():
                keys = (self._layer_offsets[0, :, 0][:, None] + self._experts[t]).ravel()
                np.add.at(self._counts[self._seq_of_token[t]], keys, 1.0)
        return out
