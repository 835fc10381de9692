"""The embedded shapes data set is written whole or not at all: a generation killed midway leaves no partial set
(a glob over `train-*.tar` would read one), a set cut by a kill before generation was atomic is generated again,
and a new generation replaces what an earlier one wrote while keeping the user's other files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from hf_unified.training.data import synthetic_data

SETTINGS = dict(num_train=12, num_eval=2, num_train_shards=3, image_size=8)

KILLED_MIDWAY = """
import os, signal
from hf_unified.training.data import synthetic_data

members = 0
add_member = synthetic_data._add_member

def add_member_then_die(tar, name, payload):  # SIGKILL while the second training shard is written
    global members
    add_member(tar, name, payload)
    members += 1
    if members == 4 * 5:
        os.kill(os.getpid(), signal.SIGKILL)

synthetic_data._add_member = add_member_then_die
synthetic_data.ensure_dataset({output!r}, **{settings!r})
"""


def files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_generation_killed_midway_leaves_no_partial_set_and_the_next_run_generates_it_whole(tmp_path):
    output = tmp_path / "data" / "shapes"
    code = KILLED_MIDWAY.format(output=str(output), settings=SETTINGS)
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not output.exists()  # before: train-00000.tar, half of train-00001.tar, no info.json

    synthetic_data.ensure_dataset(output, **SETTINGS)
    assert synthetic_data.is_complete(output)
    expected = synthetic_data.generate(tmp_path / "reference", **SETTINGS)
    assert files(output) == files(expected)  # byte-identical to an uninterrupted generation
    debris = [p.name for p in (tmp_path / "data").iterdir() if p.name.startswith(".")]
    assert len(debris) == 1 and debris[0].startswith(".shapes.")  # the killed staging folder, hidden, never read


def test_a_set_cut_before_generation_was_atomic_is_generated_again_and_other_files_kept(tmp_path):
    output = synthetic_data.generate(tmp_path / "shapes", **{**SETTINGS, "num_train_shards": 4})
    (output / "my-notes.txt").write_text("mine")
    (output / "train-00002.tar").unlink()  # a kill in the middle of an earlier, non-atomic generation
    (output / "info.json").write_text((output / "info.json").read_text()[:40])  # ... or of its info.json
    assert not synthetic_data.is_complete(output)

    synthetic_data.ensure_dataset(output, **SETTINGS)
    assert synthetic_data.is_complete(output)
    assert json.loads((output / "info.json").read_text())["num_train_shards"] == 3
    # The fourth shard of the earlier generation is not left for a glob to pick up; the user's file stays.
    assert sorted(os.listdir(output)) == [
        "classes.json",
        "eval-00000.tar",
        "info.json",
        "my-notes.txt",
        "train-00000.tar",
        "train-00001.tar",
        "train-00002.tar",
    ]
    assert (output / "my-notes.txt").read_text() == "mine"
    before = files(output)
    synthetic_data.ensure_dataset(output, **SETTINGS)  # a whole set is left as it is
    assert files(output) == before
