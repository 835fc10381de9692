"""A newcomer's first hour with training/train.py (issue 26): each mistake of the list ends with one line naming the
problem and the fix, before torch or the models are imported; Ctrl-C ends with one line; the run says where it
writes and whether it trains the full-size model; `python` and `accelerate launch` use the same thread count."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from training_helpers import ROOT, train_script

from hf_unified.training.arguments import MODEL_TYPES
from hf_unified.training.parsing import parse_arguments

TRAIN = str(ROOT / "training" / "train.py")
UNICL_TINY = str(ROOT / "training" / "configs" / "unicl-tiny.yaml")
HEAVY = ("torch", "accelerate", "datasets", "hf_unified")


def run_settings_only(args: list[str], cwd: Path) -> tuple[str, list[str]]:
    """Runs train.py's command line as `python training/train.py ARGS` would, in-process through `runpy`, and returns
    its stderr and the heavy modules imported by the time it exited."""
    code = (
        "import contextlib, io, json, runpy, sys\n"
        f"sys.argv = [{TRAIN!r}, *{args!r}]\n"
        "stderr = io.StringIO()\n"
        "with contextlib.redirect_stderr(stderr):\n"
        "    try:\n"
        f"        runpy.run_path({TRAIN!r}, run_name='__main__')\n"
        "    except SystemExit as stop:\n"
        "        code = stop.code\n"
        f"print(json.dumps([code, stderr.getvalue(), sorted(m for m in {HEAVY!r} if m in sys.modules)]))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    status, stderr, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    assert status == 2, (status, stderr, done.stderr)
    return stderr, heavy


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--model_type", "clip"], ["model_type 'clip'", "unicl, uniclip, msclip", "--objective clip"]),
        (["--config", UNICL_TINY, "--per_device_train_batch_size", "0"], ["per_device_train_batch_size", "got 0"]),
        (["--config", UNICL_TINY, "--image_size", "30"], ["image_size 30", "patch_size 4", "28 or 32"]),
        (["--config", UNICL_TINY, "--output_dir", "a-file"], ["output_dir {cwd}/a-file is a file"]),
    ],
    ids=["model-type-clip", "batch-size-0", "image-size-not-divisible", "output-dir-is-a-file"],
)
def test_newcomer_mistakes_end_with_one_line_before_heavy_imports(args, expected, tmp_path):
    """Each used to fail after a minute of imports with a traceback (`CLIPProcessor has no attribute ...`,
    `FileExistsError`), hang (batch size 0: a DataLoader worker at 100%) or train silently (a patch size that does
    not divide the image); paths are named absolute, since a relative one resolves against the current folder."""
    (tmp_path / "a-file").write_text("not a folder")
    stderr, heavy = run_settings_only(args, cwd=tmp_path)
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("train.py: error: "), stderr
    for text in expected:
        assert text.format(cwd=tmp_path) in stderr, stderr
    assert heavy == [], heavy


def test_the_trainers_model_types_are_the_registered_ones():
    from transformers import CONFIG_MAPPING

    import hf_unified  # noqa: F401  (registers them)

    assert set(MODEL_TYPES) == set(CONFIG_MAPPING._extra_content)


def test_objective_clip_is_the_way_to_train_clip():
    """What the model_type error recommends parses, and gives the config CLIP's objective."""
    from hf_unified.configuration_contrastive import OBJECTIVE_PRESETS

    model_args, _, _ = parse_arguments(["--model_type", "unicl", "--objective", "clip"])
    assert model_args.model_type == "unicl" and model_args.config_kwargs == OBJECTIVE_PRESETS["clip"]


def test_startup_line_names_the_absolute_output_folder_and_the_full_size_default(tmp_path, monkeypatch):
    """Forgetting --config trained the full-size model for 1000 steps at 0.33 samples/s without a word."""
    monkeypatch.chdir(tmp_path)
    argv = ["--max_steps", "5"]
    line = train_script.startup_line(argv, *parse_arguments(argv)[::2])
    assert f"into {tmp_path / 'outputs' / 'run'}" in line
    assert "no --config" in line and "full-size default unicl model" in line
    assert str(ROOT / "training" / "configs" / "unicl-tiny.yaml") in line
    argv = ["--config", UNICL_TINY]
    line = train_script.startup_line(argv, *parse_arguments(argv)[::2])
    assert line.endswith(f"training unicl into {tmp_path / 'outputs' / 'unicl-tiny'}")


def test_python_gets_the_thread_count_accelerate_launch_gives():
    """`accelerate launch` sets OMP_NUM_THREADS=1 where it is unset; `python training/train.py` now does the same, and
    a set value is kept in both."""
    from accelerate.utils import get_int_from_env

    environ = {}
    train_script.use_launch_threads(environ)
    # accelerate's `launch_command` default for a plain launch: the variable, else 1.
    assert environ["OMP_NUM_THREADS"] == str(get_int_from_env(["OMP_NUM_THREADS_UNSET_HERE"], 1))
    environ = {"OMP_NUM_THREADS": "8"}
    train_script.use_launch_threads(environ)
    assert environ["OMP_NUM_THREADS"] == "8"


def test_ctrl_c_during_training_ends_with_one_line(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it, DataLoader workers included) once the run
    has started: status 130 and one line saying how to continue, no traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    args = ["--config", UNICL_TINY, "--max_steps", "1000", "--logging_steps", "1", "--output_dir", "out"]
    process = subprocess.Popen(
        [sys.executable, TRAIN, *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        first = process.stdout.readline()
        for line in process.stdout:  # wait until a training step is logged: the workers run by then
            if line.startswith("step "):
                break
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert first.strip() == f"train.py: training unicl into {tmp_path / 'out'}"
    lines = stderr.strip().splitlines()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    assert lines[0].startswith("train.py: interrupted (Ctrl-C)") and "--resume_from_checkpoint latest" in lines[0]


def test_a_worker_says_nothing_of_a_batch_handover_that_ctrl_c_broke_off():
    """The race behind a traceback under the Ctrl-C line on a busy machine: the main process is interrupted while it
    fetches a batch's file descriptors, and the worker's resource-sharer thread meets the closed connection and reports
    it through `sys.excepthook`. The workers' hook drops exactly that (a connection error raised in the resource
    sharer); any other error, or a connection error raised elsewhere, still reaches the hook."""
    import multiprocessing.resource_sharer

    from hf_unified.training.engine.preemption import quiet_broken_handovers

    seen = []
    hook = quiet_broken_handovers(lambda kind, value, traceback: seen.append(kind))
    sharer = {}
    exec(compile("def serve(error):\n    raise error\n", multiprocessing.resource_sharer.__file__, "exec"), sharer)
    for error in (EOFError(), ConnectionResetError(), ValueError("a bug in the sharer")):
        try:
            sharer["serve"](error)
        except Exception as caught:
            hook(type(caught), caught, caught.__traceback__)
    try:
        raise EOFError("elsewhere")
    except EOFError as caught:
        hook(type(caught), caught, caught.__traceback__)
    assert seen == [ValueError, EOFError]
