"""What every converter uses to read an official checkpoint and account for each of its tensors.

The official loaders hid mistakes: UniCL loads with `strict=False`, so a renamed key silently keeps its random init.
These helpers make every conversion strict in both directions:

- [`OfficialStateDict`] hands out the official tensors one key at a time and, at the end, raises one error listing
  every key that was never used (and every key that was asked for but is not in the file).
- [`ConvertedStateDict`] collects the target tensors, each with the official key it came from, and
  [`load_converted_state_dict`] checks them against the target model (missing targets, unknown targets, shape
  mismatches) before a strict `load_state_dict`.

Also here: reading the checkpoint file ([`load_official_checkpoint`], through `safe_load`), splitting fused q/k/v
projections, turning `x @ P` projection matrices into `nn.Linear` weights, reading a fixtures-format `--config` JSON,
and building the CLIP BPE tokenizer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..tokenization import clip_tokenizer_from_bpe_gz, clip_tokenizer_from_files
from .safe_load import UnsafeCheckpointError, load_checkpoint


class ConversionError(ValueError):
    """The official checkpoint cannot be converted: unreadable, or not matching the architecture (keys, shapes,
    settings)."""


def format_lines(lines: Iterable[str], limit: int = 40) -> str:
    """Sorted, indented, one per line, at most `limit` of them (error messages that list keys)."""
    lines = sorted(lines)
    shown = "\n  ".join(lines[:limit])
    more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return f"\n  {shown}{more}"


def load_official_checkpoint(
    path: str | Path, wrapper_keys: Sequence[str] = ("model", "state_dict")
) -> dict[str, torch.Tensor]:
    """Reads an official `.pth` file without running pickled code and returns its flat `{key: tensor}` state dict.

    The file is read by `safe_load.load_checkpoint` (a closed allowlist of globals, then
    `torch.load(weights_only=True)`). A state dict wrapped under one of `wrapper_keys` (UniCL:
    `{'model': sd, 'optimizer': ..., 'config': ...}`) is unwrapped and the other entries are ignored; a DDP `module.`
    prefix on every key is removed.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file pickles something other than checkpoint data; nothing from it was run.
        ConversionError: the file is not a checkpoint, or holds no `{str: Tensor}` mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        content = load_checkpoint(path)
    except UnsafeCheckpointError:
        raise
    except Exception as error:  # zip, pickle and torch errors have many types; all mean "not a readable checkpoint"
        raise ConversionError(f"{path} cannot be read as a torch.save checkpoint: {error}") from error
    if not isinstance(content, Mapping):
        raise ConversionError(f"{path} holds a {type(content).__name__}, expected a state dict")
    for wrapper in wrapper_keys:
        if wrapper in content and isinstance(content[wrapper], Mapping):
            content = content[wrapper]
            break
    non_tensors = [str(k) for k, v in content.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise ConversionError(
            f"{path} is not a state dict: these entries are not tensors (wrapped under a key other than "
            f"{list(wrapper_keys)}?):{format_lines(non_tensors)}"
        )
    state_dict = dict(content)
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


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

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def keys(self) -> list[str]:
        return list(self.tensors)

    def shape(self, key: str) -> tuple[int, ...] | None:
        """Shape of `key` without consuming it, or None when absent."""
        tensor = self.tensors.get(key)
        return None if tensor is None else tuple(tensor.shape)

    def count_blocks(self, pattern: str) -> int:
        """How many blocks a key family has: the distinct indices captured by the regex `pattern`'s first group
        (matched at the start of each key), which must be 0..n-1.

        Raises:
            ConversionError: the indices have a gap.
        """
        regex = re.compile(pattern)
        found = {int(m.group(1)) for key in self.tensors if (m := regex.match(key))}
        if found and found != set(range(len(found))):
            raise ConversionError(f"non-consecutive block indices for {pattern}: {sorted(found)}")
        return len(found)

    def take(self, key: str) -> torch.Tensor:
        """Returns the tensor under `key` and marks it used (an empty placeholder is returned if it is missing)."""
        if key not in self.tensors:
            self.missing.append(key)
            return torch.empty(0)
        self.used.add(key)
        return self.tensors[key]

    def drop_buffer(self, key: str) -> torch.Tensor | None:
        """Accounts for a buffer the target model recomputes from its config (the caller verifies its values).

        Returns the tensor, or None when the checkpoint does not carry this (optional) buffer.
        """
        if key not in self.tensors:
            return None
        self.used.add(key)
        return self.tensors[key]

    def unused(self) -> list[str]:
        return sorted(set(self.tensors) - self.used)

    def check_complete(self) -> None:
        """Raises a [`ConversionError`] listing missing and unused official keys, if any."""
        problems = []
        if self.missing:
            problems.append(
                f"{len(self.missing)} expected key(s) missing from the {self.source}:{format_lines(self.missing)}"
            )
        unused = self.unused()
        if unused:
            problems.append(
                f"{len(unused)} key(s) of the {self.source} were not used by the conversion (wrong architecture "
                f"settings, or a checkpoint of another model?):{format_lines(unused)}"
            )
        if problems:
            raise ConversionError("\n".join(problems))


def split_fused_qkv(tensor: torch.Tensor, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Splits a fused projection (rows q | k | v, as `nn.MultiheadAttention.in_proj_weight` and the Swin `qkv`
    Linear store them) into q, k and v.

    Args:
        tensor (`torch.Tensor` of shape `(3 * hidden_size, hidden_size)` or `(3 * hidden_size,)`):
            The fused weight or bias.
        key (`str`): its official key, for the error message.

    Returns:
        `tuple(torch.Tensor)`: q, k and v, each of shape `(hidden_size, ...)`.

    Raises:
        ConversionError: the first dimension is not a multiple of 3.
    """
    if tensor.ndim == 0 or tensor.shape[0] % 3:
        raise ConversionError(f"{key}: fused q/k/v tensor of shape {tuple(tensor.shape)} has no first dimension 3*C")
    query, key_, value = tensor.chunk(3, dim=0)
    return query.contiguous(), key_.contiguous(), value.contiguous()


def projection_to_linear_weight(matrix: torch.Tensor, key: str) -> torch.Tensor:
    """An official projection applied as `x @ P` becomes an `nn.Linear` weight `P.T`.

    Args:
        matrix (`torch.Tensor` of shape `(in_features, out_features)`): the official projection `P`.
        key (`str`): its official key, for the error message.

    Returns:
        `torch.Tensor` of shape `(out_features, in_features)`.
    """
    if matrix.ndim != 2:
        raise ConversionError(f"{key}: projection matrix must be 2-D [in, out], got shape {tuple(matrix.shape)}")
    return matrix.t().contiguous()


class ConvertedStateDict:
    """Target-model tensors taken from an [`OfficialStateDict`], each remembering the official key(s) it came from
    (for error messages). A missing official key is recorded by the official state dict and skipped here."""

    def __init__(self, official: OfficialStateDict):
        self.official = official
        self.tensors: dict[str, torch.Tensor] = {}
        self.sources: dict[str, str] = {}

    def add(self, target: str, tensor: torch.Tensor, source: str) -> None:
        if target in self.tensors:
            raise ConversionError(f"two official tensors map to {target}: {self.sources[target]} and {source}")
        self.tensors[target] = tensor
        self.sources[target] = source

    def copy(self, source: str, target: str) -> None:
        """`target` gets the official tensor `source` unchanged."""
        self.add(target, self.official.take(source), source)

    def copy_module(self, source: str, target: str, names: Sequence[str] = ("weight", "bias")) -> None:
        """`target.<name>` gets `source.<name>` for each name (a Linear, a LayerNorm, a BatchNorm's five tensors)."""
        for name in names:
            self.copy(f"{source}.{name}", f"{target}.{name}")

    def copy_scalar(self, source: str, target: str) -> None:
        """A one-element tensor (saved as `[]` or `[1]`) becomes the 1-element parameter `target` (`logit_scale`:
        the models hold it 1-D, because FSDP shards no 0-D parameters)."""
        tensor = self.official.take(source)
        if tensor.numel():
            self.add(target, tensor.reshape(1) if tensor.numel() == 1 else tensor, source)

    def split_qkv(self, source: str, targets: Sequence[str]) -> None:
        """The fused q | k | v tensor `source` becomes the three `targets` (q, k, v)."""
        tensor = self.official.take(source)
        if tensor.numel():
            for target, piece, name in zip(targets, split_fused_qkv(tensor, source), "qkv"):
                self.add(target, piece, f"{source} ({name} third)")

    def transpose_projection(self, source: str, target: str) -> None:
        """The `[in, out]` projection `source` (applied as `x @ P`) becomes the `nn.Linear` weight `target`."""
        matrix = self.official.take(source)
        if matrix.numel():
            self.add(target, projection_to_linear_weight(matrix, source), f"{source} (transposed)")


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
            f"{len(not_filled)} model tensor(s) got no value from the checkpoint:{format_lines(not_filled)}"
        )
    no_place = sorted(set(converted.tensors) - set(expected))
    if no_place:
        problems.append(
            f"{len(no_place)} converted tensor(s) have no place in the model:"
            + format_lines(f"{k} (from {converted.sources[k]})" for k in no_place)
        )
    wrong_shape = [
        f"{converted.sources[k]}: shape {tuple(t.shape)}, but {k} needs {tuple(expected[k].shape)}"
        for k, t in converted.tensors.items()
        if k in expected and tuple(t.shape) != tuple(expected[k].shape)
    ]
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} tensor(s) with a wrong shape:{format_lines(wrong_shape)}")
    if problems:
        raise ConversionError("\n".join(problems))
    state = {k: t.to(expected[k].dtype) if t.is_floating_point() else t for k, t in converted.tensors.items()}
    model.load_state_dict(state, strict=True)


def read_config_json(path: str | Path | None) -> dict[str, Any]:
    """Reads a `--config` JSON in the golden fixtures' format (sections `architecture`, `official_config`,
    `tokenizer`, `preprocessing`, ...). Returns `{}` for None.

    Raises:
        ConversionError: the file cannot be read or is not a JSON object.
    """
    if path is None:
        return {}
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConversionError(f"--config {path}: cannot read a JSON object: {error}") from error
    if not isinstance(content, dict):
        raise ConversionError(f"--config {path}: expected a JSON object, got {type(content).__name__}")
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
    """The first value that is not None."""
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
    for name in ("quick_gelu", "quickgelu", "gelu", "relu"):
        if text.startswith(name):
            return name.replace("quickgelu", "quick_gelu")
    raise ConversionError(f"unknown activation {description!r}: expected gelu, quick_gelu or relu")


def build_clip_tokenizer(tokenizer_dir: str | Path | None, pad_token: str, model_max_length: int):
    """The CLIP BPE tokenizer: from a folder holding `vocab.json` + `merges.txt` (or an official `*.txt.gz`), else
    the full 49408-id vocabulary built from open_clip's bundled `bpe_simple_vocab_16e6.txt.gz`.

    Args:
        pad_token: `"<|endoftext|>"` for UniCL (pads with end-of-text), `"!"` for MS-CLIP (id 0 = zero padding).

    Raises:
        ConversionError: no folder given and open_clip is not installed, or the folder lacks the files.
    """
    if tokenizer_dir is None:
        try:
            return clip_tokenizer_from_bpe_gz(None, pad_token=pad_token, model_max_length=model_max_length)
        except ImportError as error:
            raise ConversionError(
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
    raise ConversionError(f"--tokenizer {folder}: expected vocab.json + merges.txt (or an official bpe *.txt.gz)")


def check_tokenizer_matches(tokenizer, vocab_size: int, **special_ids: int | None) -> None:
    """The tokenizer must address exactly the checkpoint's token embedding rows and agree on the special ids given
    as keywords (`eos_token_id=...`, `bos_token_id=...`, `pad_token_id=...`; None skips one)."""
    if len(tokenizer) != vocab_size:
        raise ConversionError(
            f"the tokenizer has {len(tokenizer)} ids but the checkpoint's token embedding has {vocab_size} rows "
            "(pass --tokenizer with the vocabulary the model was trained with)"
        )
    for name, expected in special_ids.items():
        if expected is not None and getattr(tokenizer, name) != expected:
            raise ConversionError(
                f"the tokenizer's {name} is {getattr(tokenizer, name)}, but the model's is {expected}"
            )


__all__ = [
    "ConversionError",
    "ConvertedStateDict",
    "OfficialStateDict",
    "activation_name",
    "build_clip_tokenizer",
    "check_tokenizer_matches",
    "first_given",
    "format_lines",
    "load_converted_state_dict",
    "load_official_checkpoint",
    "nested_get",
    "projection_to_linear_weight",
    "read_config_json",
    "split_fused_qkv",
]
