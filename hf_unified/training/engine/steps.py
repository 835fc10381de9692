"""How one optimizer step turns its micro-batches into gradients: the gradient-accumulation strategies.

A strategy is a callable `step(model, micro_batches, accelerator) -> (loss, loss_terms)`: it runs the forward and
backward passes of one optimizer step over `gradient_accumulation_steps` micro-batches (model inputs already on the
device), syncs gradients between processes only on the last one, and returns the detached loss of the step and its
split by domain pair (`ContrastiveOutput.loss_terms`, of shape `(3,)`, summing to the loss). Clipping, the
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

from ...losses import DOMAIN_PAIRS
from .accumulation_modes import FULL_BATCH, MICRO_BATCH
from .grad_cache import FullBatchStep
from .sharding import gradient_sync


class StepStrategy(Protocol):
    """A step strategy: `name` (its `gradient_accumulation_mode`), `deepspeed_unsupported` (why it cannot run under
    DeepSpeed, or None: `launch.check_engine` refuses that launch with the reason), and the call, which returns the
    step's detached loss `()` and its terms by domain pair `(3,)`."""

    name: str
    deepspeed_unsupported: str | None

    def __call__(
        self, model: torch.nn.Module, micro_batches: list[dict], accelerator
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class MicroBatchStep:
    """Plain accumulation: each micro-batch's loss sees only the negatives of its own micro-batch (and of the other
    ranks' same micro-batch); the step's gradient is the mean of the micro-batch gradients."""

    name = MICRO_BATCH
    deepspeed_unsupported = None

    def __call__(
        self, model: torch.nn.Module, micro_batches: list[dict], accelerator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        step_loss = torch.zeros((), device=accelerator.device)
        step_terms = torch.zeros(len(DOMAIN_PAIRS), device=accelerator.device)
        for index, inputs in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            with gradient_sync(model, accelerator, enabled=last):
                outputs = model(**inputs, return_loss=True)
                loss = outputs.loss / len(micro_batches)
                accelerator.backward(loss)
            step_loss += loss.detach()
            step_terms += outputs.loss_terms / len(micro_batches)
        return step_loss, step_terms


# gradient_accumulation_mode -> strategy class, in the order of `accumulation_modes.GRADIENT_ACCUMULATION_MODES`.
STEP_STRATEGIES: dict[str, type] = {strategy.name: strategy for strategy in (FullBatchStep, MicroBatchStep)}


def build_step(mode: str) -> StepStrategy:
    try:
        return STEP_STRATEGIES[mode]()
    except KeyError:
        raise ValueError(
            f"gradient_accumulation_mode must be one of {sorted(STEP_STRATEGIES)}, got {mode!r}"
        ) from None


def describe_step(strategy: StepStrategy, micro_batches: int, per_device: int, processes: int) -> str:
    """The startup line saying how a step's samples meet in the loss: which strategy runs, over how many samples.

    Example: `gradient accumulation: full_batch, 4 micro-batches of 8 x 2 processes: one loss over the 64 samples
    of each step (exact)`."""
    batch = f"{per_device}" + (f" x {processes} processes" if processes > 1 else "")
    if micro_batches == 1:
        return f"step: one batch of {batch}, one loss over its {per_device * processes} samples"
    head = f"gradient accumulation: {strategy.name}, {micro_batches} micro-batches of {batch}"
    if strategy.name == FULL_BATCH:
        return f"{head}: one loss over the {micro_batches * per_device * processes} samples of each step (exact)"
    if strategy.name == MICRO_BATCH:
        return (
            f"{head}: each micro-batch's loss sees only its own {per_device * processes} samples (another objective "
            f"than one batch of {micro_batches * per_device * processes}; {FULL_BATCH} is exact)"
        )
    return f"{head} ({type(strategy).__name__})"


__all__ = ["STEP_STRATEGIES", "FullBatchStep", "MicroBatchStep", "StepStrategy", "build_step", "describe_step"]
