"""How a run executes: the `Accelerator` and the engine it really set up (`launch`), FSDP2 sharding (`sharding`),
sharded state, resumable checkpoints (`checkpoint`), the gradient-accumulation strategies (`steps`, `grad_cache`)
and stopping at a step boundary on a signal (`preemption`).

Import the modules (`from hf_unified.training.engine import sharding`); this file imports nothing.
"""
