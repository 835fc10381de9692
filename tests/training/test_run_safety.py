"""A run's folder is never lost (issue 27): no export over a run, one run per output_dir with its own checkpoints and
settings, a checkpoint on SIGTERM / SIGUSR1 that resumes bit-identical, and saves that fail whole (a full disk, a card
that cannot be written, a symlinked scratch folder, a torn log, a half-written tokenizer).

Every test trains a tiny model for a few steps in this process; a subprocess only where a signal must reach a whole
process group."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import (
    ROOT,
    TINY_TEXT,
    TINY_VISION,
    log_records,
    reset_accelerate_state,
    train_script,
    write_config,
)

from hf_unified.training.engine import checkpoint as checkpoints
from hf_unified.training.engine.preemption import REQUEUE_EXIT_CODE, RunStopped
from hf_unified.training.runs import ADJUSTABLE_SETTINGS, RunFolderError
from hf_unified.training.trainer import SaveError, Trainer

pytest_plugins = ("training_fixtures",)  # shapes, fresh_accelerate_state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

TRAIN = str(ROOT / "training" / "train.py")
SBATCH = ROOT / "training" / "slurm" / "train_multi_node.sbatch"
MAX_STEPS = 4


def train(config: Path, out: Path, *flags: str) -> dict:
    return train_script.main(["--config", str(config), "--output_dir", str(out), *flags])


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def debris(*folders: Path) -> list[str]:
    """Hidden staging leftovers (files.StagedFolder, write_file) in these folders."""
    return [path.name for folder in folders for path in folder.iterdir() if path.name.startswith(".")]


# ----------------------------------------------------------------------------------------------------------------
# 1. No deletion without consent: the export target


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("parent", "contains the source model folder"),
        ("output_dir", "is the source model folder"),
        ("inside", "is inside the source model folder"),
    ],
)
def test_an_export_overlapping_output_dir_is_refused_before_training_and_deletes_nothing(
    tmp_path, shapes, where, reason
):
    """Before the fix, `--export_clip` at output_dir's parent replaced it after training (overwrite=True): the model,
    its checkpoints and every sibling run deleted, exit 0."""
    config = write_config(tmp_path, shapes, do_eval=False)
    out = tmp_path / "runs" / "run"
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    sibling = tmp_path / "runs" / "other-run"
    sibling.mkdir()
    (sibling / "model.safetensors").write_bytes(b"another run's weights")
    target = {"parent": out.parent, "output_dir": out, "inside": out / "clip"}[where]
    with pytest.raises(RunFolderError) as refused:
        train(config, out, "--max_steps", "1", "--export_clip", str(target), "--overwrite_export_clip")
    message = str(refused.value)
    assert message.startswith("--export_clip: export target") and reason in message and "\n" not in message
    assert names(out) == ["notes.txt"] and (sibling / "model.safetensors").read_bytes() == b"another run's weights"


def test_an_existing_export_folder_needs_the_flag_and_another_run_is_never_replaced(tmp_path, shapes):
    config = write_config(tmp_path, shapes, do_eval=False)
    target = tmp_path / "clip"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(RunFolderError, match=r"clip exists: choose a new folder .*\(--overwrite_export_clip\)"):
        train(config, tmp_path / "run", "--max_steps", "1", "--export_clip", str(target))
    (target / "checkpoint-5").mkdir()  # the export target holds a training run
    with pytest.raises(
        RunFolderError, match=r"holds training checkpoints .* not replaced, even with --overwrite_export"
    ):
        train(config, tmp_path / "run", "--max_steps", "1", "--export_clip", str(target), "--overwrite_export_clip")
    assert names(target) == ["checkpoint-5", "keep.txt"] and not (tmp_path / "run" / "training_log.jsonl").exists()


# ----------------------------------------------------------------------------------------------------------------
# 2. One run per output_dir, its own checkpoints, its settings


def test_a_second_run_on_a_folder_in_use_is_refused_and_a_dead_runs_lock_taken_over(tmp_path, shapes, capsys):
    from test_files import _holder  # another process holding the folder's lock, as a running trainer does

    config = write_config(tmp_path, shapes, do_eval=False)
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        with pytest.raises(RunFolderError) as refused:
            train(config, out, "--max_steps", "1")
        assert f"is in use by another run: pid {holder.pid} on host" in str(refused.value)
        assert names(out) == ["run.lock"]  # nothing of this run was written
    finally:
        holder.kill()  # a run killed hard leaves its lock behind
        holder.wait()
    train(config, out, "--max_steps", "1")
    assert f"took over the stale lock {out / 'run.lock'} of pid {holder.pid}" in capsys.readouterr().out
    assert "run.lock" not in names(out) and (out / "model.safetensors").exists()  # released at the end


def test_a_folder_with_another_runs_checkpoints_refuses_a_new_run_and_latest_names_that_run(tmp_path, shapes):
    """Before the fix, the new run's rotation deleted its own checkpoints (lower steps), and `--resume_from_checkpoint
    latest`, as the stop message advises, resumed the old run under the new settings."""
    config = write_config(tmp_path, shapes, do_eval=False, save_steps=2)
    out = tmp_path / "run"
    train(config, out, "--max_steps", "4", "--stop_at_step", "2")
    old_run = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["run"]["id"]
    before = {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()}

    with pytest.raises(RunFolderError, match=rf"holds checkpoints of run {old_run} \(checkpoint-2\): continue it"):
        train(config, out, "--max_steps", "4", "--seed", "1")
    with pytest.raises(checkpoints.CheckpointError) as refused:
        train(config, out, "--max_steps", "4", "--seed", "1", "--resume_from_checkpoint", "latest")
    message = str(refused.value)
    assert f"it belongs to run {old_run} (started " in message and "seed 0 -> 1" in message and "\n" not in message
    assert {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()} == before

    train(config, out, "--max_steps", "4", "--seed", "1", "--overwrite_output_dir")  # told: start over there
    runs = {json.loads((path / "trainer_state.json").read_text())["run"]["id"] for path in out.glob("checkpoint-*")}
    assert len(runs) == 1 and old_run not in runs and (out / "model.safetensors").exists()


def test_a_folder_holding_an_earlier_runs_model_refuses_a_new_run_unless_told(tmp_path, shapes):
    """An earlier run that saved no checkpoint left only its model: before the fix a new run there replaced it at its
    final save, without a flag."""
    config = write_config(tmp_path, shapes, do_eval=False)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"model_type": "unicl"}')
    (out / "model.safetensors").write_bytes(b"the earlier run's weights")
    with pytest.raises(RunFolderError) as refused:
        train(config, out, "--max_steps", "1")
    assert str(refused.value) == (
        f"output_dir {out} holds the model of an earlier run: train it further in another output_dir with "
        f"--model_name_or_path {out}, start over there with --overwrite_output_dir, or choose another output_dir"
    )
    assert names(out) == ["config.json", "model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == b"the earlier run's weights"
    train(config, out, "--max_steps", "1", "--overwrite_output_dir")  # told: the new model replaces it
    assert set(weights(out)) and "run.lock" not in names(out)


def test_rotation_deletes_only_this_runs_checkpoints(tmp_path):
    from accelerate import Accelerator

    from hf_unified import UniCLConfig, UniCLModel
    from hf_unified.training.arguments import TrainArguments
    from hf_unified.training.optim import build_optimizer, build_scheduler

    model = UniCLModel(
        UniCLConfig(projection_dim=8, vision_config=TINY_VISION, text_config={**TINY_TEXT, "vocab_size": 40})
    )
    args = TrainArguments(output_dir=str(tmp_path), max_steps=10, warmup_steps=2)
    accelerator = Accelerator(cpu=True)
    optimizer = build_optimizer(model, args)
    scheduler = build_scheduler(optimizer, args)

    def write(step: int, run: str) -> None:
        checkpoints.write_checkpoint(
            tmp_path,
            step,
            accelerator=accelerator,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            trainer_state={"nonfinite_steps": 0, "run": {"id": run}},
            rank_state={"stream": {}},
            keep=2,
        )

    write(100, "earlier")
    write(200, "earlier")
    for step in (2, 4, 6):
        write(step, "this")
    found = {path.name: checkpoints.checkpoint_run_id(path) for path in checkpoints.list_checkpoints(tmp_path)}
    assert found == {
        "checkpoint-4": "this",
        "checkpoint-6": "this",
        "checkpoint-100": "earlier",
        "checkpoint-200": "earlier",
    }
    assert debris(tmp_path) == []


def _model_config(heads: int) -> str:
    return json.dumps(
        {
            "projection_dim": 16,
            "vision_config": TINY_VISION,
            "text_config": {**TINY_TEXT, "num_attention_heads": heads},
        }
    )


def test_resume_refuses_other_settings_and_applies_a_new_learning_rate_when_allowed(tmp_path, shapes):
    """Before the fix a new learning rate on resume was silently ignored (the checkpoint's optimizer and schedule
    kept the old one), and a changed head count with the same shapes was accepted."""
    from transformers import get_scheduler

    config = write_config(tmp_path, shapes, do_eval=False, save_steps=2)
    out = tmp_path / "run"
    train(config, out, "--max_steps", str(MAX_STEPS), "--stop_at_step", "2")
    resume = ["--max_steps", str(MAX_STEPS), "--resume_from_checkpoint", "latest"]

    for allowed in ([], ["--allow_setting_changes"]):  # the flag never allows what changes the computation
        with pytest.raises(checkpoints.CheckpointError, match=r"model_config.text_config.num_attention_heads 2 -> 4"):
            train(config, out, *resume, "--model_config", _model_config(heads=4), *allowed)
    with pytest.raises(checkpoints.CheckpointError, match=r"learning_rate 0.001 -> 0.0005; pass --allow_setting"):
        train(config, out, *resume, "--learning_rate", "5e-4")

    train(config, out, *resume, "--learning_rate", "5e-4", "--allow_setting_changes")
    records = {record["step"]: record for record in log_records(out)}
    probe = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)  # the new rate's schedule
    schedule = get_scheduler("cosine", probe, num_warmup_steps=1, num_training_steps=MAX_STEPS)
    for step in range(1, MAX_STEPS + 1):
        probe.step()
        schedule.step()
        if step > 2:  # the resumed steps run at the new rate, from the restored step on
            assert records[step]["lr"] == pytest.approx(schedule.get_last_lr()[0], rel=1e-12), step
    assert records[2]["lr"] == pytest.approx(1e-3 * 0.75)  # the first two steps ran at 1e-3


def test_the_settings_a_resume_may_change_are_the_ones_the_flag_names():
    from hf_unified.training.arguments import TrainArguments

    help_text = TrainArguments.__dataclass_fields__["allow_setting_changes"].metadata["help"]
    assert all(name in help_text for name in ADJUSTABLE_SETTINGS)
    assert all(hasattr(TrainArguments(), name) for name in ADJUSTABLE_SETTINGS)


# ----------------------------------------------------------------------------------------------------------------
# 3. Preemption: SIGTERM / SIGUSR1 -> a checkpoint at the next step, exit 75; Ctrl-C one line


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shapes) -> tuple[Path, dict]:
    """The config of the signal tests and the final weights of an uninterrupted run of it."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    config = write_config(folder, shapes, do_eval=False, crop_scale_min=0.6)
    reset_accelerate_state()
    train(config, folder / "run", "--max_steps", str(MAX_STEPS))
    reset_accelerate_state()
    return config, weights(folder / "run")


def _signal_at_step(monkeypatch, step: int, send) -> None:
    """Sends a signal while optimizer step `step` runs (as a scheduler would, at any moment)."""
    original = Trainer._optimizer_step

    def step_with_signal(self, current):
        if current == step:
            send()
        return original(self, current)

    monkeypatch.setattr(Trainer, "_optimizer_step", step_with_signal)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_at_a_random_step_checkpoints_and_the_resume_ends_bit_identical(
    tmp_path, uninterrupted, monkeypatch, name
):
    config, expected = uninterrupted
    out = tmp_path / "run"
    step = random.SystemRandom().randint(1, MAX_STEPS - 1)
    _signal_at_step(monkeypatch, step, lambda: os.kill(os.getpid(), getattr(signal, name)))
    with pytest.raises(RunStopped) as stopped:
        train(config, out, "--max_steps", str(MAX_STEPS))
    assert stopped.value.step == step and stopped.value.checkpoint == out / f"checkpoint-{step}", step
    assert f"{name} received: stopped at step {step} of {MAX_STEPS}" in str(stopped.value)
    assert not (out / "model.safetensors").exists() and "run.lock" not in names(out)
    monkeypatch.undo()

    reset_accelerate_state()
    train(config, out, "--max_steps", str(MAX_STEPS), "--resume_from_checkpoint", "latest")
    resumed = weights(out)
    assert resumed.keys() == expected.keys()
    for key in expected:
        assert torch.equal(resumed[key], expected[key]), (key, step)
    assert [record["step"] for record in log_records(out)] == list(range(1, MAX_STEPS + 1))


STOPPED_BY_THE_SCHEDULER = """
import os, runpy, signal, sys
from hf_unified.training.trainer import Trainer
original = Trainer._optimizer_step
def step(self, current):
    if current == 2:  # like SLURM: the signal goes to every process of the job, DataLoader workers included
        os.killpg(os.getpgrp(), signal.SIGTERM)
    return original(self, current)
Trainer._optimizer_step = step
sys.argv = [{train!r}] + sys.argv[1:]
runpy.run_path({train!r}, run_name="__main__")
"""


def test_sigterm_to_the_whole_job_exits_with_the_requeue_code_and_a_checkpoint(tmp_path, uninterrupted):
    config, _ = uninterrupted
    out = tmp_path / "run"
    wrapper = tmp_path / "stopped.py"
    wrapper.write_text(STOPPED_BY_THE_SCHEDULER.format(train=TRAIN))
    done = subprocess.run(
        [sys.executable, str(wrapper), "--config", str(config), "--output_dir", str(out)]
        + ["--max_steps", str(MAX_STEPS), "--num_workers", "1"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,  # its own process group: the signal reaches it and its worker only
    )
    assert done.returncode == REQUEUE_EXIT_CODE == 75, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"train.py: SIGTERM received: stopped at step 2 of {MAX_STEPS}, checkpoint {out / 'checkpoint-2'} written; "
        "resume with --resume_from_checkpoint latest"
    )
    assert "Traceback" not in done.stderr and "DataLoader worker" not in done.stderr
    assert checkpoints.read_checkpoint(out / "checkpoint-2", rank=0, world_size=1).step == 2
    assert "run.lock" not in names(out)


def test_ctrl_c_ends_the_run_with_one_line_and_releases_the_folder(tmp_path, uninterrupted, monkeypatch, capsys):
    config, _ = uninterrupted
    out = tmp_path / "run"
    _signal_at_step(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGINT))
    monkeypatch.setattr(sys, "argv", [TRAIN, "--config", str(config), "--output_dir", str(out)])
    assert train_script._run() == 130
    err = capsys.readouterr().err
    assert err.strip() == (
        "train.py: interrupted (Ctrl-C): stopped without a checkpoint of this step; continue from the last one with "
        "--resume_from_checkpoint latest"
    )
    assert "run.lock" not in names(out)


FAKE_SLURM = {
    "srun": '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nSLURM_NODEID=0 exec "$@"\n',
    "scontrol": '#!/bin/bash\nif [ "$1" = show ]; then echo node-1; else echo "$@" >> "$FAKE_LOG"; fi\n',
    "scancel": '#!/bin/bash\necho scancel "$@" >> "$FAKE_LOG"\ntouch "$FAKE_STOP"\n',
    # the training processes: note whether SIGUSR1 reaches the launcher, then end as train.py would
    "accelerate": (
        f"#!{sys.executable}\n"
        "import os, signal, sys, time\n"
        "log = open(os.environ['FAKE_LOG'], 'a')\n"
        "ignored = signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN\n"
        "print('launcher', 'ignores-usr1' if ignored else 'dies-on-usr1', *sys.argv[1:], file=log, flush=True)\n"
        "open(os.environ['FAKE_STARTED'], 'w').close()\n"
        "if os.environ.get('FAKE_WAIT_FOR_STOP'):\n"
        "    while not os.path.exists(os.environ['FAKE_STOP']):\n"
        "        time.sleep(0.05)\n"
        "sys.exit(int(os.environ['FAKE_STATUS']))\n"
    ),
}


@pytest.mark.parametrize(
    ("status", "usr1", "requeued"),
    [(75, False, True), (0, False, False), (1, False, False), (1, True, True)],
    ids=["stopped-75", "finished", "crashed", "usr1-passed-on"],
)
def test_the_sbatch_script_requeues_a_stopped_run_and_resumes_it(tmp_path, status, usr1, requeued):
    """The sbatch script under fake srun / scontrol / scancel / accelerate: status 75 (or a time-limit SIGUSR1 it
    passed on) requeues the job; a finished or crashed run is not requeued; a requeued job resumes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in FAKE_SLURM.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "slurm.log"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SLURM_NNODES": "1",
        "SLURM_JOB_NODELIST": "node-1",
        "SLURM_JOB_ID": "42",
        "SLURM_RESTART_COUNT": "1",
        "GPUS_PER_NODE": "1",
        "FAKE_LOG": str(log),
        "FAKE_STOP": str(tmp_path / "stop"),
        "FAKE_STARTED": str(tmp_path / "started"),
        "FAKE_STATUS": str(status),
        **({"FAKE_WAIT_FOR_STOP": "1"} if usr1 else {}),
    }
    job = subprocess.Popen(
        ["bash", str(SBATCH), "config.yaml", "--max_steps", "9"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    if usr1:
        while not (tmp_path / "started").exists() and job.poll() is None:
            time.sleep(0.05)
        job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 sends before the time limit
    _, err = job.communicate(timeout=120)
    lines = log.read_text().splitlines()
    launcher = lines[0].split()
    assert launcher[:4] == ["launcher", "ignores-usr1", "launch", "--config_file"], lines
    # the training script's flags, and --resume_from_checkpoint latest: SLURM_RESTART_COUNT 1 means a requeued job
    assert launcher[-6:] == ["--config", "config.yaml", "--max_steps", "9", "--resume_from_checkpoint", "latest"]
    assert ("requeue 42" in lines) == requeued, (lines, err)
    assert ("scancel --signal=USR1 42" in lines) == usr1, lines
    assert job.returncode == (0 if requeued else status), err


def test_the_sbatch_script_uses_the_trainers_requeue_code():
    text = SBATCH.read_text()
    assert f"REQUEUE_EXIT_CODE={REQUEUE_EXIT_CODE}" in text and "#SBATCH --signal=B:USR1@" in text
    assert subprocess.run(["bash", "-n", str(SBATCH)]).returncode == 0


# ----------------------------------------------------------------------------------------------------------------
# 4. Every write atomic, every read tolerant


def test_a_torn_last_log_line_is_dropped_and_counted_on_resume(tmp_path, shapes):
    """Before the fix every resume failed with a JSON error naming no file."""
    config = write_config(tmp_path, shapes, do_eval=False, save_steps=2)
    out = tmp_path / "run"
    train(config, out, "--max_steps", "3", "--stop_at_step", "2")
    with (out / "training_log.jsonl").open("a") as log:
        log.write('{"step": 3, "loss": 2.07')  # a kill while step 3's record was written
    train(config, out, "--max_steps", "3", "--resume_from_checkpoint", "latest")
    records = log_records(out)
    assert [record["step"] for record in records] == [1, 2, 3]
    assert records[2]["log_lines_dropped"] == 1 and "log_lines_dropped" not in records[1]


def test_a_half_written_tokenizer_folder_is_trained_again(tmp_path, shapes):
    """A tokenizer folder cut by a kill (tokenizer.json without its config) used to give "no padding token" on every
    later run; it is now written atomically, and a damaged one is trained again."""
    from transformers import AutoTokenizer

    from hf_unified.tokenization import train_caption_tokenizer

    out = tmp_path / "run"
    train_caption_tokenizer(["a red circle", "a blue square"], vocab_size=300).save_pretrained(out / "tokenizer")
    (out / "tokenizer" / "tokenizer_config.json").unlink()
    assert AutoTokenizer.from_pretrained(out / "tokenizer").pad_token is None  # the damage
    config = write_config(tmp_path, shapes, do_eval=False)
    train(config, out, "--max_steps", "1")
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert tokenizer.pad_token == "<|pad|>" and names(out / "tokenizer") == ["tokenizer.json", "tokenizer_config.json"]
    assert debris(out) == []


def test_a_full_disk_while_the_tokenizer_is_written_says_so_in_one_line_and_leaves_nothing(
    tmp_path, shapes, monkeypatch, capsys
):
    from transformers import PreTrainedTokenizerBase

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", _disk_full("tokenizer.json"))
    config = write_config(tmp_path, shapes, do_eval=False)
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", [TRAIN, "--config", str(config), "--output_dir", str(out), "--max_steps", "1"])
    assert train_script._run() == 1
    assert capsys.readouterr().err.strip() == (
        "train.py: error: OSError: [Errno 28] No space left on device: 'tokenizer.json'"
    )
    assert names(out) == [] and debris(tmp_path) == []  # no half-written tokenizer/, no staging, no lock


def test_a_symlinked_output_dir_saves_resumes_and_keeps_its_link(tmp_path, shapes):
    """Before the fix the final save ended in `Cannot call rmtree on a symbolic link`, and so did every later
    start."""
    scratch = tmp_path / "scratch" / "run"
    scratch.mkdir(parents=True)
    out = tmp_path / "run"
    out.symlink_to(scratch, target_is_directory=True)
    config = write_config(tmp_path, shapes, do_eval=False, save_steps=1)
    train(config, out, "--max_steps", "2", "--stop_at_step", "1")
    train(config, out, "--max_steps", "2", "--resume_from_checkpoint", "latest")
    train(config, out, "--max_steps", "2", "--resume_from_checkpoint", "latest")  # a later start
    assert out.is_symlink() and (scratch / "model.safetensors").exists() and (scratch / "checkpoint-2").is_dir()
    assert "# run: UniCL" in (scratch / "README.md").read_text()  # titled by its folder, not the staging name
    assert debris(tmp_path, scratch.parent, scratch) == []


def _disk_full(file_name: str):
    """A writer that fails as on a full disk, naming `file_name`."""

    def write(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", file_name)

    return write


@pytest.mark.parametrize("where", ["weights", "processor", "card"])
def test_a_failed_final_save_says_what_failed_in_one_line_and_never_loses_the_weights(
    tmp_path, shapes, monkeypatch, capsys, where
):
    """A full disk while the weights are written: one line, nothing left behind. A failure after the weights (the
    processor, the card): before the fix the weights stayed in a hidden staging folder the next run deleted."""
    import transformers.modeling_utils
    from transformers import AutoModel, ProcessorMixin

    import hf_unified.hub.model_card

    target = {
        "weights": (transformers.modeling_utils, "safe_save_file"),
        "processor": (ProcessorMixin, "save_pretrained"),
        "card": (hf_unified.hub.model_card, "write_model_card"),
    }[where]
    monkeypatch.setattr(*target, _disk_full("model.safetensors"))
    config = write_config(tmp_path, shapes, do_eval=False)
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", [TRAIN, "--config", str(config), "--output_dir", str(out), "--max_steps", "2"])
    assert train_script._run() == 1
    [message] = capsys.readouterr().err.strip().splitlines()
    assert "[Errno 28] No space left on device: 'model.safetensors'" in message
    unsaved = [path for path in tmp_path.iterdir() if ".unsaved-" in path.name]
    if where == "weights":
        assert message.startswith(f"train.py: error: could not save the trained model to {out}: writing its weights")
        assert not (out / "model.safetensors").exists() and unsaved == []
    elif where == "processor":
        [kept] = unsaved
        assert message.startswith(f"train.py: error: the final save to {out} failed after the weights were written")
        assert f"the trained model's weights and config are in {kept}" in message
        assert (kept / "model.safetensors").exists() and not (out / "model.safetensors").exists()
    else:
        assert message == (
            f"train.py: error: the model was saved to {out} without its model card: writing README.md failed "
            "(OSError: [Errno 28] No space left on device: 'model.safetensors')"
        )
        assert type(AutoModel.from_pretrained(out)).__name__ == "UniCLModel" and not (out / "README.md").exists()
    assert debris(tmp_path, out) == [] and "run.lock" not in names(out)


def test_a_full_disk_during_a_checkpoint_leaves_no_partial_checkpoint(tmp_path, shapes, monkeypatch):
    config = write_config(tmp_path, shapes, do_eval=False, save_steps=1)
    out = tmp_path / "run"
    real_save = checkpoints.save_file

    def full_at_step_2(tensors, path, *args, **kwargs):
        if Path(path).parent.name == "checkpoint-2":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "save_file", full_at_step_2)
    with pytest.raises(SaveError) as failed:
        train(config, out, "--max_steps", "3")
    message = str(failed.value)
    assert message.startswith(f"could not write checkpoint-2 in {out} (OSError: [Errno 28] No space left on device")
    assert message.endswith(f"nothing of it was left behind, the last one is {out / 'checkpoint-1'}")
    assert [path.name for path in checkpoints.list_checkpoints(out)] == ["checkpoint-1"]
    assert debris(tmp_path, out) == []
