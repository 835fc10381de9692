"""The training command line: `hf-unified-train` (the console script a `pip install` puts on the PATH) and
`training/train.py` (the same command from a checkout) both call `run()`.

    hf-unified-train --config training/configs/unicl-tiny.yaml [--max_steps 100 ...]
    accelerate launch training/train.py --config training/configs/unicl-tiny.yaml

This module imports only the settings (`parsing`, `arguments`: no torch) at the top, so `training/train.py` can load
it by path with them and a bad flag fails before torch and the models are imported; the trainer comes in after the
settings are parsed. The console script imports the package first (`import hf_unified` registers the models with the
Auto classes: a few seconds), then behaves exactly as `train.py`.

Exit status: 0 done (or stopped at `--stop_at_step`), 1 with one `error:` line (bad input, a refused folder or
checkpoint, non-finite steps, a failed save), 2 a bad flag or config value, 75 stopped by SIGTERM / SIGUSR1 with a
checkpoint written (requeue and resume: `training/slurm/`), 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# `from .parsing import ...`, not `from . import parsing`: the latter imports the parent packages (torch, the models),
# which `training/train.py` avoids by loading this module and the settings by path.
from .parsing import ConfigError, parse_arguments

# What `accelerate launch` sets OMP_NUM_THREADS to when the variable is unset (accelerate's `launch_command`:
# `get_int_from_env(["OMP_NUM_THREADS"], 1)`, raised only with `--cpu` and several physical cores per process).
LAUNCH_THREADS = "1"
# The tiny configs of a checkout (`training/configs/<model_type>-tiny.yaml`), named by the startup line.
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "training" / "configs"


def use_launch_threads(environ) -> None:
    """Every form of the command (`python training/train.py`, `hf-unified-train`, `accelerate launch`) runs with the
    torch thread count `accelerate launch` gives: the forms then train at the same speed and with the same reduction
    order (the same numbers). One thread per process is also the fast choice where cores are few or shared (the
    DataLoader workers need them too): MS-CLIP's 30 tiny steps took 249-293 s with torch's default of one thread per
    core against 75 s with one, on a busy 2-core machine. A set OMP_NUM_THREADS is kept, in every form: set it to use
    more cores."""
    if "OMP_NUM_THREADS" in environ:
        return
    environ["OMP_NUM_THREADS"] = LAUNCH_THREADS
    if "torch" in sys.modules:  # the console script imported the package (and torch) before the settings were read
        sys.modules["torch"].set_num_threads(int(LAUNCH_THREADS))


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
            f"{CONFIGS_DIR / (model_args.model_type + '-tiny.yaml')}"
        )
    return line


def main(argv: list[str] | None = None) -> dict:
    """Parses the command line (exits with status 2 and one message on a bad flag or config value), says what runs,
    then trains.

    Returns `Trainer.train()`'s result: `{"eval_results", "counters", "output_dir"}`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        model_args, data_args, train_args = parse_arguments(argv)
    except ConfigError as error:  # one line, as for a bad flag's value; the usage line would add nothing
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(startup_line(argv, model_args, train_args), flush=True)  # with the trainer's progress lines (stdout)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer also runs in DataLoader workers
    use_launch_threads(os.environ)  # before torch is imported where it can be: it reads OMP_NUM_THREADS once
    from hf_unified.training.builders import build_trainer  # torch, accelerate, datasets and the models
    from hf_unified.training.logs import quiet_progress_bars

    if train_args.disable_tqdm or not sys.stderr.isatty():  # a log file: plain lines only
        quiet_progress_bars()
    return build_trainer(model_args, data_args, train_args).train()


def run(argv: list[str] | None = None) -> int:
    """The command line: bad input (a `ValueError`: data, checkpoint, settings, a refused folder), a run stopped by
    non-finite steps, a failed save or another file-system error (`OSError`: a full disk) ends with its one-line
    message and status 1, not a traceback; a stop signal with its checkpoint message and `REQUEUE_EXIT_CODE`; Ctrl-C
    with one line and status 130. Returns the exit status."""
    program = Path(sys.argv[0]).name
    try:
        main(argv)
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


if __name__ == "__main__":  # `python -m hf_unified.training.cli`, `accelerate launch -m hf_unified.training.cli`
    sys.exit(run())
