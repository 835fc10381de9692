"""Multi-node: the SLURM launcher starts `accelerate launch --num_machines/--machine_rank/--main_process_ip` once
per node, and the data stream is split by global rank. Two "machines" of two CPU processes each run on this host:
`srun` and `scontrol` are stand-ins, everything else (the sbatch script, accelerate's launcher, torchrun's static
rendezvous, gloo, the data pipeline) is the real thing."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hf_unified.training import data as data_lib
from hf_unified.training.data import synthetic_data

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = REPO_ROOT / "training" / "slurm" / "train_multi_node.sbatch"
MACHINES, PROCESSES_PER_MACHINE, BATCH_SIZE = 2, 2, 4

# Runs as each training process: where it sits in the world, and which rows its share of the stream holds.
PROBE = """
import json, sys
sys.path.insert(0, {repo!r})
import torch
from accelerate import Accelerator
from torchvision.transforms import v2
from hf_unified.training import data as data_lib
from hf_unified.tokenization import train_caption_tokenizer

config = json.load(open(sys.argv[sys.argv.index("--config") + 1]))
accelerator = Accelerator(cpu=True)
rank, world = accelerator.process_index, accelerator.num_processes
specs = [data_lib.SourceSpec(config["train_data"])]
rows = [
    (row["shard"] + "/" + row["key"], row["text"])
    for row in data_lib.build_stream(specs, 0, rank, world, shuffle_buffer_size=8)
]
# The trainer's batches of this rank, built from this rank's share of the stream.
transform = data_lib.ImageFields(v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))
tokenizer = train_caption_tokenizer([text for _, text in rows] * 2, vocab_size=300)
batches = data_lib.TrainStream(
    data_lib.build_stream(specs, 0, rank, world, shuffle_buffer_size=8),
    data_lib.DecodeConfig(transform, with_labels=False), tokenizer, 16, batch_size={batch_size}, seed=0, rank=rank,
)
first_batch = next(iter(batches))["texts"]
record = dict(rank=rank, world=world, local=accelerator.local_process_index, rows=rows, batch=first_batch,
              argv=sys.argv[1:])
with open(f"{{config['output']}}/rank{{rank}}.json", "w") as handle:
    json.dump(record, handle)
"""

FAKE_SRUN = """#!/bin/bash
# srun: the command once per node of the allocation, concurrently, each with its SLURM_NODEID.
while [[ "$1" == --* ]]; do shift; done
pids=()
for node in $(seq 0 $((SLURM_NNODES - 1))); do
    SLURM_NODEID=$node "$@" > "$FAKE_LOGS/node$node.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""

FAKE_SCONTROL = """#!/bin/bash
# scontrol show hostnames: the allocation's nodes, all on this host.
echo 127.0.0.1
echo 127.0.0.1
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_slurm_launcher_runs_two_machines_and_the_stream_is_split_by_global_rank(tmp_path):
    shapes = synthetic_data.generate(tmp_path / "shapes", num_train=24, num_eval=4, num_train_shards=4, image_size=16)
    output = tmp_path / "output"
    output.mkdir()
    config = tmp_path / "probe_config.json"
    config.write_text(json.dumps({"train_data": f"{shapes}/train-*.tar", "output": str(output)}))
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent(PROBE.format(repo=str(REPO_ROOT), batch_size=BATCH_SIZE)))
    bin_dir, logs = tmp_path / "bin", tmp_path / "logs"
    bin_dir.mkdir()
    logs.mkdir()
    _executable(bin_dir / "srun", FAKE_SRUN)
    _executable(bin_dir / "scontrol", FAKE_SCONTROL)

    environ = {
        **os.environ,
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "SLURM_NNODES": str(MACHINES),
        "SLURM_JOB_NODELIST": "node[1-2]",
        "GPUS_PER_NODE": str(PROCESSES_PER_MACHINE),
        "MAIN_PROCESS_PORT": str(_free_port()),
        "TRAINING_SCRIPT": str(probe),
        "ACCELERATE_CONFIG": str(REPO_ROOT / "training" / "accelerate" / "multi_node.yaml"),
        "FAKE_LOGS": str(logs),
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(
        ["bash", str(LAUNCHER), str(config), "--extra_flag", "1"],
        cwd=tmp_path,  # the launcher writes logs/ where it runs
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    node_logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(logs.iterdir()))
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{node_logs}"

    records = [json.loads((output / f"rank{rank}.json").read_text()) for rank in range(MACHINES * 2)]
    assert [(r["rank"], r["world"], r["local"]) for r in records] == [(0, 4, 0), (1, 4, 1), (2, 4, 0), (3, 4, 1)]
    assert all(r["argv"] == ["--config", str(config), "--extra_flag", "1"] for r in records)
    # Every row of the stream is read by exactly one process of the four, and each trains on its own rows.
    specs = [data_lib.SourceSpec(f"{shapes}/train-*.tar")]
    whole = [
        [row["shard"] + "/" + row["key"], row["text"]]
        for row in data_lib.build_stream(specs, 0, 0, 1, shuffle_buffer_size=8)
    ]
    shares = [r["rows"] for r in records]
    assert len(whole) == 24 and all(shares)
    assert sorted(row for share in shares for row in share) == sorted(whole)
    for record in records:
        assert len(record["batch"]) == BATCH_SIZE
        assert set(record["batch"]) <= {text for _, text in record["rows"]}


@pytest.mark.parametrize("missing", ["SLURM_NNODES"])
def test_slurm_launcher_outside_slurm_says_so(tmp_path, missing):
    environ = {k: v for k, v in os.environ.items() if k != missing}
    result = subprocess.run(
        ["bash", str(LAUNCHER), "training/configs/unicl-tiny.yaml"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "run under sbatch/srun (SLURM_NNODES is not set)" in result.stderr
