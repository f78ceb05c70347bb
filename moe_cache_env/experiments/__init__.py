"""Experiment drivers that run many evaluations: grid sweeps over traces, profiles, workloads and policies."""
