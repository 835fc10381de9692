"""How a run executes: the `Accelerator` and the engine the launch really set up (`launch`), FSDP2 sharding
(`sharding`), sharded state beside checkpoints (`sharded_state`), resumable checkpoints (`checkpoint`), the
gradient-accumulation strategies (`steps`, `grad_cache` for the exact `full_batch`; their names, torch-free, in
`accumulation_modes`) and stopping at a step
boundary on a signal (`preemption`).

Import the modules (`from hf_unified.training.engine import sharding`); this file imports nothing.
"""
