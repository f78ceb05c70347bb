"""Checking the simulator against a real GPU: decision logs, reference policies and the GPU replay.

- ``decision_log``: the ``moe-decision-log/1`` format (what a policy decided, per step and layer);
- ``reference_policies``: decision logs of per-layer LRU with and without perfect next-layer prefetch, made in
  plain Python from a trace, and a plain-Python timing estimate of any decision log in the simulator's units;
- ``replay``: the engine that executes a decision log on a CUDA GPU (or on a fake device, for tests).

Only ``replay.CudaReplayDevice`` needs torch and a GPU; it imports torch when it is created.
"""
