"""Training-side code that Hub users never load; the model files never import this subpackage.

The trainer (`training/train.py` is its command line):

- `arguments`: the three argument dataclasses, read from YAML and the command line (no torch: fast errors);
- `factory`: from the arguments to a ready `Trainer` (tokenizer, model, processor, augmentation, streams);
- `trainer`: the `Trainer`, one loop for every method;
- `steps`: the gradient-accumulation strategies (`micro_batch`, and `full_batch` from `grad_cache`: exact large
  batches);
- `engine` and `sharding`: the `Accelerator`, which engine really runs, FSDP2 sharding, sharded state;
- `optim`: AdamW groups and kernels, the schedule; `finetuning`: frozen towers, LiT, per-parameter roles;
- `checkpoint`: resumable state as JSON + safetensors, written atomically (`hf_unified.files`);
- `runs`: one run per `output_dir` (its lock, its own checkpoints, the settings a resume must keep); `preemption`:
  SIGTERM / SIGUSR1 -> a checkpoint at the next step and the exit status a scheduler requeues on;
- `evaluation`: zero-shot classification and retrieval across ranks; `logs`: the log and the console;
- `methods`: what a method trains with, read from its config and the Auto classes.

Data: `data` (streams, decoding, exact resume), `sources`, `data_health`, `augmentation` (views with their parameter
vectors), `batch_augmentation` (the same views on whole batches, on the training device), `synthetic_data` (the
embedded shapes data), `tokenization`; and `clip_benchmark` (an adapter for LAION's CLIP_benchmark).

Import the modules you need (`from hf_unified.training import data`); importing the subpackage itself pulls in
nothing heavy, so `hf_unified.tokenization` works on the core install.
"""
