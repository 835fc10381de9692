"""The gradient-accumulation modes by name, in a torch-free module: the settings' choices (`arguments.py`, which
`training/train.py` loads before torch) and the step strategies (`steps.py`, `grad_cache.py`) read them here, so
each name is spelled once."""

from __future__ import annotations

# One loss over the whole accumulated batch, exact (GradCache): the default when a step has several micro-batches.
FULL_BATCH = "full_batch"
# Each micro-batch's loss sees only its own negatives (plain accumulation); with one micro-batch per step it is the
# same step as FULL_BATCH in one forward pass instead of two, so it is the default there.
MICRO_BATCH = "micro_batch"
GRADIENT_ACCUMULATION_MODES = (FULL_BATCH, MICRO_BATCH)


def default_accumulation_mode(gradient_accumulation_steps: int) -> str:
    """The mode a run takes when none is given: exact (`full_batch`) whenever there is something to accumulate."""
    return FULL_BATCH if gradient_accumulation_steps > 1 else MICRO_BATCH


__all__ = ["FULL_BATCH", "GRADIENT_ACCUMULATION_MODES", "MICRO_BATCH", "default_accumulation_mode"]
