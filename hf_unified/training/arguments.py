"""The trainer's settings: three dataclasses read from a YAML file and the command line.

`--config file.yaml` gives values for any field below; flags given on the command line override them. Every YAML
value is checked against its field's type here, so a mistake names the file and the key (not the flag it became),
and a per-source list that no longer matches `train_data` says which lists disagree and where each came from.

This module imports only the standard library, PyYAML and transformers' `HfArgumentParser` (no torch, no models):
`training/train.py` loads it before anything heavy, so a typo in a flag ends in well under two seconds.
"""

from __future__ import annotations

import difflib
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml
from transformers.hf_argparser import HfArgumentParser

# Options of `DataArguments` that take one value for every training source or one value per source.
PER_SOURCE_FIELDS = ("train_format", "image_column", "text_column", "label_column", "train_probabilities")
# `steps.STEP_STRATEGIES` holds a strategy for each (tests/test_training_cli.py checks they agree).
GRADIENT_ACCUMULATION_MODES = ("micro_batch", "full_batch")
# `augmentation.VIEW_PRESETS` plus "auto" (this module imports no torch, so the names are listed here too).
VIEW_PRESET_CHOICES = ("auto", "simclr", "small")
# `configuration_contrastive.OBJECTIVE_PRESETS`' names, spelled here so that parsing does not import torch.
OBJECTIVE_NAMES = ("clip", "unicl", "uniclip", "uniclip+unicl")
ADAM_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for-loop")
CALIBRATION_CHOICES = ("auto", "true", "false")
# The input limits' defaults: `image_processing.MAX_IMAGE_PIXELS` / `MAX_ASPECT_RATIO` and `sources.MAX_CAPTION_CHARS`
# (spelled here so that parsing imports neither; tests/test_training_cli.py checks they agree).
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
DEFAULT_MAX_ASPECT_RATIO = 20.0
DEFAULT_MAX_CAPTION_CHARS = 10_000


class ConfigError(ValueError):
    """A setting is wrong; the message names it, where it came from, and what is expected."""


def _mapping(name: str, value) -> dict:
    """A mapping option: a YAML mapping, or a JSON object on the command line."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{name} must be a JSON object on the command line: {error}") from None
    if not isinstance(value or {}, dict):
        raise ConfigError(f"{name} must be a mapping, got {type(value).__name__}")
    return dict(value or {})


@dataclass
class ModelArguments:
    model_type: str = field(
        default="unicl", metadata={"help": "registered model type (unicl | uniclip | msclip): the model and objective"}
    )
    objective: str | None = field(
        default=None,
        metadata={
            "help": "a named objective applied to the model type's config (model_config fields win): clip = "
            "pairs only, unicl = positives from labels, uniclip = two augmentation-aware views in one space, "
            "uniclip+unicl = both; e.g. model_type msclip with objective uniclip trains MS-CLIP on UniCLIP's views",
            "choices": list(OBJECTIVE_NAMES),
        },
    )
    model_config: dict | str | None = field(
        default=None, metadata={"help": "config kwargs of the method (YAML mapping, or JSON on the command line)"}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "continue from a saved hf-unified model folder or Hub id"}
    )
    init_from_clip: str | None = field(
        default=None,
        metadata={"help": "start from a transformers CLIPModel folder or Hub id (model_class.from_clip)"},
    )
    vision_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "start from a pretrained vision tower (with text_model_name_or_path; fresh projections)"},
    )
    text_model_name_or_path: str | None = field(
        default=None, metadata={"help": "start from a pretrained text tower (with vision_model_name_or_path)"}
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "tokenizer folder or Hub id; default: the starting checkpoint's, else a BPE trained here"},
    )
    tokenizer_vocab_size: int = field(default=512, metadata={"help": "size of the trained caption tokenizer"})
    tokenizer_train_samples: int = field(default=2000, metadata={"help": "training texts used to fit it"})
    max_text_length: int = field(default=32, metadata={"help": "tokens per caption (truncation)"})

    def __post_init__(self):
        self.model_config = _mapping("model_config", self.model_config)
        if bool(self.vision_model_name_or_path) != bool(self.text_model_name_or_path):
            raise ConfigError("give vision_model_name_or_path and text_model_name_or_path together")
        starts = [
            name
            for name in ("model_name_or_path", "init_from_clip", "vision_model_name_or_path")
            if getattr(self, name)
        ]
        if len(starts) > 1:
            raise ConfigError(f"choose one starting point, got {starts}")
        if self.objective is not None and self.model_name_or_path:
            raise ConfigError(
                f"objective {self.objective!r} with model_name_or_path: a saved model keeps the objective it was "
                "trained with; set its config fields in model_config, or start from init_from_clip instead"
            )

    @property
    def config_kwargs(self) -> dict:
        """The config fields of a model built or started here: the `objective` preset under `model_config`."""
        from ..configuration_contrastive import OBJECTIVE_PRESETS  # imports torch: not at parse time

        preset = OBJECTIVE_PRESETS[self.objective] if self.objective else {}
        return {**preset, **self.model_config}

    @property
    def pretrained_start(self) -> str | None:
        """The checkpoint this run starts from (for the model card's `base_model`), if it is a single one."""
        return self.model_name_or_path or self.init_from_clip

    @property
    def starts_pretrained(self) -> bool:
        """Whether the model starts from pretrained weights (a saved model, a CLIP checkpoint or two towers)."""
        return bool(self.model_name_or_path or self.init_from_clip or self.vision_model_name_or_path)


@dataclass
class DataArguments:
    train_data: list[str] = field(
        default_factory=lambda: ["data/shapes/train-*.tar"],
        metadata={"help": "sources: .tar shards (dir/glob), .parquet files, an imagefolder dir, or a Hub id"},
    )
    train_format: list[str] | None = field(
        default=None, metadata={"help": "per source: webdataset|parquet|imagefolder|hub"}
    )
    train_split: str = field(default="train", metadata={"help": "split of Hub/imagefolder training sources"})
    image_column: list[str] = field(default_factory=lambda: ["jpg"], metadata={"help": "per source (or one for all)"})
    text_column: list[str] = field(default_factory=lambda: ["txt"], metadata={"help": "per source; 'none' = no text"})
    label_column: list[str] = field(
        default_factory=lambda: ["none"], metadata={"help": "per source; 'none' = no label"}
    )
    train_probabilities: list[float] | None = field(default=None, metadata={"help": "mixing weights of the sources"})
    eval_data: str | None = field(default="data/shapes/eval-*.tar", metadata={"help": "evaluation source; '' = none"})
    eval_format: str | None = None
    eval_split: str = "validation"
    eval_image_column: str = "jpg"
    eval_text_column: str = field(default="txt", metadata={"help": "'none' = zero-shot only (no retrieval)"})
    eval_label_column: str = field(default="cls", metadata={"help": "'none' = retrieval only"})
    eval_max_samples: int | None = field(default=None, metadata={"help": "cap the evaluation set (per rank)"})
    class_names_file: str | None = field(
        default="data/shapes/classes.json",
        metadata={
            "help": "JSON list (entries may be synonym lists) or text file (one class a line, synonyms by commas)"
        },
    )
    templates: str = field(
        default="unicl", metadata={"help": "prompts for labelled training data: unicl|openai|shapes|name|<file.json>"}
    )
    eval_templates: str | None = field(default=None, metadata={"help": "zero-shot prompts; default: templates"})
    map_captions_to_labels: bool = field(
        default=False,
        metadata={"help": "captions naming exactly one class (names+synonyms, whole words) take its label"},
    )
    label_vocabulary_file: str | None = field(
        default=None, metadata={"help": "names+synonyms; default class_names_file"}
    )
    shuffle_buffer_size: int = 1000
    shuffle_input_shards: int = field(
        default=10,
        metadata={
            "help": "shards feeding the shuffle buffer at once (datasets' max_buffer_input_shards, its default 10); "
            "1 reads them one after another, as webdataset and open_clip do: about 1.7x faster raw reads (with one "
            "stream lane every DataLoader worker reads the whole stream), at the price of batches that mix fewer "
            "shards"
        },
    )
    stream_lanes: int = field(
        default=1,
        metadata={
            "help": "independent streams over disjoint shards (batch b comes from lane b mod lanes): with a multiple "
            "of num_workers, each worker reads 1/num_workers of the raw stream instead of all of it; needs "
            "lanes x world size shards per source; batches depend on it, so resume with the same value"
        },
    )
    num_workers: int = field(default=2, metadata={"help": "DataLoader workers decoding and augmenting"})
    max_skipped_fraction: float = field(
        default=0.1,
        metadata={"help": "stop when more than this share of the samples read were skipped as damaged (1 = never)"},
    )
    skipped_check_after: int = field(
        default=1000, metadata={"help": "samples read (over all ranks) before max_skipped_fraction applies"}
    )
    image_size: int = field(
        default=224, metadata={"help": "training crop of a model built here (a pretrained start uses its processor's)"}
    )
    resize_ratio: float = field(
        default=256 / 224, metadata={"help": "evaluation resize = image_size * ratio, then centre crop"}
    )
    crop_scale_min: float = field(
        default=0.5,
        metadata={"help": "random-resized-crop area range [min, 1] (single view); 1 = resize + centre crop"},
    )
    horizontal_flip: bool = field(default=False, metadata={"help": "off by default: captions may say left/right"})
    # Methods that train on views (UniCLIP): how strong they are and where they are made.
    view_preset: str = field(
        default="auto",
        metadata={
            "help": "view recipe: simclr (photos), small (up to 64 px: mild crops, no colour jitter), auto (by size)",
            "choices": list(VIEW_PRESET_CHOICES),
        },
    )
    augmentation_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "view recipe fields overriding the preset (scale, jitter_p, grayscale_p, blur_p, ...)"},
    )
    views_on_device: bool = field(
        default=True,
        metadata={
            "help": "workers only decode (to a uint8 canvas); the views are made in the training step on its device "
            "(BatchMultiViewAugmentation). false: per-image views in the workers (MultiViewAugmentation)"
        },
    )
    view_canvas_size: int | None = field(
        default=None,
        metadata={"help": "side of the canvas workers decode to (views_on_device); default: the view size"},
    )
    embedded_data_dir: str = field(default="data/shapes", metadata={"help": "generated here when a source uses it"})
    # Input limits, checked before anything is decoded, resized or tokenised (training, evaluation, the card's example
    # images); a sample over one is skipped and counted like other damage.
    max_image_pixels: int = field(
        default=DEFAULT_MAX_IMAGE_PIXELS,
        metadata={
            "help": "skip images declaring more pixels (width x height, read from the header before decoding); the "
            "saved processor refuses larger ones on the pipeline route too"
        },
    )
    max_aspect_ratio: float = field(
        default=DEFAULT_MAX_ASPECT_RATIO,
        metadata={
            "help": "skip images whose long side / short side is larger (a thin image resized to the crop's short "
            "side would take gigabytes); the saved processor refuses them too"
        },
    )
    max_caption_chars: int = field(
        default=DEFAULT_MAX_CAPTION_CHARS,
        metadata={"help": "skip captions longer than this many characters, before tokenising (training, evaluation)"},
    )

    def __post_init__(self):
        self.augmentation_kwargs = _mapping("augmentation_kwargs", self.augmentation_kwargs)
        if not self.train_data:
            raise ConfigError("train_data is empty: give at least one source")
        if not 0.0 <= self.max_skipped_fraction <= 1.0:
            raise ConfigError(f"max_skipped_fraction must be in [0, 1], got {self.max_skipped_fraction}")
        if self.stream_lanes < 1:
            raise ConfigError(f"stream_lanes must be a number of lanes >= 1, got {self.stream_lanes}")
        if self.shuffle_input_shards < 1:
            raise ConfigError(
                f"shuffle_input_shards must be a number of shards >= 1, got {self.shuffle_input_shards}: give 1 to "
                "read shards one after another, or more to feed the shuffle buffer from several at once"
            )
        if self.view_canvas_size is not None and self.view_canvas_size < 1:
            raise ConfigError(
                f"view_canvas_size must be a positive number of pixels or null, got {self.view_canvas_size}"
            )
        for name in ("max_image_pixels", "max_caption_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive whole number, got {getattr(self, name)}")
        if not (math.isfinite(self.max_aspect_ratio) and self.max_aspect_ratio >= 1):
            raise ConfigError(
                f"max_aspect_ratio must be a finite number >= 1 (long side / short side), got {self.max_aspect_ratio}"
            )

    @property
    def image_limits(self) -> dict:
        """`max_image_pixels` and `max_aspect_ratio`, as `data.DecodeConfig` and the image processor take them."""
        return {"max_image_pixels": self.max_image_pixels, "max_aspect_ratio": self.max_aspect_ratio}


@dataclass
class TrainArguments:
    output_dir: str = field(
        default="outputs/run",
        metadata={"help": "the run's folder (one run at a time: run.lock); a symbolic link to a scratch disk works"},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "start a new run in an output_dir that holds another run's checkpoints or model: its checkpoints "
            "and tokenizer are deleted, its model replaced at the end (without it such a folder is refused)"
        },
    )
    per_device_train_batch_size: int = 64
    per_device_eval_batch_size: int = 128
    max_steps: int = 1000
    stop_at_step: int = field(
        default=0,
        metadata={
            "help": "end this run after this step, checkpointed, without changing the schedule "
            "(time-limited jobs; resume later with --resume_from_checkpoint latest)"
        },
    )
    learning_rate: float = field(default=5e-4, metadata={"help": "peak learning rate (of the towers, see below)"})
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": "a transformers scheduler: cosine, linear, constant_with_warmup, ..."}
    )
    warmup_steps: int = 100
    weight_decay: float = field(
        default=0.1, metadata={"help": "AdamW decay of the weight matrices (none on norms, biases, embeddings)"}
    )
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_epsilon: float = 1e-6
    adam_implementation: str = field(
        default="auto",
        metadata={
            "help": "AdamW kernel: auto (fused where torch has one: CUDA, CPU, MPS, XPU; else foreach), fused, "
            "foreach or for-loop",
            "choices": list(ADAM_IMPLEMENTATIONS),
        },
    )
    similarity_learning_rate_multiplier: float = field(
        default=10.0,
        metadata={
            "help": "the similarity parameters (logit_scale, logit_offset: their own AdamW group) train at this "
            "multiple of the rate they would have otherwise"
        },
    )
    calibrate_logit_offsets: str = field(
        default="auto",
        metadata={
            "help": "set each domain pair's logit offset to the mean cosine of different items on the first batch: "
            "auto = for a model with domain_similarity that starts from scratch (not on resume, not from a "
            "pretrained start); true = whatever the start (not on resume); false = never",
            "choices": list(CALIBRATION_CHOICES),
        },
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "clip the gradient norm; 0 = no clipping"})
    max_consecutive_nonfinite_steps: int = field(
        default=5,
        metadata={"help": "stop after this many steps in a row with a non-finite loss or gradient (each is skipped)"},
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    gradient_accumulation_mode: str = field(
        default="micro_batch",
        metadata={
            "help": "full_batch: one loss over the whole accumulated batch, exact (GradCache: embeddings cached, "
            "then each micro-batch re-run); micro_batch: each micro-batch's loss sees only its own negatives",
            "choices": list(GRADIENT_ACCUMULATION_MODES),
        },
    )
    # Fine-tuning controls (issue 15): which parameters train, and at which learning rate.
    freeze_vision_tower: bool = field(
        default=False, metadata={"help": "freeze the image tower's embeddings and blocks (its head still trains)"}
    )
    freeze_text_tower: bool = field(
        default=False, metadata={"help": "freeze the text tower's embeddings and blocks (its head still trains)"}
    )
    lock_image_tower: bool = field(
        default=False,
        metadata={"help": "LiT: freeze everything the image features depend on, projection included, in eval mode"},
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "learning rate of the heads (final norms, projections, temperatures); default learning_rate"
        },
    )
    layerwise_lr_decay: float = field(
        default=1.0,
        metadata={"help": "tower block i of L trains at learning_rate * decay^(L - i), embeddings at decay^(L + 1)"},
    )
    mixed_precision: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 on GPU, fp32 on CPU) | no | bf16 | fp16",
            "choices": ["auto", "no", "bf16", "fp16"],
        },
    )
    gradient_checkpointing: bool = False
    use_cpu: bool = field(default=False, metadata={"help": "train on the CPU even when a GPU is present"})
    torch_compile: bool = field(
        default=False,
        metadata={"help": "torch.compile the model (inductor) and the colour jitter of views made on the device"},
    )
    max_logit_scale: float = field(default=100.0, metadata={"help": "clamp exp(logit_scale) after each step; 0 = off"})
    seed: int = 0
    logging_steps: int = field(
        default=10, metadata={"help": "a log record (and, off a terminal, a line) every N steps"}
    )
    eval_steps: int = field(default=0, metadata={"help": "evaluate every N steps (0 = only at the end)"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0 = never)"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept (0 = all)"})
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "a checkpoint folder or 'latest'; refused when its run had other settings (named)"},
    )
    allow_setting_changes: bool = field(
        default=False,
        metadata={
            "help": "resume with new values of learning_rate, lr_scheduler_type, warmup_steps, max_steps, "
            "weight_decay, similarity_learning_rate_multiplier, max_grad_norm, max_logit_scale (applied from the "
            "resumed step); other settings must stay"
        },
    )
    do_eval: bool = True
    report_to: list[str] | None = field(
        default=None, metadata={"help": "accelerate trackers: tensorboard, trackio, ..."}
    )
    project_name: str = "hf-unified"
    push_to_hub: bool = field(default=False, metadata={"help": "upload the final folder (checked before training)"})
    hub_model_id: str | None = None
    hub_private: bool = field(default=True, metadata={"help": "create the Hub repo private (false: public)"})
    export_clip: str | None = field(
        default=None,
        metadata={
            "help": "also write the final model as a transformers CLIPModel folder here (checked before training: "
            "never output_dir, a folder around or inside it, or another run)"
        },
    )
    overwrite_export_clip: bool = field(
        default=False, metadata={"help": "replace an existing export_clip folder (an earlier export)"}
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "log lines instead of a bar even on a terminal"})

    def __post_init__(self):
        if self.push_to_hub and not self.hub_model_id:
            raise ConfigError("--push_to_hub needs --hub_model_id ORG/NAME")
        for name in ("max_steps", "logging_steps", "gradient_accumulation_steps", "max_consecutive_nonfinite_steps"):
            minimum = 0 if name == "max_steps" else 1
            if getattr(self, name) < minimum:
                raise ConfigError(f"{name} must be at least {minimum}, got {getattr(self, name)}")
        if self.similarity_learning_rate_multiplier <= 0:
            raise ConfigError(
                f"similarity_learning_rate_multiplier must be positive, got {self.similarity_learning_rate_multiplier}"
                " (to keep the temperatures fixed, freeze them in the model instead)"
            )
        if not 0.0 < self.layerwise_lr_decay <= 1.0:
            raise ConfigError(f"layerwise_lr_decay must be in (0, 1], got {self.layerwise_lr_decay}")

    @property
    def needs_parameter_roles(self) -> bool:
        """Whether a fine-tuning control needs to know which tower and depth each parameter has."""
        return (
            self.freeze_vision_tower
            or self.freeze_text_tower
            or self.lock_image_tower
            or self.head_learning_rate is not None
            or self.layerwise_lr_decay != 1.0
        )


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainArguments)


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
    return model_args, data_args, train_args


def flat_arguments(*arguments) -> dict:
    """All fields of the given dataclasses in one dict (for `training_args.json`, trackers and the model card)."""
    return {f.name: getattr(args, f.name) for args in arguments for f in fields(args)}


__all__ = [
    "ADAM_IMPLEMENTATIONS",
    "OBJECTIVE_NAMES",
    "ARGUMENT_CLASSES",
    "CALIBRATION_CHOICES",
    "ConfigError",
    "DEFAULT_MAX_ASPECT_RATIO",
    "DEFAULT_MAX_CAPTION_CHARS",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DataArguments",
    "GRADIENT_ACCUMULATION_MODES",
    "ModelArguments",
    "PER_SOURCE_FIELDS",
    "TrainArguments",
    "VIEW_PRESET_CHOICES",
    "build_parser",
    "check_config_value",
    "check_per_source_lengths",
    "flat_arguments",
    "load_config_file",
    "parse_arguments",
]
