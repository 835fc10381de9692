"""How one optimizer step turns its micro-batches into gradients: the gradient-accumulation strategies.

A strategy is a callable `step(model, micro_batches, accelerator) -> loss`: it runs the forward and backward passes
of one optimizer step over `gradient_accumulation_steps` micro-batches (model inputs already on the device), syncs
gradients between processes only on the last one, and returns the detached loss of the step. Clipping, the
optimizer step, the schedule and the temperature clamp stay in the trainer's loop, so a strategy is only about
which negatives each sample is contrasted with.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import torch


class StepStrategy(Protocol):
    def __call__(self, model: torch.nn.Module, micro_batches: list[dict], accelerator) -> torch.Tensor: ...


class MicroBatchStep:
    """Plain accumulation: each micro-batch's loss sees only the negatives of its own micro-batch (and of the other
    ranks' same micro-batch); the step's gradient is the mean of the micro-batch gradients."""

    name = "micro_batch"

    def __call__(self, model: torch.nn.Module, micro_batches: list[dict], accelerator) -> torch.Tensor:
        step_loss = torch.zeros((), device=accelerator.device)
        for index, inputs in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(model):
                loss = model(**inputs, return_loss=True).loss / len(micro_batches)
                accelerator.backward(loss)
            step_loss += loss.detach()
        return step_loss


# gradient_accumulation_mode -> strategy class (`arguments.GRADIENT_ACCUMULATION_MODES` lists the same names).
STEP_STRATEGIES: dict[str, type] = {MicroBatchStep.name: MicroBatchStep}


def build_step(mode: str) -> StepStrategy:
    try:
        return STEP_STRATEGIES[mode]()
    except KeyError:
        raise ValueError(
            f"gradient_accumulation_mode must be one of {sorted(STEP_STRATEGIES)}, got {mode!r}"
        ) from None


__all__ = ["STEP_STRATEGIES", "MicroBatchStep", "StepStrategy", "build_step"]
