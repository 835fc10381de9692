"""Training-side code that Hub users never load; the model files never import this subpackage.

The trainer, grouped by concern:

- the settings: `arguments` (the three settings dataclasses, checked when made) and `parsing` (YAML and the
  command line); both import no torch, so a bad flag fails at once;
- `cli`: the command line (`hf-unified-train`; `training/train.py` in a checkout loads it with the settings, by path,
  before torch);
- `builders`: the parts of a run built from the settings (data sources, tokenizer, model, processor, training data,
  evaluation, the card's examples) and `build_trainer`, which composes them;
- the loop: `trainer` (the `Trainer`, one loop for every method, with an `on_evaluate` hook), `optim` (AdamW
  groups and kernels, the schedule), `finetuning` (frozen towers, LiT, per-parameter roles), `methods` (what a
  method trains with, read from its config and the Auto classes), `runs` (one run per `output_dir`: its lock, its own
  checkpoints, the settings a resume must keep), `logs` (the log and the console);
- `data/`: the streamed data (sources, damage health, decoding, the resumable stream, the view recipe, per-image and
  batched augmentation, the embedded shapes data);
- `engine/`: how a run executes (the `Accelerator` and the engine it really set up, FSDP2 sharding, sharded state,
  checkpoints, the gradient-accumulation strategies, preemption);
- `outputs/`: what a run gives back (evaluation, the final model folder and its card's examples, publishing to the
  Hub, the CLIP_benchmark adapter).

Imports point one way (tests/test_import_directions.py): training may use the core and `hf_unified.hub`, never the
reverse; `data/` and `engine/` import nothing else of training; `outputs/` never imports the loop.

Import the modules you need (`from hf_unified.training import data`); importing the subpackage itself pulls in
nothing heavy. The tokenizer builders are in the core (`hf_unified.tokenization`).
"""
