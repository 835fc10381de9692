"""Shared test fixtures: offline Hub, the fixtures' tiny CLIP tokenizer, a Python without this package."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# torch.compile's FX graph cache is keyed without the vector width inductor writes its C++ for, which
# ATEN_CPU_CAPABILITY chooses: a graph compiled for AVX-512 (16 floats a vector) and reused under
# ATEN_CPU_CAPABILITY=avx2 (8) computes wrong values, and the other way round. One cache per capability, so that a
# run emulating CI's CPU on a developer's machine reads no graph of another capability (and leaves none behind).
_CAPABILITY = os.environ.get("ATEN_CPU_CAPABILITY", "native").lower()
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"torchinductor-tests-{_CAPABILITY}")
)

REPO_ROOT = Path(__file__).resolve().parents[1]
# The tests are grouped as the package is (core/, training/, hub/, conversion/, benchmarks/; the project-wide ones
# here). Helpers shared by every group live in this folder (on sys.path as the rootdir conftest's); a few test modules
# reuse another group's fixtures by module name (test_hub_models.save_tiny_unicl, ...), so each group folder is on the
# path too (every test module's name is unique).
TEST_GROUPS = ("core", "training", "hub", "conversion", "benchmarks")
for _group in TEST_GROUPS:
    if str(REPO_ROOT / "tests" / _group) not in sys.path:
        sys.path.append(str(REPO_ROOT / "tests" / _group))
SHARED_DIR = REPO_ROOT.parent / "shared"
TINY_TOKENIZER_DIR = SHARED_DIR / "fixtures" / "tokenizer-tiny-clip-bpe"

# Prepended to code run by `run_without_package`: any import of hf_unified fails, as on a machine that only has
# transformers and the downloaded folder.
_BLOCK_PACKAGE = """
import importlib.abc, sys
class _NoHfUnified(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hf_unified" or name.startswith("hf_unified."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked for this test)")
        return None
sys.meta_path.insert(0, _NoHfUnified())
try:
    import hf_unified
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("hf_unified is importable: the test would not show that remote code works")
"""


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"{SHARED_DIR} is missing")
    return SHARED_DIR


@pytest.fixture(scope="session")
def tiny_tokenizer_dir() -> Path:
    """The fixtures' tiny CLIP BPE tokenizer folder (`vocab.json`, `merges.txt`); skips where either is missing."""
    missing = [name for name in ("vocab.json", "merges.txt") if not (TINY_TOKENIZER_DIR / name).is_file()]
    if missing:
        pytest.skip(f"{TINY_TOKENIZER_DIR} has no {' or '.join(missing)}")
    return TINY_TOKENIZER_DIR


@pytest.fixture(scope="session")
def tiny_clip_tokenizer(tiny_tokenizer_dir):
    """The fixtures' 600-id CLIP BPE tokenizer: bos 598, eos 599 (the largest id), padded with eos."""
    from hf_unified.tokenization import clip_tokenizer_from_files

    return clip_tokenizer_from_files(tiny_tokenizer_dir / "vocab.json", tiny_tokenizer_dir / "merges.txt")


def run_without_package(code: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh Python where `import hf_unified` fails; raises with its output if it fails."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_MODULES_CACHE"] = str(Path(cwd) / "hf_modules")
    script = _BLOCK_PACKAGE + "\n" + textwrap.dedent(code)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(name="run_without_package")
def run_without_package_fixture():
    return run_without_package


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_gloo_workers(target, world_size: int, *args, timeout: float = 600) -> list[dict[str, np.ndarray]]:
    """Runs `target(rank, world_size, port, result_file, *args)` in `world_size` spawned processes that form a gloo
    group on 127.0.0.1, and returns what each rank saved with `np.savez(result_file, **arrays)`.

    Results travel through files, not through a `torch.multiprocessing` queue: a tensor put on such a queue is shared
    by file descriptor and is lost when the worker exits before the parent has read it (a race on a busy machine).
    """
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        files = [os.path.join(folder, f"rank{rank}.npz") for rank in range(world_size)]
        processes = [
            context.Process(target=target, args=(rank, world_size, port, files[rank], *args))
            for rank in range(world_size)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout)
        for rank, process in enumerate(processes):
            if process.is_alive():
                process.kill()
                raise AssertionError(f"rank {rank} did not finish within {timeout} s")
            if process.exitcode != 0:
                raise AssertionError(f"rank {rank} exited with code {process.exitcode}")
        results = []
        for file in files:
            with np.load(file) as arrays:
                results.append({name: arrays[name] for name in arrays.files})
        return results


@pytest.fixture(name="run_gloo_workers")
def run_gloo_workers_fixture():
    return run_gloo_workers
