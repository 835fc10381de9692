"""Reading an official `.pth` file without running any code it pickles.

A `.pth` file is a pickle, and a pickle may name any Python callable for the loader to call (`os.system`, `exec`,
`numpy.testing._private.utils.runstring`, ...). The released UniCL and MS-CLIP files need very few globals: tensors and
their storages, `collections.OrderedDict`, and (UniCL) the training run's state saved beside the weights, which holds
numpy scalars or arrays and the yacs `CfgNode` training config. [`load_checkpoint`] allows exactly those, by full name
([`ALLOWED_GLOBALS`]), twice over:

1. before anything is unpickled, the file's pickles are read as opcodes (`pickletools`, which runs nothing) and a file
   that names any other global is refused with one line naming the file and the globals;
2. the file is then read with `torch.load(weights_only=True)` with only those globals added, so torch's restricted
   unpickler enforces the same list again. The yacs `CfgNode` is built as an inert `OrderedDict`, never imported.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

# What `torch.save` writes for tensors (torch's weights_only unpickler builds these itself).
_TENSOR_GLOBALS = (
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    *(
        f"torch.{dtype}Storage"
        for dtype in ("Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
    ),
)
# Plain data in a protocol-2 pickle: bytes are written as `_codecs.encode(text, "latin1")`, a set as `set(list)`.
_DATA_GLOBALS = ("_codecs.encode", "builtins.set")
# numpy data beside the weights (the best accuracy as `np.float64`, an array), as numpy 1 and numpy 2 name it.
_NUMPY_GLOBALS = (
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.ndarray",
    "numpy.dtype",
)
# The training config of the UniCL release (yacs), read as an inert OrderedDict.
_CONFIG_GLOBALS = ("yacs.config.CfgNode",)

ALLOWED_GLOBALS = frozenset(_TENSOR_GLOBALS + _DATA_GLOBALS + _NUMPY_GLOBALS + _CONFIG_GLOBALS)

# Legacy (pre-zip) files are consecutive pickles: magic number, protocol, system info, the object, storage keys.
_LEGACY_PICKLES = 5


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The file pickles a global outside [`ALLOWED_GLOBALS`] (or uses pickle features torch.save never writes); it
    was refused before any of its content was unpickled."""


class _InertConfigNode:
    """Stands in for yacs' `CfgNode`: however the unpickler builds it, the result is an empty `OrderedDict` (a type
    `weights_only` loading fills and builds), so no yacs code is imported or run."""

    def __new__(cls, *args, **kwargs):
        return OrderedDict()


def load_checkpoint(path: str | Path) -> Any:
    """Reads `path` with `torch.load(weights_only=True, map_location="cpu")` after checking that it names no global
    outside [`ALLOWED_GLOBALS`].

    Raises:
        UnsafeCheckpointError: the file names another global, or torch's restricted unpickler refused it; nothing
            from the file was run.
        ModuleNotFoundError: the file holds numpy data and numpy is not installed.
        Exception: whatever torch raises for a file that is not a checkpoint at all (truncated zip, garbage).
    """
    path = Path(path)
    names = pickled_globals(path)
    refused = sorted(names - ALLOWED_GLOBALS)
    if refused:
        raise UnsafeCheckpointError(
            f"{path}: refused to load: it pickles {', '.join(refused)}, which {'is' if len(refused) == 1 else 'are'} "
            "not checkpoint data (allowed: tensors, numpy arrays and scalars, OrderedDict, a yacs CfgNode training "
            "config); nothing from the file was run"
        )
    try:
        with torch.serialization.safe_globals(_torch_safe_globals(names, path)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message suggests turning weights_only off; say what was refused instead.
        raise UnsafeCheckpointError(
            f"{path}: refused by torch's weights_only unpickler ({_refusal(error)}); nothing from the file was run"
        ) from None


def pickled_globals(path: str | Path) -> set[str]:
    """Full names (`module.qualname`, Python 3 spelling) of every global the pickles in a `torch.save` file name,
    read as opcodes: nothing is unpickled or imported.

    Raises:
        UnsafeCheckpointError: a pickle names a global through `STACK_GLOBAL` (protocol 4+), which torch.save does
            not write and weights_only loading does not read.
        ValueError: the file is not a pickle-based checkpoint.
    """
    with open(path, "rb") as file:
        if zipfile.is_zipfile(file):
            with zipfile.ZipFile(file) as archive:
                pickles = [name for name in archive.namelist() if name.endswith(".pkl")]
                if not pickles:
                    raise ValueError(f"{path}: a zip archive without data.pkl is not a torch.save checkpoint")
                return set().union(*(_globals_in(io.BytesIO(archive.read(name)), path) for name in pickles))
        file.seek(0)
        names = set()
        for index in range(_LEGACY_PICKLES):
            try:
                names |= _globals_in(file, path)
            except ValueError:
                if index == 0:
                    raise ValueError(f"{path} is neither a zip nor a legacy torch.save checkpoint") from None
                break  # a plain pickle file: one pickle, then the end (torch.load reports what it makes of it)
        return names


def _globals_in(stream, path: Path) -> set[str]:
    names, recent_strings = set(), []
    for opcode, argument, _ in pickletools.genops(stream):
        if opcode.name in ("GLOBAL", "INST"):
            names.add(_python3_name(*argument.split(" ", 1)))
        elif opcode.name == "STACK_GLOBAL":
            guess = ".".join(recent_strings[-2:]) if len(recent_strings) >= 2 else "a global"
            raise UnsafeCheckpointError(
                f"{path}: refused to load: it names {guess} through STACK_GLOBAL (pickle protocol 4+), which "
                "torch.save does not write; nothing from the file was run"
            )
        if isinstance(argument, str) and "UNICODE" in opcode.name:
            recent_strings.append(argument)
    return names


def _python3_name(module: str, name: str) -> str:
    """Protocol-2 pickles spell some globals the Python 2 way (`__builtin__.set`); the unpickler maps them."""
    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _torch_safe_globals(names: set[str], path: Path) -> list[tuple[Any, str]]:
    """The allowed globals torch does not allow by default, each as (object, the name files use for it)."""
    safe: list[tuple[Any, str]] = [(_InertConfigNode, name) for name in _CONFIG_GLOBALS]
    try:
        import numpy
    except ImportError:
        if names & set(_NUMPY_GLOBALS):
            raise ModuleNotFoundError(
                f"{path} holds numpy arrays or scalars: install numpy to read it (pip install 'hf-unified[convert]')"
            ) from None
        return safe
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 1.26
        from numpy.core import multiarray
    for version in ("core", "_core"):
        safe += [
            (multiarray._reconstruct, f"numpy.{version}.multiarray._reconstruct"),
            (multiarray.scalar, f"numpy.{version}.multiarray.scalar"),
        ]
    safe += [(numpy.ndarray, "numpy.ndarray"), (numpy.dtype, "numpy.dtype")]
    # Unpickling a dtype builds an instance of its class (`numpy.dtypes.Float64DType`, ...), which torch must also
    # allow. Object arrays hold arbitrary Python objects, not data: their dtype stays out.
    dtype_classes = {type(numpy.dtype(code)) for code in numpy.typecodes["All"] if code != "O"}
    safe += [(cls, f"{cls.__module__}.{cls.__qualname__}") for cls in dtype_classes]
    return safe


def _refusal(error: Exception) -> str:
    """The part of torch's weights_only error that says what was refused, without its advice."""
    found = re.search(r"GLOBAL (\S+)", str(error))
    if found:
        return f"it pickles {found.group(1)}"
    found = re.search(r"WeightsUnpickler error: ([^.\n]*)", str(error))
    return found.group(1) if found else "an object that is not checkpoint data"


__all__ = ["ALLOWED_GLOBALS", "UnsafeCheckpointError", "load_checkpoint", "pickled_globals"]
