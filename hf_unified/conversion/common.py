"""Helpers shared by the official-checkpoint converters (`convert_unicl.py`, `convert_msclip.py`).

The official loaders hid mistakes: UniCL loads with `strict=False`, so a renamed key silently keeps its random init.
These helpers make every conversion strict in both directions:

- [`OfficialStateDict`] hands out the official tensors one key at a time and, at the end, raises one error listing
  every key that was never used (and every key that was asked for but is not in the file).
- [`load_converted_state_dict`] checks the converted tensors against the target model (missing targets, unknown
  targets, shape mismatches, each reported with the official key it came from) before a strict `load_state_dict`.

Also here: reading the checkpoint file (`torch.load(weights_only=True)`), splitting fused q/k/v projections, turning
`x @ P` projection matrices into `nn.Linear` weights, reading a fixtures-format `--config` JSON, and writing the
model card.
"""

from __future__ import annotations

import importlib
import json
import pickle
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


class ConversionError(ValueError):
    """The official checkpoint does not match the architecture being converted to (keys or shapes)."""


def _format_keys(keys: Iterable[str], limit: int = 40) -> str:
    keys = sorted(keys)
    shown = "\n  ".join(keys[:limit])
    more = f"\n  ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"\n  {shown}{more}"


def load_official_checkpoint(
    path: str | Path, wrapper_keys: tuple[str, ...] = ("model", "state_dict")
) -> dict[str, torch.Tensor]:
    """Reads an official `.pth` file safely and returns its flat `{key: tensor}` state dict.

    The file is read with `torch.load(weights_only=True, map_location="cpu")` (no pickled code runs). A state dict
    wrapped under one of `wrapper_keys` (UniCL: `{'model': sd, 'optimizer': ..., 'epoch': ...}`) is unwrapped and the
    other entries are ignored (classes they pickle, such as a yacs training config, are replaced by inert stand-ins
    rather than imported); a DDP `module.` prefix on every key is removed.

    Raises:
        FileNotFoundError: no such file.
        ConversionError: the file holds no `{str: Tensor}` mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        content = _load_with_inert_globals(path)
    except Exception as error:  # pickle errors have many types; all mean "not a plain tensor checkpoint"
        raise ConversionError(f"{path} cannot be read with torch.load(weights_only=True): {error}") from error
    if not isinstance(content, Mapping):
        raise ConversionError(f"{path} holds a {type(content).__name__}, expected a state dict")
    for wrapper in wrapper_keys:
        if wrapper in content and isinstance(content[wrapper], Mapping):
            content = content[wrapper]
            break
    non_tensors = [k for k, v in content.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise ConversionError(
            f"{path} is not a state dict: these entries are not tensors (wrapped under a key other than "
            f"{list(wrapper_keys)}?):{_format_keys(map(str, non_tensors))}"
        )
    state_dict = dict(content)
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


class _InertObject:
    """Stands in for any class a checkpoint pickles besides tensors (a yacs `CfgNode` training config, an argparse
    `Namespace`, ...). Constructing it, however the unpickler does it, gives an empty `OrderedDict`, one of the few
    containers `weights_only` loading fills and builds; no foreign code runs and the content is never used."""

    def __new__(cls, *args, **kwargs):
        return OrderedDict()


def _load_with_inert_globals(path: Path) -> Any:
    """`torch.load(weights_only=True)`; when the file also pickles other objects next to the weights (released UniCL
    files keep the training `config` as a yacs `CfgNode`), those classes are replaced by [`_InertObject`] and the
    file is read again, still with `weights_only=True`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        foreign = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if not foreign:
            raise
    allowed = [_allowed_stand_in(name) for name in foreign]
    if any(name.startswith("numpy.") for name in foreign):
        allowed += _numpy_dtype_classes()
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def _numpy_dtype_classes() -> list[Any]:
    """numpy's dtype classes (`numpy.dtypes.Float64DType`, ...): unpickling a dtype builds an instance of one."""
    try:
        import numpy
    except ImportError:
        return []
    namespace = vars(getattr(numpy, "dtypes", numpy))
    return [c for c in namespace.values() if isinstance(c, type) and issubclass(c, numpy.dtype)]


def _allowed_stand_in(name: str) -> tuple[Any, str]:
    """numpy scalars and dtypes (an accuracy saved as `np.float64`) are data: allow the real numpy objects, as
    torch's documentation suggests. Anything else becomes an [`_InertObject`]."""
    module, _, attribute = name.rpartition(".")
    if module == "numpy" or module.startswith("numpy."):
        try:
            return getattr(importlib.import_module(module), attribute), name
        except (ImportError, AttributeError):
            pass
    return _InertObject, name


class OfficialStateDict:
    """An official state dict whose keys are consumed one by one, so that leftovers can be reported.

    `take(key)` returns a tensor and marks the key used; asking for a key that is not there is recorded (not raised
    at once) so that [`check_complete`] can list every problem in one error.
    """

    def __init__(self, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"):
        self.tensors = dict(state_dict)
        self.source = source
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.known_buffers: dict[str, str] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...] | None:
        """Shape of `key` without consuming it, or None when absent."""
        tensor = self.tensors.get(key)
        return None if tensor is None else tuple(tensor.shape)

    def take(self, key: str) -> torch.Tensor:
        """Returns the tensor under `key` and marks it used (an empty placeholder is returned if it is missing)."""
        if key not in self.tensors:
            self.missing.append(key)
            return torch.empty(0)
        self.used.add(key)
        return self.tensors[key]

    def drop_buffer(self, key: str, reason: str) -> torch.Tensor | None:
        """Accounts for a buffer the target model recomputes from its config (the caller verifies its values).

        Returns the tensor, or None when the checkpoint does not carry this (optional) buffer.
        """
        if key not in self.tensors:
            return None
        self.used.add(key)
        self.known_buffers[key] = reason
        return self.tensors[key]

    def unused(self) -> list[str]:
        return sorted(set(self.tensors) - self.used)

    def check_complete(self) -> None:
        """Raises a [`ConversionError`] listing missing and unused official keys, if any."""
        problems = []
        if self.missing:
            problems.append(
                f"{len(self.missing)} expected key(s) missing from the {self.source}:{_format_keys(self.missing)}"
            )
        unused = self.unused()
        if unused:
            problems.append(
                f"{len(unused)} key(s) of the {self.source} were not used by the conversion (wrong architecture "
                f"settings, or a checkpoint of another model?):{_format_keys(unused)}"
            )
        if problems:
            raise ConversionError("\n".join(problems))


def split_fused_qkv(tensor: torch.Tensor, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Splits a fused `[3 * C, ...]` projection (rows q | k | v, as `nn.MultiheadAttention.in_proj_weight` and the
    Swin `qkv` Linear store them) into q, k and v.

    Raises:
        ConversionError: the first dimension is not a multiple of 3.
    """
    if tensor.ndim == 0 or tensor.shape[0] % 3:
        raise ConversionError(f"{key}: fused q/k/v tensor of shape {tuple(tensor.shape)} has no first dimension 3*C")
    query, key_, value = tensor.chunk(3, dim=0)
    return query.contiguous(), key_.contiguous(), value.contiguous()


def projection_to_linear_weight(matrix: torch.Tensor, key: str) -> torch.Tensor:
    """An official `[in, out]` projection applied as `x @ P` becomes an `nn.Linear` weight `P.T` (`[out, in]`)."""
    if matrix.ndim != 2:
        raise ConversionError(f"{key}: projection matrix must be 2-D [in, out], got shape {tuple(matrix.shape)}")
    return matrix.t().contiguous()


class ConvertedStateDict:
    """Target-model tensors, each remembering the official key(s) it came from (for error messages)."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self.sources: dict[str, str] = {}

    def __setitem__(self, target: str, value: tuple[torch.Tensor, str]) -> None:
        tensor, source = value
        if target in self.tensors:
            raise ConversionError(f"two official tensors map to {target}: {self.sources[target]} and {source}")
        self.tensors[target] = tensor
        self.sources[target] = source


def load_converted_state_dict(model: nn.Module, converted: ConvertedStateDict) -> None:
    """Checks `converted` against `model.state_dict()` and loads it strictly.

    Raises:
        ConversionError: target tensors left without a value, converted tensors the model has no place for, or
            shapes that differ (each listed with the official key it came from and both shapes).
    """
    expected = model.state_dict()
    problems = []
    not_filled = sorted(set(expected) - set(converted.tensors))
    if not_filled:
        problems.append(
            f"{len(not_filled)} model tensor(s) got no value from the checkpoint:{_format_keys(not_filled)}"
        )
    no_place = sorted(set(converted.tensors) - set(expected))
    if no_place:
        problems.append(
            f"{len(no_place)} converted tensor(s) have no place in the model:"
            + _format_keys(f"{k} (from {converted.sources[k]})" for k in no_place)
        )
    wrong_shape = [
        f"{converted.sources[k]}: shape {tuple(t.shape)}, but {k} needs {tuple(expected[k].shape)}"
        for k, t in converted.tensors.items()
        if k in expected and tuple(t.shape) != tuple(expected[k].shape)
    ]
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} tensor(s) with a wrong shape:{_format_keys(wrong_shape)}")
    if problems:
        raise ConversionError("\n".join(problems))
    state = {k: t.to(expected[k].dtype) if t.is_floating_point() else t for k, t in converted.tensors.items()}
    model.load_state_dict(state, strict=True)


def read_config_json(path: str | Path | None) -> dict[str, Any]:
    """Reads a `--config` JSON in the golden fixtures' format (sections `architecture`, `official_config`,
    `tokenizer`, `preprocessing`, ...). Returns `{}` for None.

    Raises:
        ValueError: the file is not a JSON object.
    """
    if path is None:
        return {}
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"--config {path}: cannot read a JSON object: {error}") from error
    if not isinstance(content, dict):
        raise ValueError(f"--config {path}: expected a JSON object, got {type(content).__name__}")
    return content


def nested_get(mapping: Mapping[str, Any] | None, *path: str, default: Any = None) -> Any:
    """`mapping[path[0]][path[1]]...`, or `default` when any step is missing."""
    current: Any = mapping
    for step in path:
        if not isinstance(current, Mapping) or step not in current:
            return default
        current = current[step]
    return current


def first_given(*values: Any) -> Any:
    """The first value that is not None (flag > --config > preset precedence)."""
    for value in values:
        if value is not None:
            return value
    return None


def activation_name(description: str | None) -> str | None:
    """Maps the fixtures' activation descriptions ("gelu (exact, erf; ...)", "quick_gelu (x * sigmoid(1.702 x))")
    to transformers' `hidden_act` names."""
    if description is None:
        return None
    text = str(description).strip().lower()
    if text.startswith("quick_gelu") or text.startswith("quickgelu"):
        return "quick_gelu"
    if text.startswith("gelu"):
        return "gelu"
    if text.startswith("relu"):
        return "relu"
    raise ValueError(f"unknown activation {description!r}: expected gelu, quick_gelu or relu")


def check_agrees(name: str, from_shapes: Any, given: Any, given_by: str) -> None:
    """Raises when a value given by a flag/preset/config contradicts what the checkpoint's shapes say."""
    if given is not None and from_shapes is not None and list_or_value(given) != list_or_value(from_shapes):
        raise ConversionError(f"{name}: the checkpoint's shapes give {from_shapes!r}, but {given_by} says {given!r}")


def list_or_value(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def write_model_card(
    folder: str | Path,
    *,
    method: str,
    model_name: str,
    source_checkpoint: str,
    base_model: str | None,
    description: str,
    conversion_summary: dict[str, Any] | None = None,
) -> str:
    """Writes `folder/README.md` naming the source checkpoint.

    Uses the Hub engineer's `model_card.write_model_card` (the method's template, metadata, usage) when that module
    exists; otherwise a minimal card with the same metadata essentials. Returns which one was written
    (`"model_card"` or `"minimal"`).
    """
    try:
        from ..hub.model_card import write_model_card as render_and_write
    except ImportError:
        render_and_write = None
    if render_and_write is not None:
        render_and_write(
            folder,
            method,
            source_checkpoint=source_checkpoint,
            base_model=base_model,
            training_summary=conversion_summary,
        )
        return "model_card"
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: zero-shot-image-classification",
        "tags:",
        f"- {method}",
        "- hf-unified",
        "- converted-checkpoint",
    ]
    if base_model:
        lines.append(f"base_model: {base_model}")
    lines += [
        "---",
        "",
        f"# {model_name}",
        "",
        description,
        "",
        f"Converted from the official checkpoint `{source_checkpoint}` with hf-unified; every official tensor was "
        "accounted for.",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in (conversion_summary or {}).items()]
    Path(folder, "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return "minimal"


def build_clip_tokenizer(tokenizer_dir: str | Path | None, pad_token: str, model_max_length: int):
    """The CLIP BPE tokenizer: from a folder holding `vocab.json` + `merges.txt` (or a saved tokenizer), else the
    full 49408-id vocabulary built from open_clip's bundled `bpe_simple_vocab_16e6.txt.gz`.

    Args:
        pad_token: `"<|endoftext|>"` for UniCL (pads with end-of-text), `"!"` for MS-CLIP (id 0 = zero padding).

    Raises:
        ValueError: no folder given and open_clip is not installed, or the folder lacks the files.
    """
    from ..training.tokenization import clip_tokenizer_from_bpe_gz, clip_tokenizer_from_files

    if tokenizer_dir is None:
        try:
            return clip_tokenizer_from_bpe_gz(None, pad_token=pad_token, model_max_length=model_max_length)
        except ImportError as error:
            raise ValueError(
                "no --tokenizer given and open_clip_torch (which bundles the CLIP BPE vocabulary) is not installed: "
                "pass --tokenizer DIR with vocab.json + merges.txt, or `pip install 'hf-unified[clip-bpe]'`"
            ) from error
    folder = Path(tokenizer_dir)
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if vocab.is_file() and merges.is_file():
        return clip_tokenizer_from_files(vocab, merges, pad_token=pad_token, model_max_length=model_max_length)
    gz_files = sorted(folder.glob("*.txt.gz"))
    if gz_files:
        return clip_tokenizer_from_bpe_gz(gz_files[0], pad_token=pad_token, model_max_length=model_max_length)
    raise ValueError(f"--tokenizer {folder}: expected vocab.json + merges.txt (or an official bpe *.txt.gz)")


def check_tokenizer_matches(tokenizer, vocab_size: int, eos_token_id: int | None, bos_token_id: int | None) -> None:
    """The tokenizer must address exactly the checkpoint's token embedding rows and agree on the special ids."""
    if len(tokenizer) != vocab_size:
        raise ConversionError(
            f"the tokenizer has {len(tokenizer)} ids but the checkpoint's token embedding has {vocab_size} rows "
            "(pass --tokenizer with the vocabulary the model was trained with)"
        )
    if eos_token_id is not None and tokenizer.eos_token_id != eos_token_id:
        raise ConversionError(f"tokenizer end-of-text id {tokenizer.eos_token_id} != expected {eos_token_id}")
    if bos_token_id is not None and tokenizer.bos_token_id != bos_token_id:
        raise ConversionError(f"tokenizer start-of-text id {tokenizer.bos_token_id} != expected {bos_token_id}")


__all__ = [
    "ConversionError",
    "ConvertedStateDict",
    "OfficialStateDict",
    "activation_name",
    "build_clip_tokenizer",
    "check_agrees",
    "check_tokenizer_matches",
    "first_given",
    "load_converted_state_dict",
    "load_official_checkpoint",
    "nested_get",
    "projection_to_linear_weight",
    "read_config_json",
    "split_fused_qkv",
    "write_model_card",
]
