"""Native export: a UniCL or UniCLIP model whose inference graph is exactly transformers' `CLIPModel`, saved as a
plain `CLIPModel` + `CLIPProcessor` folder that loads without `trust_remote_code` and without this package.

    hf-unified-export-clip MODEL_FOLDER OUTPUT_DIR        # or: python -m hf_unified.hub.export ...

Exactly representable means, at inference:

- image tower `CLIPVisionModel` pooled by its own `pooler_output` (`vision_pooling="pooler"`), text tower
  `CLIPTextModel` pooled at the first end-of-text token (`text_pooling="eos"`, with the `eos_token_id` the CLIP text
  model pools at: not the legacy value 2, for which CLIP takes the largest token id instead);
- linear projections without bias, and one temperature: `logits = exp(logit_scale) * cos`;
- UniCLIP only: at the identity augmentation parameters the augmentation code is a constant vector `c`, added to the
  pooled feature (`augmentation_fusion="add"`) or concatenated to it (`"concat"`). CLIPModel's image projection has
  no bias, so the constant's projection must be zero within tolerance. The image-text logit is
  `exp(logit_scale[image-text]) * (cos - logit_offset[image-text])`: the offset must be zero within tolerance too
  (the image-image and text-text scales and offsets only matter in training). `augmentation_fusion="mlp"` makes
  the image projection a 2-layer MLP, which CLIPModel's one Linear cannot hold: refused (the ONNX export,
  `hf-unified-export-onnx`, serves such a model without this package).

Everything else (Swin, ViT or BERT towers, mean or cls pooling, MS-CLIP's modality-shared stack, ...) is refused with
`NotExportableError` naming every reason. An export is checked numerically before it is written: the image and text
embeddings and the logits of the CLIPModel equal the source model's within `atol` (default 1e-5) on sample inputs,
and the folder is written atomically (`hf_unified.files.StagedFolder`: beside the target, then renamed).

**What an export may replace.** `check_export_target` runs first (and again just before the folder is published; the
trainer runs it before training): a target that is the source model folder, contains it or lies inside it is refused
even with `overwrite`, and so is an existing folder holding a training run (checkpoints, a training log, a run lock)
or a saved model that is not an export. Any other existing target is replaced only with `overwrite`. Tolerances must
be finite: `atol=nan` would turn every check off.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModel,
    AutoProcessor,
    CLIPConfig,
    CLIPModel,
    CLIPProcessor,
    CLIPTextModel,
    CLIPVisionModel,
    PreTrainedModel,
)

import hf_unified  # noqa: F401  (registers the hf-unified classes with the Auto classes)
from hf_unified.image_processing import native_image_processor
from hf_unified.losses import DOMAIN_PAIRS

from ..files import LOCK_NAME, StagedFolder, real_path, write_file
from .model_card import EXPORT_INFO_FILE, render_card_files

# Files of the source folder that describe the exported model too (same function, same numbers).
CARRIED_FILES = ("eval_results.json", "training_args.json")
EXPORTABLE_TYPES = ("unicl", "uniclip")
# transformers' CLIPTextTransformer pools at `input_ids.argmax(-1)` when eos_token_id == 2 (configs from before
# transformers PR #24773), not at the first end-of-text token.
CLIP_LEGACY_EOS_TOKEN_ID = 2
SAMPLE_TEXTS = ("a photo of a cat", "a diagram", "two dogs playing in the snow")
# What marks a folder an export must never replace: a training run's files (hub never imports training, so its names
# are spelled here; tests/training/test_run_safety.py checks they match the trainer's) and `checkpoint-<step>` folders.
RUN_FILES = (LOCK_NAME, "training_log.jsonl", "trainer_state.json")
# A saved tokenizer has one of these (the first is what transformers 5 writes).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")
# The processor files of a saved folder that may carry an `auto_map` to the source's processing code.
PROCESSOR_FILES = ("tokenizer_config.json", "processor_config.json", "preprocessor_config.json")
# An export holds about ten files; a target holding more than this many entries is not one.
MAX_REPLACED_ENTRIES = 1000


class NotExportableError(ValueError):
    """The model's inference graph is not exactly `CLIPModel`'s; the message lists every reason."""


class ExportTargetError(ValueError):
    """Writing the export to this folder could destroy something no flag allows; the one-line message says what."""


@dataclass
class ExportResult:
    """What `export_clip` wrote and how closely the export matches its source."""

    output_dir: Path
    source_model_type: str
    max_abs_difference: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        diffs = ", ".join(f"{name} {value:.2e}" for name, value in self.max_abs_difference.items())
        notes = "".join(f"\n- {note}" for note in self.notes)
        return (
            f"exported the {self.source_model_type} model to {self.output_dir} as CLIPModel "
            f"(max |diff| against the source: {diffs}){notes}"
        )


def _reason_prefix(model: PreTrainedModel) -> str:
    return f"{type(model).__name__} ({model.config.model_type})"


def _projected_identity_code(model: PreTrainedModel) -> torch.Tensor:
    """UniCLIP: what the augmentation code at the identity parameters adds to every projected image feature."""
    config = model.config
    weight = model.visual_projection.weight
    identity = torch.tensor([config.identity_augmentation_params], dtype=weight.dtype, device=weight.device)
    code = model.augmentation_encoder(identity)[0]
    if config.augmentation_fusion == "add":
        return model.visual_projection(code)
    return code @ weight[:, config.vision_config.hidden_size :].T


def image_text_index(values: torch.Tensor) -> int:
    """Index of the image-text entry of a per-domain-pair parameter (`[3]`), or 0 for one shared value."""
    return DOMAIN_PAIRS.index("image-text") if values.numel() == len(DOMAIN_PAIRS) else 0


def check_tolerance(atol: float) -> float:
    """`atol` if it is a finite number >= 0; a NaN tolerance would pass every comparison (`x > nan` is False)."""
    if not (isinstance(atol, (int, float)) and math.isfinite(atol) and atol >= 0):
        raise ValueError(f"atol must be a finite number >= 0 (the export's equivalence tolerance), got {atol!r}")
    return float(atol)


def _inside(path: Path, folder: Path) -> bool:
    return path != folder and folder in path.parents


def _run_content(folder: Path) -> str | None:
    """What in `folder` (walked without following links) marks a training run or a saved model that is not an
    export, or that it is too large to be an export; None when it holds neither."""
    entries = 0
    for root, dirs, files in os.walk(folder):
        root = Path(root)
        entries += len(dirs) + len(files)
        if entries > MAX_REPLACED_ENTRIES:
            return f"holds more than {MAX_REPLACED_ENTRIES} files and folders (an export holds about ten)"
        for name in dirs:
            if name.startswith("checkpoint-") and name.split("-", 1)[1].isdigit():
                return f"holds training checkpoints ({root / name})"
        for name in files:
            if name in RUN_FILES:
                return f"holds a training run ({root / name})"
        if "config.json" in files and EXPORT_INFO_FILE not in files:
            return f"holds a saved model that is not an export ({root / 'config.json'})"
    return None


def check_export_target(
    target: str | Path, source: str | Path | None = None, overwrite: bool = False, flag: str = "--overwrite"
) -> None:
    """Refuses an export target whose writing could destroy what it must not (see the module docstring).

    Args:
        target: the export folder.
        source: the model folder exported (for the trainer: its `output_dir`), or None for a model object.
        overwrite: whether an existing target (an earlier export, an empty or unrelated folder) may be replaced.
        flag: the option that sets `overwrite`, named in the message.

    Raises:
        ExportTargetError: the target is, contains or lies inside `source`, or holds a run or a model that is not
            an export (even with `overwrite`), or is not a folder.
        FileExistsError: the target exists and `overwrite` is False.
    """
    given, real = Path(target), real_path(target)
    if source is not None:
        origin = real_path(source)
        if real == origin:
            raise ExportTargetError(f"export target {given} is the source model folder {source}: choose another one")
        if _inside(origin, real):
            raise ExportTargetError(
                f"export target {given} contains the source model folder {source}: replacing it would delete the "
                "model (and its checkpoints and any other run there); choose a folder outside it"
            )
        if _inside(real, origin):
            raise ExportTargetError(
                f"export target {given} is inside the source model folder {source}: choose a folder outside it"
            )
    if not os.path.lexists(real):
        return
    if not real.is_dir():
        raise ExportTargetError(f"export target {given} exists and is not a folder")
    if not overwrite:
        raise FileExistsError(f"{given} exists: choose a new folder or pass overwrite=True ({flag})")
    problem = _run_content(real)
    if problem:
        raise ExportTargetError(
            f"export target {given} {problem}: it is not replaced, even with {flag}; choose another folder"
        )


def export_problems(model: PreTrainedModel, atol: float = 1e-5) -> list[str]:
    """Every reason why `model`'s inference graph is not exactly `CLIPModel`'s (empty when it is)."""
    atol = check_tolerance(atol)
    config = model.config
    name = _reason_prefix(model)
    if config.model_type not in EXPORTABLE_TYPES:
        if config.model_type == "msclip":
            return [
                f"{name}: MS-CLIP runs one modality-shared transformer stack for images and text (shared "
                f"sub-layers {getattr(config, 'shared_sublayers', '?')} of layers "
                f"{getattr(config, 'shared_layers', '?')}, its own stem and parallel branch); CLIPModel has two "
                "independent towers, so no CLIPModel computes the same function"
            ]
        return [f"{name}: only {EXPORTABLE_TYPES} models can be exported, got model_type {config.model_type!r}"]
    problems = []
    for attribute, expected in (("vision_model", CLIPVisionModel), ("text_model", CLIPTextModel)):
        tower = getattr(model, attribute)
        if type(tower) is not expected:
            problems.append(
                f"{name}: the {attribute} is {type(tower).__name__} ({tower.config.model_type}); CLIPModel's is "
                f"{expected.__name__}"
            )
    if config.vision_pooling != "pooler":
        problems.append(
            f"{name}: vision_pooling is {config.vision_pooling!r}; CLIPModel pools the image tower's pooler_output "
            "(vision_pooling='pooler')"
        )
    if config.text_pooling != "eos":
        problems.append(
            f"{name}: text_pooling is {config.text_pooling!r}; CLIPModel pools the first end-of-text token "
            "(text_pooling='eos')"
        )
    eos_token_id = getattr(config.text_config, "eos_token_id", None)
    if eos_token_id is None or eos_token_id == CLIP_LEGACY_EOS_TOKEN_ID:
        problems.append(
            f"{name}: text_config.eos_token_id is {eos_token_id!r}; CLIPTextModel pools at the first end-of-text "
            f"token only for a set id other than {CLIP_LEGACY_EOS_TOKEN_ID} (with {CLIP_LEGACY_EOS_TOKEN_ID} it takes "
            "the largest token id)"
        )
    mlp_head = config.augmentation_fusion == "mlp"  # the checks of a Linear image projection do not apply
    if mlp_head:
        problems.append(
            f"{name}: augmentation_fusion is 'mlp', so visual_projection is a 2-layer MLP (fc1, GELU, fc2) and "
            "CLIPModel's visual_projection is one Linear: no CLIPModel computes it; export it with "
            "hf-unified-export-onnx or share the folder as it is, or train with augmentation_fusion 'add' or "
            "'concat' for a native CLIPModel"
        )
    for attribute in ("text_projection",) if mlp_head else ("visual_projection", "text_projection"):
        if getattr(model, attribute).bias is not None:
            problems.append(f"{name}: {attribute} has a bias; CLIPModel's projections have none")

    logit_scale = model.logit_scale.detach().reshape(-1)
    if logit_scale.numel() not in (1, len(DOMAIN_PAIRS)):
        problems.append(f"{name}: logit_scale has {logit_scale.numel()} values; expected 1 or {len(DOMAIN_PAIRS)}")
        return problems
    scale = logit_scale[image_text_index(logit_scale)].exp().item()
    logit_offset = getattr(model, "logit_offset", None)
    if logit_offset is not None:
        offsets = logit_offset.detach().reshape(-1)
        offset = offsets[image_text_index(offsets)].item()
        if abs(scale * offset) > atol:
            problems.append(
                f"{name}: the image-text logit offset is {offset:.6g}, so its logits are exp(logit_scale) * (cos - "
                f"{offset:.6g}) and CLIPModel's exp(logit_scale) * cos differ from them by the constant "
                f"{scale * offset:.6g} (more than atol={atol:g}); the zero-shot softmax scores would still be equal, "
                "but logits_per_image would not"
                + (
                    f" (this is the sigmoid loss's bias b = {-scale * offset:.6g}: CLIPModel has no bias, so "
                    "sigmoid(logits_per_image) would not be the pairs' match probabilities)"
                    if getattr(model.config, "contrastive_loss", None) == "sigmoid"
                    else ""
                )
            )
    if getattr(model, "augmentation_encoder", None) is not None and not mlp_head:
        with torch.no_grad():
            constant = _projected_identity_code(model)
        largest = constant.abs().max().item()
        if largest > atol:
            problems.append(
                f"{name}: at the identity augmentation parameters the augmentation code adds the constant vector "
                f"visual_projection(c) to every image feature (largest entry {largest:.6g} > atol={atol:g}, "
                f"augmentation_fusion={config.augmentation_fusion!r}); CLIPModel's image projection has no bias, so "
                "it is representable only when that projected constant is zero"
            )
    return problems


def to_clip_model(model: PreTrainedModel, atol: float = 1e-5) -> CLIPModel:
    """The `CLIPModel` that computes what `model` computes at inference.

    Raises:
        NotExportableError: `model`'s graph is not CLIPModel's (every reason is listed).
    """
    problems = export_problems(model, atol)
    if problems:
        raise NotExportableError("cannot export to a native CLIPModel:\n" + "\n".join(f"- {p}" for p in problems))
    config = model.config
    logit_scale = model.logit_scale.detach().reshape(-1)
    scale = logit_scale[image_text_index(logit_scale)].item()
    # The towers' configs carry projection_dim too: CLIPVisionModelWithProjection / CLIPTextModelWithProjection (the
    # image- and text-embedding route) build their projection from the sub-config, CLIPModel from the top level.
    towers = {"projection_dim": config.projection_dim}
    clip_config = CLIPConfig(
        text_config=config.text_config.to_dict() | towers,
        vision_config=config.vision_config.to_dict() | towers,
        projection_dim=config.projection_dim,
        logit_scale_init_value=scale,
    )
    clip = CLIPModel(clip_config)
    vision_width = config.vision_config.hidden_size
    state = {f"vision_model.{k}": v for k, v in model.vision_model.state_dict().items()}
    state |= {f"text_model.{k}": v for k, v in model.text_model.state_dict().items()}
    # UniCLIP's "concat" projection also reads the augmentation code; its share of the weight is dropped (zero effect
    # by the check above).
    state["visual_projection.weight"] = model.visual_projection.weight.detach()[:, :vision_width]
    state["text_projection.weight"] = model.text_projection.weight.detach()
    state["logit_scale"] = torch.tensor(scale, dtype=clip.logit_scale.dtype)
    clip.load_state_dict(state, strict=True)
    return clip.to(model.dtype).eval()


@torch.no_grad()
def compare_outputs(source: PreTrainedModel, clip: CLIPModel, tokenizer) -> dict[str, float]:
    """Largest absolute differences between the two models on sample images and texts (embeddings and logits)."""
    size = source.config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, source.config.vision_config.num_channels, size, size, generator=generator)
    positions = source.config.text_config.max_position_embeddings  # a tiny tower may hold fewer than a sample text
    text = tokenizer(list(SAMPLE_TEXTS), padding=True, truncation=True, max_length=positions, return_tensors="pt")
    inputs = {k: v for k, v in text.items() if k != "token_type_ids"}  # CLIP's text tower takes none
    inputs["pixel_values"] = pixel_values.to(source.dtype)
    expected, got = source.eval()(**inputs), clip(**inputs)
    return {
        name: (getattr(expected, name) - getattr(got, name)).abs().max().item()
        for name in ("image_embeds", "text_embeds", "logits_per_image")
    }


def _source_folder(model_folder_or_model, processor) -> Path | None:
    """The saved model folder exported (None for a model object), checked before anything is loaded."""
    if isinstance(model_folder_or_model, PreTrainedModel):
        if processor is None:
            raise ValueError("export_clip got a model object: give its processor too (processor=...)")
        return None
    folder = Path(model_folder_or_model)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} is not a saved model folder (no config.json): give a save_pretrained folder")
    return folder


def missing_processor_parts(folder: Path) -> list[str]:
    """The parts of a saved processor that `folder` lacks ("tokenizer (tokenizer.json)", "image processor
    (processor_config.json)"); empty when both are there. Checked before `AutoProcessor` runs: without a tokenizer
    file it fails deep inside `tokenizers` with a message about sentencepiece or tiktoken."""
    missing = []
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"tokenizer ({TOKENIZER_FILES[0]})")
    image_processor = (folder / "preprocessor_config.json").is_file()
    if not image_processor and (folder / "processor_config.json").is_file():
        image_processor = "image_processor" in json.loads((folder / "processor_config.json").read_text())
    if not image_processor:
        missing.append("image processor (processor_config.json)")
    return missing


def _load(model_folder_or_model, processor, folder: Path | None):
    if folder is None:
        return model_folder_or_model, processor
    missing = [] if processor is not None else missing_processor_parts(folder)
    if missing:
        raise ValueError(
            f"{folder.resolve()} has no {' and no '.join(missing)}: the export needs the model's processor; save it "
            "beside the model (processor.save_pretrained(folder)) or pass processor=... to export_clip"
        )
    return AutoModel.from_pretrained(folder).eval(), processor or AutoProcessor.from_pretrained(folder)


def _byte_level_prefix_space(tokenizer_file: Path) -> bool | None:
    """`add_prefix_space` of the byte-level pre-tokenizer in a `tokenizer.json` (None without one)."""
    pre_tokenizer = json.loads(tokenizer_file.read_text()).get("pre_tokenizer") or {}
    for step in [pre_tokenizer, *pre_tokenizer.get("pretokenizers", [])]:
        if step.get("type") == "ByteLevel":
            return step.get("add_prefix_space")
    return None


def make_configs_portable(folder: Path) -> None:
    """Rewrites a saved native folder's processor files so that transformers 4.57 (still run by many serving images)
    loads them with the same token ids, and nothing points at code the folder does not hold.

    - `auto_map` entries (the source's `processing_<method>.py`) are removed from every processor file.
    - A tokenizer saved by transformers 5 as `TokenizersBackend` (a plain `tokenizers` tokenizer, such as the trained
      caption tokenizer) is declared `PreTrainedTokenizerFast`, the class both 4.57 and 5 know, with the byte-level
      pre-tokenizer's `add_prefix_space`: 4.57 otherwise turns the prefix space off and shifts every first word's id.
    """
    for name in PROCESSOR_FILES:
        path = folder / name
        if not path.is_file():
            continue
        config = json.loads(path.read_text())
        changed = config.pop("auto_map", None) is not None
        if name == "tokenizer_config.json" and config.get("tokenizer_class") == "TokenizersBackend":
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
            prefix_space = _byte_level_prefix_space(folder / "tokenizer.json")
            if prefix_space is not None:
                config["add_prefix_space"] = prefix_space
            changed = True
        if changed:
            write_file(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def export_clip(
    model_folder_or_model,
    output_dir: str | Path,
    *,
    processor=None,
    atol: float = 1e-5,
    overwrite: bool = False,
    repo_id: str | None = None,
    source_repo_id: str | None = None,
) -> ExportResult:
    """Exports a UniCL / UniCLIP model to a plain `CLIPModel` + `CLIPProcessor` folder with its model card.

    Args:
        model_folder_or_model: a saved hf-unified model folder (model + processor), or the model object.
        output_dir: the folder to write (must not exist unless `overwrite`).
        processor: the model's processor; read from the folder when a folder is given.
        atol: tolerance of the representability checks and of the numerical comparison.
        overwrite: replace an existing `output_dir` (never one that is, holds or lies inside the source folder, or
            holds a training run or a model that is not an export: `check_export_target`).
        repo_id: Hub id of the export, used in its card's usage code (default: a placeholder that
            `push_folder` fills in).
        source_repo_id: Hub id of the hf-unified model it comes from (the card's `base_model`), if pushed.

    Returns:
        An `ExportResult` with the largest differences measured against the source.

    Raises:
        NotExportableError: the graph is not CLIPModel's, or the numerical check failed.
        FileExistsError: `output_dir` exists and `overwrite` is False.
        ExportTargetError: `output_dir` must not be replaced (`check_export_target`).
        ValueError: `atol` is not a finite number >= 0.
    """
    output_dir = Path(output_dir)
    atol = check_tolerance(atol)
    source = _source_folder(model_folder_or_model, processor)
    check_export_target(output_dir, source, overwrite)
    model, processor = _load(model_folder_or_model, processor, source)
    clip = to_clip_model(model, atol)
    differences = compare_outputs(model, clip, processor.tokenizer)
    if max(differences.values()) > atol:
        raise NotExportableError(
            f"the exported CLIPModel differs from the source by more than atol={atol:g}: {differences}"
        )
    image_processor = native_image_processor(processor.image_processor)  # no custom code in a native folder
    clip_processor = CLIPProcessor(image_processor=image_processor, tokenizer=processor.tokenizer)
    notes = [
        "texts must end with the end-of-text token, as the tokenizer's output does: CLIPModel pools there, the source "
        "model falls back to the last attended token for rows without one"
    ]
    if model.logit_scale.numel() > 1:
        notes.append("UniCLIP's image-image and text-text temperatures and offsets are training-only; not exported")
    info = {
        "exported_with": f"hf-unified {hf_unified.__version__}",
        "source_model_type": model.config.model_type,
        "source_architecture": type(model).__name__,
        "source_repo_id": source_repo_id,
        "atol": atol,
        "max_abs_difference": differences,
        "notes": notes,
    }

    with StagedFolder(output_dir) as staging:  # published when complete, removed on an error
        clip.save_pretrained(staging)
        clip_processor.save_pretrained(staging)
        make_configs_portable(staging)
        (staging / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        for name in CARRIED_FILES:
            if source is not None and (source / name).is_file():
                shutil.copy2(source / name, staging / name)
        for path, data in render_card_files(
            staging, repo_id=repo_id, model_name=output_dir.name, examples_from=source
        ).items():
            write_file(staging / path, data)
        check_export_target(output_dir, source, overwrite)  # the target may have changed meanwhile
    return ExportResult(output_dir, model.config.model_type, differences, notes)


def tolerance_argument(text: str) -> float:
    """`--atol`'s argparse type: a finite number >= 0."""
    try:
        return check_tolerance(float(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-unified-export-clip",
        description="Export a UniCL / UniCLIP model whose graph is exactly CLIPModel's to a native CLIPModel folder "
        "(no custom code; refused with the reason otherwise).",
    )
    parser.add_argument("model_folder", help="saved hf-unified model folder (model + processor)")
    parser.add_argument("output_dir", help="folder to write the CLIPModel + CLIPProcessor to")
    parser.add_argument("--atol", type=tolerance_argument, default=1e-5, help="tolerance of the checks (default 1e-5)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output_dir")
    parser.add_argument("--repo_id", default=None, help="Hub id the export will be pushed to (for its card)")
    parser.add_argument("--source_repo_id", default=None, help="Hub id of the source model (the card's base_model)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = export_clip(
            args.model_folder,
            args.output_dir,
            atol=args.atol,
            overwrite=args.overwrite,
            repo_id=args.repo_id,
            source_repo_id=args.source_repo_id,
        )
    except (NotExportableError, FileExistsError, ValueError, OSError) as error:
        print(f"hf-unified-export-clip: {error}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


__all__ = [
    "EXPORT_INFO_FILE",
    "ExportResult",
    "ExportTargetError",
    "NotExportableError",
    "check_export_target",
    "check_tolerance",
    "compare_outputs",
    "export_clip",
    "export_problems",
    "main",
    "make_configs_portable",
    "missing_processor_parts",
    "to_clip_model",
]

if __name__ == "__main__":
    sys.exit(main())
