"""The trainer's settings read from a YAML file and the command line.

`--config file.yaml` gives values for any field of the three settings dataclasses (`arguments.py`); flags given on
the command line override them. Every YAML value is checked against its field's type here, so a mistake names the
file and the key (not the flag it became), and a per-source list that no longer matches `train_data` says which lists
disagree and where each came from.

This module imports only the standard library, PyYAML, transformers' `HfArgumentParser` and `arguments.py` (no
torch): `training/train.py` loads it before anything heavy.
"""

from __future__ import annotations

import difflib
import sys
import types
import typing
from dataclasses import fields
from pathlib import Path

import yaml
from transformers.hf_argparser import HfArgumentParser

from .arguments import ARGUMENT_CLASSES, PER_SOURCE_FIELDS, ConfigError, DataArguments, ModelArguments, TrainArguments


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser(
        ARGUMENT_CLASSES, allow_abbrev=False, usage="%(prog)s --config FILE.yaml [--OPTION VALUE ...]  (all: --help)"
    )
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="YAML file holding values for any option below; options given on the command line override it",
    )
    return parser


def _allows_none(annotation) -> bool:
    return type(None) in typing.get_args(annotation)


def _describe(annotation) -> str:
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    options = [option for option in options or (annotation,) if option is not type(None)]
    words = []
    for option in options:
        if typing.get_origin(option) is list:
            words.append(f"a list of {typing.get_args(option)[0].__name__} (or one value)")
        elif option is dict:
            words.append("a mapping")
        elif option is str:
            words.append("a string")
        else:
            words.append(f"{'an' if option is int else 'a'} {option.__name__}")
    return " or ".join(words) + (" or null" if _allows_none(annotation) else "")


def _convert(value, option) -> tuple[bool, object]:
    """(accepted, converted) for one non-None type option."""
    if typing.get_origin(option) is list:
        item_type = typing.get_args(option)[0]
        converted = [_convert(item, item_type) for item in (value if isinstance(value, list) else [value])]
        return all(ok for ok, _ in converted), [item for _, item in converted]
    if option is bool:
        return isinstance(value, bool), value
    if option is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if option is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if option in (str, dict):
        return isinstance(value, option), value
    return True, value


def check_config_value(source: str, key: str, value, annotation, choices=None):
    """Returns `value` converted to the field's type, or raises `ConfigError` naming `source` and `key`."""
    if value is None and _allows_none(annotation):
        return None
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    for option in [o for o in options or (annotation,) if o is not type(None)]:
        accepted, converted = _convert(value, option)
        if accepted:
            if choices is not None and converted not in choices:
                raise ConfigError(f"{source}: {key} must be one of {list(choices)}, got {converted!r}")
            return converted
    raise ConfigError(f"{source}: {key} must be {_describe(annotation)}, got {value!r} ({type(value).__name__})")


def load_config_file(path: str) -> dict:
    """The YAML file's values, each checked against its field; unknown keys and wrong types are a `ConfigError`."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: must hold a mapping of option: value, got {type(values).__name__}")
    known = {f.name: (cls, f) for cls in ARGUMENT_CLASSES for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        hints = [
            f"{key} (did you mean {close[0]}?)"
            for key in unknown
            if (close := difflib.get_close_matches(key, known, 1))
        ]
        raise ConfigError(f"{path}: unknown keys {unknown}" + (f"; {', '.join(hints)}" if hints else ""))
    checked = {}
    for key, value in values.items():
        cls, spec = known[key]
        annotation = typing.get_type_hints(cls)[key]
        checked[key] = check_config_value(path, key, value, annotation, spec.metadata.get("choices"))
    return checked


def _command_line_keys(argv: list[str]) -> set[str]:
    return {token[2:].split("=", 1)[0].replace("-", "_") for token in argv if token.startswith("--")}


def check_per_source_lengths(data_args: DataArguments, origins: dict[str, str]) -> None:
    """Every per-source option has one value or one value per `train_data` source; otherwise say which lists
    disagree and where each one was set."""
    count = len(data_args.train_data)
    wrong = [
        name
        for name in PER_SOURCE_FIELDS
        if getattr(data_args, name) is not None and len(getattr(data_args, name)) not in (1, count)
    ]
    if not wrong:
        return
    where = lambda name: origins.get(name, "default")  # noqa: E731
    listed = ", ".join(f"{name} has {len(getattr(data_args, name))} values ({where(name)})" for name in wrong)
    example = " ".join(f"--{name} ..." for name in wrong)
    raise ConfigError(
        f"train_data has {count} source{'s' * (count != 1)} ({where('train_data')}) but {listed}: per-source "
        f"options take one value for all sources or one per source, in the order of train_data; give them together "
        f"with train_data, e.g. {example}"
    )


def check_run_settings(model_args: ModelArguments, data_args: DataArguments, train_args: TrainArguments) -> None:
    """Settings that would only fail (or silently do the wrong thing) after the heavy imports: an `output_dir` that
    is a file, an `image_size` the patch size of a model built here does not divide (the patch embedding would drop
    the remainder of every image). Paths are named absolute: the run writes relative ones under the current folder."""
    output_dir = Path(train_args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(
            f"output_dir {output_dir.absolute()} is a file, not a folder: give a folder for the run (--output_dir)"
        )
    vision_config = model_args.model_config.get("vision_config") or {}
    patch_size = vision_config.get("patch_size") if isinstance(vision_config, dict) else None
    if not model_args.starts_pretrained and isinstance(patch_size, int) and data_args.image_size % patch_size:
        raise ConfigError(
            f"image_size {data_args.image_size} is not a multiple of the vision tower's patch_size {patch_size} "
            f"(model_config.vision_config): the patches would drop the last {data_args.image_size % patch_size} "
            f"pixels of every image; give an image_size such as {data_args.image_size // patch_size * patch_size} "
            f"or {(data_args.image_size // patch_size + 1) * patch_size}"
        )


def parse_arguments(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainArguments]:
    """`--config file.yaml` gives the values, other flags override them.

    Raises:
        ConfigError: a YAML key is unknown or has the wrong type, a value is out of range, or the per-source lists do
            not match `train_data`. (Unknown flags and command-line type errors exit through argparse, status 2.)
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    config_path = parser.parse_known_args(argv)[0].config
    origins = {}
    if config_path is not None:
        values = load_config_file(config_path)
        parser.set_defaults(**values)
        origins.update(dict.fromkeys(values, config_path))
    origins.update(dict.fromkeys(_command_line_keys(argv), "command line"))
    *arguments, remaining = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True, look_for_args_file=False
    )
    if remaining:
        flags = [token.split("=", 1)[0] for token in remaining if token.startswith("-")]
        options = [option for action in parser._actions for option in action.option_strings]
        hints = [
            f"{flag} (did you mean {close[0]}?)"
            for flag in flags
            if (close := difflib.get_close_matches(flag, options, 1))
        ]
        parser.error(f"unrecognized arguments: {' '.join(remaining)}" + (f"; {', '.join(hints)}" if hints else ""))
    model_args, data_args, train_args = arguments[:3]
    check_per_source_lengths(data_args, origins)
    check_run_settings(model_args, data_args, train_args)
    return model_args, data_args, train_args


__all__ = [
    "build_parser",
    "check_config_value",
    "check_per_source_lengths",
    "check_run_settings",
    "load_config_file",
    "parse_arguments",
]
