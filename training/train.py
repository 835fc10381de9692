"""Train UniCL, UniCLIP or MS-CLIP with accelerate on streamed `datasets` sources.

    accelerate launch training/train.py --config training/configs/unicl-tiny.yaml [--max_steps 100 ...]
    python training/train.py --config training/configs/unicl-tiny.yaml
    accelerate launch --config_file training/accelerate/ddp.yaml training/train.py --config ...

The YAML holds the fields of `ModelArguments`, `DataArguments` and `TrainArguments`
(`hf_unified/training/arguments.py`, all listed by `--help`; read by `parsing.py`); flags given on the command line
override it. The model's config decides the objective: each model computes its own distributed-exact loss with
`return_loss=True`.

Without `train_data` pointing elsewhere the run uses the embedded "shapes" data, generated into `data/shapes` on
first use, and a caption tokenizer trained on the training texts, so it runs offline.

Outputs in `output_dir`: `checkpoint-<step>/` (JSON + safetensors, written atomically), `training_log.jsonl`, and at
the end the model and processor (`save_pretrained`), `eval_results.json`, `training_args.json` and a model card,
all swapped in at once. One run at a time holds the folder (`run.lock`); a folder holding another run's work is
refused unless `--resume_from_checkpoint` or `--overwrite_output_dir` says what to do with it. The work itself is
`hf_unified.training.builders.build_trainer(...).train()`; the command line is `hf_unified.training.cli`, which a
`pip install` also puts on the PATH as `hf-unified-train`.

Exit status: 0 done (or stopped at `--stop_at_step`), 1 with one `error:` line (bad input, a refused folder or
checkpoint, non-finite steps, a failed save), 2 a bad flag or config value, 75 stopped by SIGTERM / SIGUSR1 with a
checkpoint written (requeue and resume: `training/slurm/`), 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python training/train.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))


# The command line and the settings it parses, with the one module of the package they import, in import order: all
# torch-free.
SETTINGS_MODULES = ("data/view_recipe.py", "engine/accumulation_modes.py", "arguments.py", "parsing.py", "cli.py")


def _load_settings_modules():
    """`hf_unified.training.cli` (and what it imports) without running `hf_unified/__init__.py`, which imports
    torch and every model (seconds): a bad flag or YAML value must fail at once. Each module is loaded from its file
    and registered under its own name, so their relative imports find each other and later imports of them return
    these same modules."""
    name = "hf_unified.training.cli"
    if "hf_unified" in sys.modules:  # imported already (tests, a notebook): nothing to save
        return importlib.import_module(name)
    package = importlib.util.find_spec("hf_unified")  # finds the package without importing it
    training = Path(package.submodule_search_locations[0]) / "training"
    for relative in SETTINGS_MODULES:
        module_name = "hf_unified.training." + relative.removesuffix(".py").replace("/", ".")
        spec = importlib.util.spec_from_file_location(module_name, training / relative)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


cli = _load_settings_modules()
parse_arguments = cli.parse_arguments
main = cli.main
_run = cli.run
startup_line = cli.startup_line
use_launch_threads = cli.use_launch_threads

if __name__ == "__main__":
    sys.exit(_run())
