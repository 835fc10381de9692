"""The conversion every official checkpoint goes through, and its command line, written once.

```
load safely -> infer shapes -> resolve the config fields -> build the config -> map keys (strict accounting)
    -> load into the model -> build the processor -> write the folder atomically (model, processor, model card)
```

A method's converter is a [`Converter`] subclass that states only what is its own: which tensors tell which config
fields (`infer_shapes`), how a fixtures-format `--config` JSON reads (`fields_from_config_json`), the released
models as presets, its flags, and the key map (`map_keys`).

**Fields.** Every setting is a config field, named as in the method's config with sub-configs dotted
(`"vision_config.embed_dim"`, `"text_config.num_attention_heads"`, `"hidden_size"`); presets and defaults are written
as (nested) dicts of config fields. Two namespaces are not config fields: `processor.*` (the image preprocessing
`--config` states, checked against the processor) and `checkpoint.*` (facts the shapes tell that are not fields, such
as MS-CLIP's token grid). Values come from, highest first: a flag, `--config`, `--preset`, the defaults. Whatever the
tensor shapes tell always wins, and any given value that contradicts it is an error. Without `--preset` or `--config`,
a preset whose every shape-decided field agrees with the checkpoint is recognised and used.

**Output.** The folder is built in a hidden sibling staging folder (`.NAME.*.partial`) and published when complete
(`hf_unified.files.StagedFolder`): a failed or killed conversion never leaves a half-written `--output`. An existing
empty folder counts as absent; a non-empty one is refused unless `--overwrite`, which replaces the old folder by the
new one in one step and then deletes the old one. A folder holding what the conversion reads (the checkpoint, the
tokenizer folder, the `--config` JSON) is never replaced, even with `--overwrite`: it would delete them.

**Command line.** `main` exits 0 on success, 1 with one `error: ...` line on stderr (no traceback) for a checkpoint
that cannot be converted, a refused (unsafe) file or a file-system problem, and 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from transformers import PreTrainedConfig, PreTrainedModel, ProcessorMixin

from ..files import StagedFolder, real_path
from ..hub.model_card import write_model_card
from .common import (
    ConversionError,
    ConvertedStateDict,
    OfficialStateDict,
    build_clip_tokenizer,
    check_tokenizer_matches,
    format_lines,
    load_converted_state_dict,
    load_official_checkpoint,
    read_config_json,
)
from .safe_load import UnsafeCheckpointError

# Field namespaces that are not config fields.
PROCESSOR_FIELDS = "processor."
CHECKPOINT_FACTS = "checkpoint."


@dataclass(frozen=True)
class Flag:
    """A command-line flag, and keyword argument of the Python API (`option` without dashes, `_` for `-`), that sets
    one config field."""

    option: str
    field: str
    help: str = ""
    type: Callable[[str], Any] = int
    nargs: str | None = None
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.option.lstrip("-").replace("-", "_")


def flatten(fields: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"vision_config": {"embed_dim": 96}}` -> `{"vision_config.embed_dim": 96}` (dotted keys pass through)."""
    flat = {}
    for name, value in fields.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def unflatten(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of [`flatten`]: config keyword arguments with one dict per sub-config."""
    nested: dict[str, Any] = {}
    for name, value in fields.items():
        *parents, leaf = name.split(".")
        level = nested
        for parent in parents:
            level = level.setdefault(parent, {})
        level[leaf] = value
    return nested


def _same(given: Any, from_shapes: Any) -> bool:
    """Equal values; a list and a tuple compare by their items."""
    if isinstance(given, (list, tuple)) and isinstance(from_shapes, (list, tuple)):
        return list(given) == list(from_shapes)
    return given == from_shapes


class Converter:
    """An official checkpoint format and how it maps onto one of this package's models.

    Subclasses set the class attributes and implement the hooks `infer_shapes`, `fields_from_config_json`,
    `map_keys`, `image_processor` (and, when needed, `rename_keys`, `complete_fields`, `check_buffers`,
    `card_summary`); [`convert`] and [`main`] run the rest.
    """

    method: ClassVar[str]  # model_type, model-card template and command name: "unicl" -> hf-unified-convert-unicl
    source: ClassVar[str]  # the official repository, e.g. "microsoft/UniCL"
    description: ClassVar[str]  # one line for --help
    checkpoint_help: ClassVar[str] = "official .pth file"
    model_class: ClassVar[type[PreTrainedModel]]
    processor_class: ClassVar[type[ProcessorMixin]]
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}  # the released models, as config fields
    defaults: ClassVar[Mapping[str, Any]] = {}  # config fields nothing else gave (the released values)
    flags: ClassVar[tuple[Flag, ...]] = ()
    text_prefix: ClassVar[str] = ""  # where the text fields live: "text_config." or "" for a flat config
    pad_token: ClassVar[str] = "<|endoftext|>"  # the tokenizer's padding token
    wrapper_keys: ClassVar[tuple[str, ...]] = ("model", "state_dict")  # the state dict may be wrapped under these

    # ------------------------------------------------------------------------------------------------------------
    # Hooks

    def rename_keys(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """Maps alternative official key layouts onto the one `map_keys` reads (default: unchanged)."""
        return state_dict

    def infer_shapes(self, official: OfficialStateDict) -> dict[str, Any]:
        """The config fields (and `checkpoint.*` facts) the tensor shapes tell; None where they cannot tell."""
        raise NotImplementedError

    def fields_from_config_json(self, config_json: dict[str, Any]) -> dict[str, Any]:
        """The config fields (and `processor.*` values) a fixtures-format `--config` JSON gives; None for absent."""
        raise NotImplementedError

    def complete_fields(self, fields: dict[str, Any]) -> None:
        """Derives what the given values imply and checks what no single source can (in place). The base sets the
        CLIP BPE special ids: `<|startoftext|>` and `<|endoftext|>` are the vocabulary's last two ids."""
        vocab_size = fields[self.text_prefix + "vocab_size"]
        fields.setdefault(self.text_prefix + "eos_token_id", vocab_size - 1)
        fields.setdefault(self.text_prefix + "bos_token_id", vocab_size - 2)

    def map_keys(self, official: OfficialStateDict, config: PreTrainedConfig) -> ConvertedStateDict:
        """Every official tensor under the model's parameter and buffer names."""
        raise NotImplementedError

    def check_buffers(self, official: OfficialStateDict, model: PreTrainedModel) -> None:
        """Accounts for official buffers the model recomputes, after checking their values (default: none)."""

    def image_processor(self, fields: dict[str, Any]):
        """The method's evaluation preprocessing for this model."""
        raise NotImplementedError

    def card_summary(self, config: PreTrainedConfig, image_processor) -> dict[str, Any]:
        """Rows of the model card's conversion table, besides the source checkpoint and the preset."""
        return {}

    # ------------------------------------------------------------------------------------------------------------
    # The conversion

    def convert(
        self,
        checkpoint: str | Path,
        output: str | Path,
        *,
        config_json: str | Path | None = None,
        preset: str | None = None,
        tokenizer_dir: str | Path | None = None,
        base_model: str | None = None,
        overwrite: bool = False,
        **flags: Any,
    ) -> Path:
        """Converts an official checkpoint into a `save_pretrained` folder (model, processor, model card).

        Args:
            checkpoint: the official `.pth` file.
            output: folder to write (atomically; see the module docstring).
            config_json: a fixtures-format JSON with the values the shapes cannot tell.
            preset: one of `presets` (the released models); default: the preset the shapes match, if any.
            tokenizer_dir: folder with the CLIP BPE `vocab.json` + `merges.txt`; default: open_clip's vocabulary.
            base_model: Hub id recorded in the model card's `base_model`.
            overwrite: replace an existing, non-empty `output` folder.
            **flags: the converter's `flags`, by keyword (`text_heads=8`, ...).

        Returns:
            The output folder.

        Raises:
            ConversionError: unreadable file; unused, missing or wrongly shaped official tensors; settings that
                contradict the shapes or each other.
            UnsafeCheckpointError: the file pickles something other than checkpoint data.
            FileExistsError: `output` exists, is not empty and `overwrite` is False.
        """
        checkpoint, output = Path(checkpoint), Path(output)
        reads = [path for path in (checkpoint, tokenizer_dir, config_json) if path is not None]
        flag_fields, config_json = self.flag_fields(flags), read_config_json(config_json)
        check_output_folder(output, overwrite, reads)
        state_dict = self.rename_keys(load_official_checkpoint(checkpoint, self.wrapper_keys))
        official = OfficialStateDict(state_dict, source=checkpoint.name)
        fields, preset = self.resolve_fields(self.infer_shapes(official), flag_fields, config_json, preset)
        config = self.build_config(fields)

        model = self.model_class(config).eval()
        converted = self.map_keys(official, config)
        self.check_buffers(official, model)
        official.check_complete()
        load_converted_state_dict(model, converted)
        processor = self.build_processor(fields, tokenizer_dir)

        summary = {
            "converted_from": f"{self.source} checkpoint {checkpoint.name}",
            "preset": preset or "none (shapes + --config / flags)",
            **self.card_summary(config, processor.image_processor),
        }
        with StagedFolder(output) as folder:  # published when complete, removed on an error
            model.save_pretrained(folder)
            processor.save_pretrained(folder)
            write_model_card(
                folder,
                self.method,
                source_checkpoint=checkpoint.name,
                base_model=base_model,
                training_summary=summary,
            )
            check_output_folder(output, overwrite, reads)  # something may have been written there meanwhile
        return output

    def flag_fields(self, flags: Mapping[str, Any]) -> dict[str, Any]:
        """Flag values (by `Flag.dest`) as config fields; None means not given."""
        by_dest = {flag.dest: flag for flag in self.flags}
        unknown = sorted(set(flags) - set(by_dest))
        if unknown:
            raise TypeError(f"unknown argument(s) {unknown}; {type(self).__name__} takes {sorted(by_dest)}")
        return {by_dest[name].field: value for name, value in flags.items() if value is not None}

    def resolve_fields(
        self,
        shapes: Mapping[str, Any],
        flags: Mapping[str, Any] | None = None,
        config_json: Mapping[str, Any] | None = None,
        preset: str | None = None,
    ) -> tuple[dict[str, Any], str | None]:
        """Merges flags > `--config` > `--preset` > defaults under what the shapes tell, then `complete_fields`.

        Returns:
            The fields (flat, dotted) and the name of the preset used (given or recognised), or None.

        Raises:
            ConversionError: an unknown preset, or given values that contradict the shapes (all listed).
        """
        told = {name: value for name, value in flatten(shapes).items() if value is not None}
        sources = []
        if flags:
            sources.append(("a flag", flatten(flags)))
        if config_json:
            sources.append(("--config", flatten(self.fields_from_config_json(dict(config_json)))))
        if preset is None and not config_json:
            preset = self.recognise_preset(told)
        if preset is not None:
            if preset not in self.presets:
                raise ConversionError(f"unknown --preset {preset!r}; choose from {sorted(self.presets)}")
            sources.append((f"--preset {preset}", flatten(self.presets[preset])))

        contradictions = [
            f"{name}: {told[name]!r} in the checkpoint, but {given_by} says {value!r}"
            for given_by, values in sources
            for name, value in values.items()
            if name in told and value is not None and not _same(value, told[name])
        ]
        if contradictions:
            raise ConversionError(
                "the checkpoint's tensor shapes fix its widths, depths and sizes, and given values contradict them "
                f"(drop them, or use the --preset / --config of this checkpoint):{format_lines(contradictions)}"
            )
        fields = flatten(self.defaults)
        for _, values in reversed(sources):
            fields.update({name: value for name, value in values.items() if value is not None})
        fields.update(told)
        self.complete_fields(fields)
        return fields, preset

    def recognise_preset(self, told: Mapping[str, Any]) -> str | None:
        """The first preset that names some shape-decided field and agrees with the shapes on all of them."""
        for name, preset in self.presets.items():
            checked = {field: value for field, value in flatten(preset).items() if field in told}
            if checked and all(_same(value, told[field]) for field, value in checked.items()):
                return name
        return None

    def require(self, fields: Mapping[str, Any], *names: str) -> None:
        """Raises, naming the flags that set them, when fields the shapes cannot tell were given by nothing."""
        missing = [name for name in names if fields.get(name) is None]
        if missing:
            options = [flag.option for flag in self.flags if flag.field in missing]
            raise ConversionError(
                f"the checkpoint's shapes do not tell {', '.join(missing)}: pass "
                + (f"{', '.join(options)}, " if options else "")
                + f"a --config JSON or a --preset ({', '.join(sorted(self.presets))})"
            )

    def build_config(self, fields: Mapping[str, Any]) -> PreTrainedConfig:
        """The model's config from the config fields (the `processor.*` / `checkpoint.*` entries left out).

        Raises:
            ConversionError: the config class rejects the combination.
        """
        config_fields = {k: v for k, v in fields.items() if not k.startswith((PROCESSOR_FIELDS, CHECKPOINT_FACTS))}
        try:
            return self.model_class.config_class(**unflatten(config_fields))
        except (ValueError, TypeError) as error:
            raise ConversionError(f"the inferred architecture is inconsistent: {error}") from error

    def build_processor(self, fields: Mapping[str, Any], tokenizer_dir: str | Path | None) -> ProcessorMixin:
        """The method's processor: its image preprocessing and the CLIP BPE tokenizer, both checked against the
        model (vocabulary size, special ids, the crop `--config` states)."""
        text = self.text_prefix
        tokenizer = build_clip_tokenizer(
            tokenizer_dir, pad_token=self.pad_token, model_max_length=fields[text + "max_position_embeddings"]
        )
        check_tokenizer_matches(
            tokenizer,
            fields[text + "vocab_size"],
            eos_token_id=fields.get(text + "eos_token_id"),
            bos_token_id=fields.get(text + "bos_token_id"),
            pad_token_id=fields.get(text + "pad_token_id"),
        )
        image_processor = self.image_processor(dict(fields))
        crop, model_size = fields.get(PROCESSOR_FIELDS + "crop_size"), image_processor.crop_size["height"]
        if crop is not None and crop != model_size:
            raise ConversionError(f"--config preprocessing crops to {crop} px but the model takes {model_size} px")
        return self.processor_class(image_processor=image_processor, tokenizer=tokenizer)

    # ------------------------------------------------------------------------------------------------------------
    # The command line

    @property
    def prog(self) -> str:
        return f"hf-unified-convert-{self.method}"

    def build_parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(prog=self.prog, description=self.description)
        parser.add_argument("--checkpoint", required=True, help=self.checkpoint_help)
        parser.add_argument("--output", required=True, help="folder to write (save_pretrained layout), atomically")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing, non-empty --output folder")
        parser.add_argument(
            "--config", dest="config_json", help="JSON in the golden fixtures' format (architecture, preprocessing)"
        )
        parser.add_argument(
            "--preset",
            choices=sorted(self.presets),
            help="values of a released model (default: the one whose shapes match, when no --config is given)",
        )
        parser.add_argument(
            "--tokenizer",
            dest="tokenizer_dir",
            help="folder with CLIP BPE vocab.json + merges.txt (default: open_clip's)",
        )
        parser.add_argument("--base-model", help="Hub id to record as base_model in the model card")
        group = parser.add_argument_group("architecture (what the tensor shapes cannot tell; a flag wins)")
        for flag in self.flags:
            group.add_argument(
                flag.option,
                dest=flag.dest,
                type=flag.type,
                nargs=flag.nargs,
                choices=flag.choices,
                help=f"{flag.help} (config field {flag.field})".lstrip(),
            )
        return parser

    def main(self, argv: list[str] | None = None) -> int:
        """The console script: exit code 0 on success, 1 with one error line, 2 for a usage error (argparse)."""
        args = vars(self.build_parser().parse_args(argv))
        checkpoint, output = args.pop("checkpoint"), args.pop("output")
        try:
            folder = self.convert(checkpoint, output, **args)
        except (ValueError, OSError, UnsafeCheckpointError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"wrote {folder}")
        return 0


def check_output_folder(output: Path, overwrite: bool, reads: Sequence[str | Path] = ()) -> None:
    """Raises FileExistsError when writing `output` would destroy something `overwrite` did not allow, and
    ValueError, whatever `overwrite` says, when `output` is or holds one of the files or folders the conversion
    `reads` (replacing it would delete them)."""
    target = real_path(output)
    for path in reads:
        if real_path(path) == target or target in real_path(path).parents:
            raise ValueError(
                f"--output {output} holds {path}, which this conversion reads: writing the model there would delete "
                "it, even with --overwrite; choose another folder"
            )
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"--output {output} exists and is not a folder")
    if not overwrite and output.is_dir() and any(output.iterdir()):
        raise FileExistsError(f"--output {output} exists and is not empty: pass --overwrite to replace it")


__all__ = ["Converter", "Flag", "check_output_folder", "flatten", "unflatten"]
