"""The Inference Endpoints files of a pushed custom-code folder: `handler.py` and `requirements.txt`.

`handler.py` is `endpoint_handler.py` of this subpackage, copied byte for byte: it imports only transformers, torch,
Pillow and the folder's own `image_processing.py` (the Hub code every custom-code folder holds), so it is a file of the
pushed repository, importable there and never as part of this package (as the Space's `space_app.py`).
`requirements.txt` lists what the folder's code needs at run time: the core dependencies of the installed hf-unified
distribution (the same pins as `pip install hf-unified`, without any extra), so that an endpoint image with an older
transformers upgrades before loading the code.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from packaging.requirements import Requirement

HANDLER_FILE = "handler.py"
REQUIREMENTS_FILE = "requirements.txt"
DISTRIBUTION = "hf-unified"


def handler_source() -> bytes:
    """The bytes of `handler.py` (this subpackage's `endpoint_handler.py`)."""
    return (Path(__file__).with_name("endpoint_handler.py")).read_bytes()


def runtime_requirements(extra: tuple[str, ...] = ()) -> list[str]:
    """The core requirements of the hf-unified distribution (no extras), plus `extra` lines.

    Raises:
        RuntimeError: hf-unified is not installed as a distribution (run `pip install -e .` in the checkout).
    """
    try:
        declared = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            f"the {DISTRIBUTION} distribution is not installed, so its runtime requirements are unknown: "
            "install it (`pip install -e .` in a checkout) before pushing"
        ) from None
    core = [str(Requirement(line)) for line in declared if Requirement(line).marker is None]
    return core + list(extra)


def endpoint_files() -> dict[str, bytes]:
    """`{"handler.py": ..., "requirements.txt": ...}` for a custom-code model folder."""
    requirements = "".join(f"{line}\n" for line in runtime_requirements())
    return {HANDLER_FILE: handler_source(), REQUIREMENTS_FILE: requirements.encode()}


__all__ = ["HANDLER_FILE", "REQUIREMENTS_FILE", "endpoint_files", "handler_source", "runtime_requirements"]
