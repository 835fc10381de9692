"""How one optimizer step turns its micro-batches into gradients: the gradient-accumulation strategies.

A strategy is a callable `step(model, micro_batches, accelerator) -> loss`: it runs the forward and backward passes
of one optimizer step over `gradient_accumulation_steps` micro-batches (model inputs already on the device), syncs
gradients between processes only on the last one, and returns the detached loss of the step. Clipping, the
optimizer step, the schedule and the temperature clamp stay in the trainer's loop, so a strategy is only about
which negatives each sample is contrasted with:

- `micro_batch` ([`MicroBatchStep`]): each micro-batch's loss sees the negatives of its own micro-batch;
- `full_batch` (`grad_cache.FullBatchStep`): one loss over the whole `k x per_device x world` batch, exactly, in
  one micro-batch's activation memory. With one micro-batch per step both compute the same step (`full_batch`
  then runs the forward pass twice).

Both work with any engine the trainer runs (single process, DDP, FSDP2): gradient synchronisation is switched off
through `sharding.gradient_sync`, which knows each engine's mechanism.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .grad_cache import FullBatchStep
from .sharding import gradient_sync


class StepStrategy(Protocol):
    """A step strategy: `name` (its `gradient_accumulation_mode`), `deepspeed_unsupported` (why it cannot run under
    DeepSpeed, or None: `launch.check_engine` refuses that launch with the reason), and the call."""

    name: str
    deepspeed_unsupported: str | None

    def __call__(self, model: torch.nn.Module, micro_batches: list[dict], accelerator) -> torch.Tensor: ...


class MicroBatchStep:
    """Plain accumulation: each micro-batch's loss sees only the negatives of its own micro-batch (and of the other
    ranks' same micro-batch); the step's gradient is the mean of the micro-batch gradients."""

    name = "micro_batch"
    deepspeed_unsupported = None

    def __call__(self, model: torch.nn.Module, micro_batches: list[dict], accelerator) -> torch.Tensor:
        step_loss = torch.zeros((), device=accelerator.device)
        for index, inputs in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            with gradient_sync(model, accelerator, enabled=last):
                loss = model(**inputs, return_loss=True).loss / len(micro_batches)
                accelerator.backward(loss)
            step_loss += loss.detach()
        return step_loss


# gradient_accumulation_mode -> strategy class (`arguments.GRADIENT_ACCUMULATION_MODES` lists the same names).
STEP_STRATEGIES: dict[str, type] = {strategy.name: strategy for strategy in (MicroBatchStep, FullBatchStep)}


def build_step(mode: str) -> StepStrategy:
    try:
        return STEP_STRATEGIES[mode]()
    except KeyError:
        raise ValueError(
            f"gradient_accumulation_mode must be one of {sorted(STEP_STRATEGIES)}, got {mode!r}"
        ) from None


__all__ = ["STEP_STRATEGIES", "FullBatchStep", "MicroBatchStep", "StepStrategy", "build_step"]
