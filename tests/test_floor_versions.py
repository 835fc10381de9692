"""Declared versions are tested versions (issue 26): the floors of `pyproject.toml` are the versions the Hub code was
found to load on (transformers 5.0-5.9 copy only a folder's direct imports, 5.10-5.19 lack `SubConfigSpec`, 5.20
switches torch < 2.6 off), and a fresh environment at exactly those floors runs the core tests and the remote-code
loads.

The environment test downloads torch (about 3 GB with its CUDA libraries from PyPI), so it runs only when asked:

    HF_UNIFIED_FLOOR_TEST=1 python -m pytest -q tests/test_floor_versions.py
    HF_UNIFIED_FLOOR_VENV=/tmp/floor HF_UNIFIED_FLOOR_TEST=1 ...   # keep (and reuse) the environment there
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
# torchvision is built against one torch: the floor's build.
TORCHVISION_OF_TORCH = {"2.6": "0.21"}
# The core models, the native export, the handler, the toolkit's route and the Hub loads without the package.
FLOOR_TESTS = [
    "tests/core/test_unicl.py",
    "tests/core/test_uniclip.py",
    "tests/core/test_msclip.py",
    "tests/hub/test_hub_models.py",
    "tests/hub/test_export.py",
    "tests/hub/test_endpoint.py",
    "tests/hub/test_serving_routes.py",
    "tests/hub/test_endpoint_server.py",
]
# These call `activation_checkpointing_enable`, the name transformers gave gradient checkpointing after 5.20; the
# trainer calls `gradient_checkpointing_enable`, which both have (test_gradient_checkpointing_at_the_floor below).
NEWER_API_TESTS = "not gradient_checkpointing"


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def declared_floors() -> dict[str, str]:
    """`{"torch": "2.6", "transformers": "5.20", ...}`: the `>=` bound of each core dependency."""
    floors = {}
    for line in pyproject()["project"]["dependencies"]:
        requirement = Requirement(line)
        floors.update((requirement.name, s.version) for s in requirement.specifier if s.operator == ">=")
    return floors


def test_declared_floors_are_the_versions_the_hub_code_loads_on():
    floors = declared_floors()
    assert floors["transformers"] == "5.20" and floors["torch"] == "2.6"
    assert floors["torch"] in TORCHVISION_OF_TORCH
    train = pyproject()["project"]["optional-dependencies"]["train"]
    torchvision = next(Requirement(line) for line in train if line.startswith("torchvision"))
    assert f">={TORCHVISION_OF_TORCH[floors['torch']]}" in str(torchvision.specifier)


@pytest.mark.skipif(
    os.environ.get("HF_UNIFIED_FLOOR_TEST") != "1",
    reason="set HF_UNIFIED_FLOOR_TEST=1 to install the floor versions in a fresh environment (downloads torch)",
)
def test_core_tests_and_remote_code_loads_pass_at_the_floor_versions(tmp_path):
    floors = declared_floors()
    folder = Path(os.environ.get("HF_UNIFIED_FLOOR_VENV") or tmp_path / "floor")
    python = folder / "bin" / "python"
    if not python.is_file():
        venv.create(folder, with_pip=True)
    pins = [
        f"torch=={floors['torch']}.0",
        f"torchvision=={TORCHVISION_OF_TORCH[floors['torch']]}.0",
        f"transformers=={floors['transformers']}.0",
    ]
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *pins, "-e", f"{ROOT}[train]", "pytest", "pytest-timeout"],
        check=True,
        timeout=3600,
    )
    versions = subprocess.run(
        [str(python), "-c", "import torch, transformers; print(torch.__version__, transformers.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert versions[0].split("+")[0] == f"{floors['torch']}.0" and versions[1] == f"{floors['transformers']}.0"
    done = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", NEWER_API_TESTS, *FLOOR_TESTS],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    done = subprocess.run(
        [str(python), str(Path(__file__)), "--gradient-checkpointing"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0 and "checkpointed gradients equal" in done.stdout, done.stdout + done.stderr


def check_gradient_checkpointing() -> None:
    """The trainer's call (`gradient_checkpointing_enable`) gives the gradients of the plain model, on every type."""
    import torch

    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    from tiny_models import batch, tiny_model

    for model_type in ("unicl", "uniclip", "msclip"):
        gradients = []
        for checkpointed in (False, True):
            model = tiny_model(model_type).train()
            if checkpointed:
                model.gradient_checkpointing_enable()
                assert model.is_gradient_checkpointing, model_type
            inputs = batch(4, views=2 if model_type == "uniclip" else 0)
            model(**inputs, return_loss=True).loss.backward()
            gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-5, atol=1e-6)
    print("checkpointed gradients equal")


if __name__ == "__main__" and sys.argv[1:] == ["--gradient-checkpointing"]:
    check_gradient_checkpointing()
