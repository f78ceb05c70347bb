"""Expert predictors: before a layer runs, a confidence in [0, 1] per expert of an upcoming step.

Every predictor answers the same question: *given what is known when step s reaches layer l, how likely is
expert e to be needed by the step ``lookahead`` layers ahead?* A confidence is the predicted probability that
the expert is among the step's experts (the union over the batch's tokens). The predictors run inside the
simulator's compiled loop (``kernel.py``); this module names them, documents them and fits the one that can
be trained offline.

- ``noisy-oracle`` (an oracle: it reads the future): the seed's simulated predictor. Its most confident
  expert is a true one with probability ``oracle_accuracy``; true experts draw confidences in [0.3, 0.9],
  others in [0, 0.5], and the chosen top expert is lifted just above the rest.
- ``popularity``: each expert's decayed per-layer selection frequency.
- ``previous-token``: the same layer's experts of each token's predecessor in its sequence, weighted by the
  layer's observed reuse rate; popularity for the rest.
- ``cross-layer``: a co-occurrence table from the experts a token chose ``lookahead`` layers earlier to the
  target layer, P(j at l+d | i at l), averaged over the token's experts at l; learned online and optionally
  pre-fitted on a training trace (``fit_cooccurrence``).
- ``perfect`` (an oracle): confidence 1 for the true experts, 0 otherwise: the upper bound of prediction.
- ``none``: no predictor at all: nothing is predicted, prefetched or learned (demand-only caches).
"""

from __future__ import annotations

import numpy as np

#: predictor name -> kernel id
PREDICTORS: dict[str, int] = {
    "noisy-oracle": 0,
    "popularity": 1,
    "previous-token": 2,
    "cross-layer": 3,
    "perfect": 4,
    "none": 5,
}
ORACLE_PREDICTORS = ("noisy-oracle", "perfect")
MAX_LOOKAHEAD = 2


def fit_cooccurrence(experts: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """Count, for d in 1..MAX_LOOKAHEAD, how often expert j at layer l+d follows expert i at layer l.

    Returns ``(pair_counts, source_counts)`` of shapes (D, L, E, E) and (D, L, E) (int32), where
    ``pair_counts[d-1, l, i, j]`` counts tokens that chose i at layer l and j at layer l+d, and
    ``source_counts[d-1, l, i]`` counts tokens that chose i at layer l (with a successor layer l+d).
    """
    T, L, K = experts.shape
    E = int(num_experts)
    pair = np.zeros((MAX_LOOKAHEAD, L, E, E), dtype=np.int32)
    src = np.zeros((MAX_LOOKAHEAD, L, E), dtype=np.int32)
    for d in range(1, MAX_LOOKAHEAD + 1):
        for layer in range(L - d):
            a = experts[:, layer, :].astype(np.int64)
            b = experts[:, layer + d, :].astype(np.int64)
            # every (i, j) pair of one token: K x K combinations
            flat = (a[:, :, None] * E + b[:, None, :]).ravel()
            pair[d - 1, layer] += np.bincount(flat, minlength=E * E).reshape(E, E)
            src[d - 1, layer] += np.bincount(a.ravel(), minlength=E)
    return pair, src
