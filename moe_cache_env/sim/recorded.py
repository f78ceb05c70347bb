"""The ``recorded`` predictor: replay the speculative routing a trace recorded (``record --speculate``).

A trace of format 1.1 stores, for each token ``t`` and layer ``l``, the experts that the routers of layers
``l + 1 .. l + D`` pick from the hidden state entering layer ``l``'s router, with their probabilities
(``Trace.speculative_experts`` / ``speculative_weights``). That hidden state exists when the token reaches
layer ``l``, before its experts run, which is exactly when the simulator asks for a prediction
``lookahead`` layers ahead: so the prediction is causal, and it is what an engine that applies the next
layers' routers early (speculative expert loading) would see.

A token's score for expert ``e`` comes from the expert's rank ``r`` in the token's recorded list (ranked by
router probability): ``(M - r) / M`` for the M recorded experts (1 for the most probable), 0 for the others. A
step's confidence is ``1 - prod_t (1 - score_t(e))`` over its tokens. Ranks, not the raw probabilities, make the
score: a 64-expert router's top-8 probabilities lie between about 0.02 and 0.2, which the simulator's online
calibration (``calibrate_confidence``, 20 bins of the raw score) would lump into the lowest bins beside every
unpredicted expert; ranks give each recorded position its own bin, and the calibration then maps each to the
frequency at which it was right.

A prediction that crosses into the next step (``l + lookahead >= L``: the next token's early layers) has no
hidden state to come from; there the step's own experts at the target layer stand in (the next token often
reuses them, docs/traces.md), each with confidence ``1 - 0.5 ** n`` for ``n`` of the step's tokens choosing it.
"""

from __future__ import annotations

import numpy as np

from moe_cache_env.sim.config import ConfigError
from moe_cache_env.sim.plugins import Predictor
from moe_cache_env.sim.schedule import Schedule
from moe_cache_env.traces.format import Trace

RECORDED_PREDICTOR = "recorded"
#: confidence one token's same-layer choice lends an expert in the next step's layers (see the module docstring)
CROSS_STEP_CONFIDENCE = 0.5


class RecordedPredictor(Predictor):
    """Replay a trace's recorded speculative routing, lookahead by lookahead."""

    name = RECORDED_PREDICTOR

    def start(self, trace: Trace, schedule: Schedule) -> None:
        if not trace.has_speculation:
            raise ConfigError(
                f"predictor 'recorded' replays recorded speculative routing, and trace {trace.name!r} holds none; "
                "record one with `moe-cache-env record --speculate` (e.g. the bundled learned traces)"
            )
        self._L, self._E = trace.num_layers, trace.num_experts
        self._depth = int(trace.speculative_experts.shape[2])  # type: ignore[union-attr]
        self._spec_ids = trace.speculative_experts  # type: ignore[union-attr]  # read only, no int64 copy
        M = self._spec_ids.shape[3]
        # rank r of a token's recorded list scores (M - r) / M (the list is stored by descending probability)
        self._rank_score = (M - np.arange(M, dtype=np.float64)) / M
        self._experts = trace.experts  # read only; no int64 copy of the routing per environment
        self._step_tokens = schedule.step_tokens

    def confidences(self, s0: int, s1: int, lookahead: int) -> np.ndarray:
        L, E = self._L, self._E
        if lookahead > self._depth:
            raise ConfigError(
                f"predictor 'recorded': lookahead {lookahead} is past the {self._depth} layer(s) the trace recorded; "
                f"record with --speculate {lookahead} or use a lookahead of at most {self._depth}"
            )
        out = np.zeros((s1 - s0, L, E), dtype=np.float64)
        inside = L - lookahead  # layers l whose target l + lookahead is inside the same step
        for s in range(s0, s1):
            tokens = self._step_tokens[s]
            tokens = tokens[tokens >= 0]
            if tokens.size == 0:
                continue
            # miss[l, e] = prod over tokens of (1 - p_t(e)) for the target l + lookahead
            miss = np.ones((inside, E), dtype=np.float64)
            ids = self._spec_ids[tokens, :inside, lookahead - 1]  # (n, inside, M)
            keep = np.broadcast_to(1.0 - self._rank_score, ids.shape[1:])
            for i in range(tokens.size):
                row = np.ones((inside, E), dtype=np.float64)
                np.put_along_axis(row, ids[i], keep, axis=1)
                miss *= row
            out[s - s0, :inside] = 1.0 - miss
            # crossing into the next step: target layer j = l + lookahead - L, from this step's own routing
            for layer in range(inside, L):
                target = layer + lookahead - L
                counts = np.bincount(self._experts[tokens, target].ravel(), minlength=E)
                out[s - s0, layer] = 1.0 - CROSS_STEP_CONFIDENCE ** counts
        return out
