"""The final save of a run: the trained model folder, written whole beside `output_dir` and swapped in.

The folder holds the weights (gathered from their shards by the caller), the processor, `eval_results.json`,
`training_args.json` and the model card with widget examples of the run's own data. The card's examples are handed
to it here (`CardExamples`): the first labelled images of different classes of the run's evaluation split, read and
checked as evaluation reads them (`data.read_sample`, under the run's `max_image_pixels` and `max_aspect_ratio`:
damaged, oversized and out-of-range samples are skipped and logged), answered by the saved model.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from ...files import StagedFolder, carry_over
from ...hub import model_card, widget
from ...image_processing import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS
from ..data import DamageLog, DecodeConfig, Sample, Skipped, SourceSpec, open_source, read_sample
from ..engine import sharding
from .adapter import ADAPTER_DIR, save_adapter

logger = logging.getLogger(__name__)

# Entries of an earlier output that the final save does not carry over: its weights (a stale shard could be loaded
# instead of the new weights).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json")
EXAMPLE_ROWS = 200  # rows of the evaluation split searched for examples of different classes


class SaveError(RuntimeError):
    """Writing the run's output failed (a full disk, ...); the one-line message says what failed, what is left and
    where the trained weights are."""


def one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


@dataclass
class CardExamples:
    """The evaluation split whose images the model card shows (`DataArguments`' `eval_*` fields and class names).

    Args:
        path: the evaluation source (`SourceSpec`), or None; read without its captions: only the labels and the
            images matter.
        class_names: per class its names (the first is shown).
        image_column, label_column, format, split: the source's columns, format and split (`DataArguments`'
            `eval_*` defaults).
        max_image_pixels, max_aspect_ratio: the run's input limits.
    """

    path: str | None
    class_names: list[list[str]] | None
    image_column: str = "jpg"
    label_column: str | None = "cls"
    format: str | None = None
    split: str = "validation"
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_aspect_ratio: float = MAX_ASPECT_RATIO

    def samples(self) -> Iterator[Sample]:
        """The usable labelled samples among the first `EXAMPLE_ROWS` rows; the others are skipped and logged.

        Raises:
            ValueError: the run has no labelled evaluation split with class names, or a wrong column or path.
        """
        if not self.path or not self.class_names or not self.label_column:
            raise ValueError(
                "the run recorded no labelled evaluation split with class names (eval_data, class_names_file, "
                "eval_label_column)"
            )
        spec = SourceSpec(self.path, self.image_column, None, self.label_column, format=self.format, split=self.split)
        decode = DecodeConfig(
            None, self.class_names, max_image_pixels=self.max_image_pixels, max_aspect_ratio=self.max_aspect_ratio
        )
        damage_log, rng = DamageLog(), random.Random(0)
        for row in open_source(spec).take(EXAMPLE_ROWS):
            sample = read_sample(row, decode, rng)
            if isinstance(sample, Skipped):
                damage_log.report(sample)
                continue
            yield sample

    def widget_examples(self, folder: Path) -> list[widget.WidgetExample]:
        """Examples of different classes (`widget.labelled_examples`), answered by the model saved in `folder`; none
        (logged) where the split cannot be read here: examples are optional, no failure of theirs may end a save."""
        try:
            names = [synonyms[0] for synonyms in self.class_names or ()]
            examples = widget.labelled_examples(((s.image, s.label) for s in self.samples()), names)
            if not examples:
                raise ValueError(f"the evaluation split {self.path!r} yielded no labelled image")
        except Exception as error:  # noqa: BLE001
            logger.warning(
                "no widget examples: the evaluation split cannot be read here (%s: %s)", type(error).__name__, error
            )
            return []
        widget.compute_outputs(folder, examples)
        return examples


def unsaved_name(target: Path, step: int, run_id: str) -> str:
    """A visible name beside `target` for weights whose save could not be completed (never one in use)."""
    name = f"{target.name}.unsaved-step{step}-{run_id}"
    count = 1
    while (target.parent / name).exists():
        count += 1
        name = f"{target.name}.unsaved-step{step}-{run_id}-{count}"
    return name


def save_model_folder(
    output_dir: Path,
    model: torch.nn.Module,
    state_dict: dict,
    processor,
    eval_results: dict,
    run_arguments: dict,
    *,
    base_model: str | None,
    card_examples: CardExamples | None,
    step: int,
    run_id: str,
    adapter: torch.nn.Module | None = None,
) -> None:
    """Main process: stages the new version of `output_dir` beside it and swaps it in (`files.StagedFolder`;
    through a symbolic link, the folder it points to): a kill at any moment leaves the previous output whole.

    A failure before the weights are whole leaves `output_dir` as it was and nothing behind; an error after them
    keeps the weights in a visible folder beside it that the message names (`unsaved_name`); a model card that
    cannot be written does not cost the model (it is saved without one, then reported). Checkpoints, the log and
    other entries are carried over; weight files of an earlier save are not (a stale one could be loaded instead of
    the new weights), nor, without a new card, the earlier model's card.

    Args:
        model: the trained model (sharded or not) whose whole `state_dict` (`sharding.full_state_dict`) is saved.
        run_arguments: every setting of the run (`training_args.json`, the card).
        base_model: the checkpoint the run started from (the card's `base_model`).
        card_examples: the evaluation split the card shows examples of, or None.
        step, run_id: name the folder the weights are kept in when the save fails after them.
        adapter: a LoRA run's peft model (`model` itself; `state_dict` None): its adapter is written first into
            `adapter/` (`adapter.save_adapter`), then it is merged in place (`merge_and_unload`) and the merged model
            saved as the folder's model. Without it an earlier output's `adapter/` is not carried over.

    Raises:
        SaveError: what failed, what is left and where the trained weights are, in one line.
    """
    out = output_dir
    staged = StagedFolder(out)
    folder = staged.path
    try:
        if adapter is not None:
            save_adapter(adapter, folder / ADAPTER_DIR, name=out.name)
            model = adapter.merge_and_unload()
            state_dict = model.state_dict()
        sharding.unsharded_model(model, state_dict).save_pretrained(folder, state_dict=state_dict)
    except BaseException as error:  # Ctrl-C too: the previous output stays, nothing is left behind
        staged.discard()
        if isinstance(error, (OSError, SafetensorError)):
            raise SaveError(
                f"could not save the trained model to {out}: writing its weights failed ({one_line(error)}); "
                f"{out} is as it was and nothing was left behind"
            ) from error
        raise
    try:
        processor.save_pretrained(folder)
        (folder / "eval_results.json").write_text(json.dumps(eval_results, indent=2))
        (folder / "training_args.json").write_text(json.dumps(run_arguments, indent=2, default=str))
    except Exception as error:
        kept = staged.keep_as(unsaved_name(staged.target, step, run_id))
        raise SaveError(
            f"the final save to {out} failed after the weights were written ({one_line(error)}): the trained "
            f"model's weights and config are in {kept}; {out} is as it was"
        ) from error
    card_error = None
    try:
        model_card.write_model_card(
            folder,
            eval_results=eval_results,
            training_args=run_arguments,
            base_model=base_model,
            model_name=out.name,
            examples=card_examples.widget_examples(folder) if card_examples is not None else [],
        )
    except Exception as error:  # noqa: BLE001 - whatever fails in the card, the model is saved first
        card_error = error
    # Never the earlier model's card for this one, nor its adapter (of other weights).
    stale = (ADAPTER_DIR, *(("README.md", "widget") if card_error else ()))
    carry_over(out, folder, lambda entry: not entry.name.endswith(WEIGHT_SUFFIXES) and entry.name not in stale)
    staged.commit()
    if card_error is not None:
        raise SaveError(
            f"the model was saved to {out} without its model card: writing README.md failed ({one_line(card_error)})"
        ) from card_error


__all__ = ["CardExamples", "SaveError", "WEIGHT_SUFFIXES", "save_model_folder", "unsaved_name"]
