"""Instruction-tuning data selection at LLM scale (paper §5.2, App. D.3, E.3).

The pipeline has three commands, each a module of its own:

- ``warmup``: LoRA fine-tuning of a causal LM on a random fraction of the pool gives θ* (``warmup.py``);
- ``extract``: LoGra-projected per-example gradients of chosen Linear layers at θ*, in resumable
  memory-mapped shards, optionally split across ``torchrun`` ranks (``projection.py``, ``extract.py``,
  ``store.py``);
- ``select``: curvature in the projected space, per-example shifts, target gradient and low-rank
  target-curvature factor per target set, then greedy F+I, top-k F and random selection
  (``curvature.py``, ``select.py``), built on ``groupinf.selection`` and ``groupinf.features``.

This package imports ``transformers``, ``peft`` and ``datasets`` only inside the functions that need them.
"""
