"""The trainer's settings: three dataclasses (`ModelArguments`, `DataArguments`, `TrainArguments`), each field with
its type, default, help and choices, checked when the dataclass is made.

They are read from a YAML file and the command line by `parsing.py`. This module imports only the standard library
and the torch-free `data/view_recipe.py` (no torch, no models): `training/train.py` loads both before anything
heavy, so a typo in a flag or a value out of range ends in well under two seconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields

from .data.view_recipe import VIEW_PRESET_CHOICES
from .engine.accumulation_modes import GRADIENT_ACCUMULATION_MODES, default_accumulation_mode

# Options of `DataArguments` that take one value for every training source or one value per source.
PER_SOURCE_FIELDS = ("train_format", "image_column", "text_column", "label_column", "train_probabilities")
# `configuration_contrastive.OBJECTIVE_PRESETS`' names, spelled here so that parsing does not import torch
# (tests/training/test_training_combinations.py checks they agree).
OBJECTIVE_NAMES = ("clip", "unicl", "uniclip", "uniclip+unicl", "siglip", "siglip+unicl")
# The model types this package registers (tests/test_newcomer_errors.py checks they are the registered ones).
MODEL_TYPES = ("unicl", "uniclip", "msclip")
# `adam_implementation` -> `torch.optim.AdamW`'s kernel arguments (`optim.adam_kernel`; "auto" picks one per device).
ADAM_KERNELS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False, "fused": False}}
ADAM_IMPLEMENTATIONS = ("auto", *ADAM_KERNELS)
CALIBRATION_CHOICES = ("auto", "true", "false")
# The input limits' defaults: `image_processing.MAX_IMAGE_PIXELS` / `MAX_ASPECT_RATIO` and `sources.MAX_CAPTION_CHARS`
# (spelled here so that parsing imports neither; tests/training/test_training_cli.py checks they agree).
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
            "uniclip+unicl = both, siglip = CLIP's pairs with SigLIP's sigmoid loss (every pair one binary term; "
            "t = 10, b = -10), siglip+unicl = the sigmoid loss with positives from labels; e.g. model_type msclip "
            "with objective uniclip trains MS-CLIP on UniCLIP's views",
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
    # Settings of the model config that change how it trains, not what it computes at inference: given here they
    # apply to every starting point, a saved model included (`config_overrides`).
    loss_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "anchor rows the loss scores at a time, exact (same value and gradients) in memory O(rows x "
            "global batch): 0 = dense; default: the model config's, automatic unless set: dense while one side of "
            "the loss has at most 2^22 logits (anchors x candidates) on a CPU, 2^24 on a GPU; above, blocks of "
            "2^20 logits (at least 64 rows) on a CPU, 2^24 on a GPU"
        },
    )
    patch_dropout: float | None = field(
        default=None,
        metadata={
            "help": "FLIP's patch dropout: the share of each image's patch tokens left out in training, in [0, 1) "
            "(0.5-0.75 in FLIP; the class token always kept; nothing dropped in evaluation or in the saved model); "
            "default: the model config's (0). Image towers with a class token (CLIP/ViT, MS-CLIP), not Swin"
        },
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
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(
                f"model_type {self.model_type!r} is not a model this trainer builds: choose one of "
                f"{', '.join(MODEL_TYPES)}; to train with CLIP's objective (image-text pairs only) give any of them "
                "--objective clip (e.g. --model_type unicl --objective clip)"
            )
        if bool(self.vision_model_name_or_path) != bool(self.text_model_name_or_path):
            raise ConfigError("give vision_model_name_or_path and text_model_name_or_path together")
        starts = [
            name
            for name in ("model_name_or_path", "init_from_clip", "vision_model_name_or_path")
            if getattr(self, name)
        ]
        if len(starts) > 1:
            raise ConfigError(f"choose one starting point, got {starts}")
        if self.loss_chunk_size is not None and self.loss_chunk_size < 0:
            raise ConfigError(
                f"loss_chunk_size must be 0 (dense) or a positive number of anchor rows, got {self.loss_chunk_size}; "
                "leave it out for the automatic choice"
            )
        if self.patch_dropout is not None and not (math.isfinite(self.patch_dropout) and 0 <= self.patch_dropout < 1):
            raise ConfigError(
                f"patch_dropout must be a share of patches in [0, 1), got {self.patch_dropout}: e.g. 0.5 (FLIP), or 0 "
                "to keep every patch"
            )
        twice = sorted(name for name in self.config_overrides if name in self.model_config)
        if twice:
            raise ConfigError(
                f"{', '.join(twice)} given both as a setting and in model_config: give each once (the setting "
                "applies to every starting point, a saved model included)"
            )
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
        return {**preset, **self.model_config, **self.config_overrides}

    @property
    def config_overrides(self) -> dict:
        """The training-time config fields given as settings (`loss_chunk_size`, `patch_dropout`): set on the model
        whatever it starts from (`from_pretrained` takes them as config attributes)."""
        names = ("loss_chunk_size", "patch_dropout")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

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
    logit_offset_learning_rate_multiplier: float = field(
        default=1.0,
        metadata={
            "help": "the similarity offsets (logit_offset: their own AdamW group) train at this multiple of the rate "
            "they would have otherwise; the log temperatures (logit_scale) train at the towers' rate"
        },
    )
    # MS-CLIP's shared-parameter group (its official TRAIN.LR_SHARE / WD_SHARE): the parameters both modalities'
    # features depend on (`finetuning.ParameterRole.is_shared`); towers-only models have none.
    shared_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "peak learning rate of the parameters both modalities share (MS-CLIP's shared sub-layers; "
            "official LR_SHARE: 1e-4 for B/32, equal to its learning rate, 1.6e-3 for B/16); default learning_rate. "
            "Layer-wise decay scales it as it scales learning_rate"
        },
    )
    shared_weight_decay: float = field(
        default=0.2,
        metadata={
            "help": "AdamW decay of the shared weight matrices (MS-CLIP's official WD_SHARE 0.2; norms and biases "
            "never decay); the other matrices keep weight_decay. Not under LoRA (adapters train as LoRA says)"
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
    gradient_accumulation_mode: str | None = field(
        default=None,
        metadata={
            "help": "full_batch: one loss over the whole accumulated batch, exact (GradCache: embeddings cached, "
            "then each micro-batch re-run); micro_batch: each micro-batch's loss sees only its own negatives (a "
            "different objective from one big batch); default: full_batch when gradient_accumulation_steps > 1, "
            "micro_batch (one forward pass) with one micro-batch per step. The startup line says which runs",
            "choices": list(GRADIENT_ACCUMULATION_MODES),
        },
    )
    patch_dropout_final_steps: int = field(
        default=0,
        metadata={
            "help": "FLIP's unmasked tuning: the last N steps train with patch dropout off (the model's "
            "patch_dropout applies before); 0 = patch dropout to the end"
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
    # LoRA through peft (issue 24; the lora extra): adapters on the towers' linear layers, base weights frozen.
    lora_rank: int = field(
        default=0,
        metadata={
            "help": "train rank-R LoRA adapters (peft) on every linear layer of the towers' blocks, the heads whole, "
            "the rest frozen; output_dir then holds the merged model and the adapter in adapter/ (0 = off)"
        },
    )
    lora_alpha: float | None = field(
        default=None, metadata={"help": "LoRA scaling: the update is (alpha / rank) B A; default 2 * lora_rank"}
    )
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the adapters' input"})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "the layers to adapt (peft target_modules: names matched as suffixes, e.g. q_proj v_proj); "
            "default every linear layer inside the towers' blocks (MS-CLIP's shared ones once)"
        },
    )
    push_adapter: bool = field(
        default=False,
        metadata={
            "help": "with --push_to_hub and --lora_rank: push the adapter (adapter/) instead of the merged model"
        },
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
            "weight_decay, logit_offset_learning_rate_multiplier, shared_learning_rate, shared_weight_decay, "
            "max_grad_norm, max_logit_scale (applied from the resumed step); other settings must stay"
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
        for name in (
            "max_steps",
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "logging_steps",
            "gradient_accumulation_steps",
            "max_consecutive_nonfinite_steps",
        ):
            minimum = 0 if name == "max_steps" else 1
            if getattr(self, name) < minimum:
                raise ConfigError(f"{name} must be at least {minimum}, got {getattr(self, name)}")
        if self.gradient_accumulation_mode is None:
            self.gradient_accumulation_mode = default_accumulation_mode(self.gradient_accumulation_steps)
        if not 0 <= self.patch_dropout_final_steps < max(self.max_steps, 1):
            raise ConfigError(
                f"patch_dropout_final_steps must be 0 or a number of final steps below max_steps ({self.max_steps}), "
                f"got {self.patch_dropout_final_steps}: some steps must train with patch dropout before the unmasked "
                "ones"
            )
        if self.logit_offset_learning_rate_multiplier <= 0:
            raise ConfigError(
                "logit_offset_learning_rate_multiplier must be positive, got "
                f"{self.logit_offset_learning_rate_multiplier} (to keep the offsets fixed, freeze them in the model)"
            )
        if not 0.0 < self.layerwise_lr_decay <= 1.0:
            raise ConfigError(f"layerwise_lr_decay must be in (0, 1], got {self.layerwise_lr_decay}")
        shared_rate = self.shared_learning_rate
        if shared_rate is not None and not (isinstance(shared_rate, (int, float)) and 0 < shared_rate < math.inf):
            raise ConfigError(
                f"shared_learning_rate must be a positive number (the shared parameters' peak learning rate) or "
                f"None (= learning_rate), got {shared_rate!r}"
            )
        if not (isinstance(self.shared_weight_decay, (int, float)) and 0 <= self.shared_weight_decay < math.inf):
            raise ConfigError(
                f"shared_weight_decay must be a number >= 0 (AdamW decay of the shared weight matrices; MS-CLIP's "
                f"0.2), got {self.shared_weight_decay!r}"
            )
        self._check_lora()

    def _check_lora(self) -> None:
        """LoRA settings in range, and no fine-tuning control that LoRA leaves undefined (it already freezes every
        base weight and trains the adapters and heads at learning_rate)."""
        if self.lora_rank < 0 or (self.lora_rank == 0 and (self.lora_target_modules or self.push_adapter)):
            given = "--push_adapter" if self.push_adapter else f"--lora_rank {self.lora_rank}"
            raise ConfigError(f"{given}: LoRA needs --lora_rank R with R >= 1 (e.g. 8)")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.push_adapter and not self.push_to_hub:
            raise ConfigError("--push_adapter needs --push_to_hub (and --hub_model_id ORG/NAME)")
        controls = [
            name
            for name, on in (
                ("--freeze_vision_tower", self.freeze_vision_tower),
                ("--freeze_text_tower", self.freeze_text_tower),
                ("--lock_image_tower", self.lock_image_tower),
                ("--head_learning_rate", self.head_learning_rate is not None),
                ("--layerwise_lr_decay", self.layerwise_lr_decay != 1.0),
                ("--shared_learning_rate", self.shared_learning_rate is not None),
            )
            if on
        ]
        if self.lora_rank and controls:
            raise ConfigError(
                f"--lora_rank {self.lora_rank} with {', '.join(controls)}: LoRA already freezes every base weight "
                "and trains only the adapters and the heads, at learning_rate; drop "
                f"{' and '.join(controls)} to fine-tune with LoRA, or drop --lora_rank to freeze or LiT-train full "
                "matrices (to adapt one tower only, give --lora_target_modules that tower's full layer names)"
            )

    @property
    def needs_parameter_roles(self) -> bool:
        """Whether the run traces which tower, depth and sharing each parameter has (one backward pass per modality
        on one example: `finetuning.trace_parameter_roles`): whenever whole weights train, i.e. not under LoRA.
        Besides the fine-tuning controls, the optimizer's shared-parameter group (`shared_learning_rate`,
        `shared_weight_decay`) needs to know which parameters MS-CLIP shares, and the groups' layout (which a
        checkpoint's optimizer state must match) must not depend on values a resume may change."""
        return not self.lora_rank


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainArguments)


def flat_arguments(*arguments) -> dict:
    """All fields of the given dataclasses in one dict (for `training_args.json`, trackers and the model card)."""
    return {f.name: getattr(args, f.name) for args in arguments for f in fields(args)}


__all__ = [
    "ADAM_IMPLEMENTATIONS",
    "ADAM_KERNELS",
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
    "flat_arguments",
]
