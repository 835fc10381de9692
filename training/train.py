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
`hf_unified.training.builders.build_trainer(...).train()`.

Exit status: 0 done (or stopped at `--stop_at_step`), 1 with one `error:` line (bad input, a refused folder or
checkpoint, non-finite steps, a failed save), 2 a bad flag or config value, 75 stopped by SIGTERM / SIGUSR1 with a
checkpoint written (requeue and resume: `training/slurm/`), 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python training/train.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))


# The settings and their parsing, with the one module of the package they import, in import order: all torch-free.
SETTINGS_MODULES = ("data/view_recipe.py", "arguments.py", "parsing.py")


def _load_settings_modules():
    """`hf_unified.training.parsing` (and what it imports) without running `hf_unified/__init__.py`, which imports
    torch and every model (seconds): a bad flag or YAML value must fail at once. Each module is loaded from its file
    and registered under its own name, so their relative imports find each other and later imports of them return
    these same modules."""
    name = "hf_unified.training.parsing"
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


parsing = _load_settings_modules()
parse_arguments = parsing.parse_arguments


# What `accelerate launch` sets OMP_NUM_THREADS to when the variable is unset (accelerate's `launch_command`:
# `get_int_from_env(["OMP_NUM_THREADS"], 1)`, raised only with `--cpu` and several physical cores per process).
LAUNCH_THREADS = "1"


def use_launch_threads(environ) -> None:
    """`python training/train.py` runs with the torch thread count `accelerate launch` gives: the two documented forms
    then train at the same speed and with the same reduction order (the same numbers). One thread per process is also
    the fast choice where cores are few or shared (the DataLoader workers need them too): MS-CLIP's 30 tiny steps took
    249-293 s with torch's default of one thread per core against 75 s with one, on a busy 2-core machine. A set
    OMP_NUM_THREADS is kept, in both forms: set it to use more cores."""
    environ.setdefault("OMP_NUM_THREADS", LAUNCH_THREADS)


def startup_line(argv: list[str], model_args, train_args) -> str:
    """What the run is about to do, with the absolute output folder (relative paths resolve against the current
    folder); without `--config` it says the full-size default model is trained and names the tiny configs."""
    output_dir = Path(train_args.output_dir).absolute()
    given_config = any(token == "--config" or token.startswith("--config=") for token in argv)
    built_here = not (model_args.model_config or model_args.starts_pretrained)
    line = f"{Path(sys.argv[0]).name}: training {model_args.model_type} into {output_dir}"
    if not given_config and built_here:
        line += (
            f" -- no --config and no model_config: the full-size default {model_args.model_type} model at "
            f"{train_args.max_steps} steps (hours on a CPU); for a run of minutes give --config "
            f"{REPO_ROOT / 'training' / 'configs' / (model_args.model_type + '-tiny.yaml')}"
        )
    return line


def main(argv: list[str] | None = None) -> dict:
    """Parses the command line (exits with status 2 and one message on a bad flag or config value), then trains.

    Returns `Trainer.train()`'s result: `{"eval_results", "counters", "output_dir"}`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        model_args, data_args, train_args = parse_arguments(argv)
    except parsing.ConfigError as error:  # one line, as for a bad flag's value; the usage line would add nothing
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(startup_line(argv, model_args, train_args), flush=True)  # with the trainer's progress lines (stdout)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer also runs in DataLoader workers
    use_launch_threads(os.environ)  # before torch is imported: it reads OMP_NUM_THREADS once
    from hf_unified.training.builders import build_trainer  # torch, accelerate, datasets and the models
    from hf_unified.training.logs import quiet_progress_bars

    if train_args.disable_tqdm or not sys.stderr.isatty():  # a log file: plain lines only
        quiet_progress_bars()
    return build_trainer(model_args, data_args, train_args).train()


def _run() -> int:
    """The command line: bad input (a `ValueError`: data, checkpoint, settings, a refused folder), a run stopped by
    non-finite steps, a failed save or another file-system error (`OSError`: a full disk) ends with its one-line
    message and status 1, not a traceback; a stop signal with its checkpoint message and `REQUEUE_EXIT_CODE`; Ctrl-C
    with one line and status 130."""
    program = Path(sys.argv[0]).name
    try:
        main()
    except KeyboardInterrupt:
        print(
            f"{program}: interrupted (Ctrl-C): stopped without a checkpoint of this step; continue from the last one "
            "with --resume_from_checkpoint latest",
            file=sys.stderr,
        )
        return 130
    except Exception as error:
        from hf_unified.training.engine.preemption import REQUEUE_EXIT_CODE, RunStopped
        from hf_unified.training.trainer import NonFiniteLossError, SaveError

        if isinstance(error, RunStopped):
            print(f"{program}: {error}", file=sys.stderr)
            return REQUEUE_EXIT_CODE
        if isinstance(error, OSError):  # a full disk, a missing file
            print(f"{program}: error: {' '.join(f'{type(error).__name__}: {error}'.split())}", file=sys.stderr)
            return 1
        if not isinstance(error, (ValueError, NonFiniteLossError, SaveError)):
            raise
        print(f"{program}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_run())
