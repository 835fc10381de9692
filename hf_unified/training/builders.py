"""The parts of a training run, each built by a public builder from the settings, and `build_trainer`, which composes
them into a ready `Trainer` (what `training/train.py` runs):

    sources = build_data_sources(data_args, train_args, accelerator)  # data first: a wrong column fails here
    tokenizer = build_tokenizer(model_args, sources, seed, output_dir, accelerator)
    model = build_model(model_args, tokenizer, image_size)
    processor = build_processor(model, tokenizer, model_args, data_args)
    evaluation = build_evaluation(sources.evaluation, processor, ...)    # `trainer.EvaluationData`
    data = build_training_data(sources.raw, model, processor, data_args, train_args, ...)  # `trainer.TrainingData`
    Trainer(model, processor, train_args, data, card_examples=build_card_examples(data_args, ...))

The optimizer and its schedule are `optim.build_optimizer` / `optim.build_scheduler`, which the `Trainer` calls once
the model is sharded (the optimizer must see the sharded parameters). Code with data of its own (the benchmarks'
in-memory studies) composes the same builders: `build_processor`, `fit_text_length`, `build_training_data` over its
own raw rows, an `EvaluationData` of its own, and `Trainer(on_evaluate=...)` for metrics of its own.

A model starts from one of:
its config (`model_type` + `model_config`, fitted to the tokenizer and the image size), a saved hf-unified folder
(`model_name_or_path`), a transformers CLIP checkpoint (`init_from_clip`, through the model class's `from_clip`), or
two pretrained towers (`vision_model_name_or_path` + `text_model_name_or_path`, through
`from_vision_text_pretrained`). A pretrained start brings its own tokenizer and image processor.

The training augmentation (`train_augmentation`) is read from the model's config: a method that trains on views
(UniCLIP) gets `view_preset` views (`augmentation_kwargs` override the preset's fields), made by default on the
training device from uint8 canvases the DataLoader workers decode (`views_on_device`), or per image in the workers;
the other methods a random resized crop.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed
from torchvision.transforms import v2
from transformers import AutoImageProcessor, AutoModel, AutoProcessor, AutoTokenizer

from .. import prompts
from ..files import StagedFolder
from ..image_processing import DualEncoderImageProcessor, DualEncoderImagesKwargs
from ..tokenization import train_caption_tokenizer
from . import data as data_lib
from . import runs
from .arguments import DataArguments, ModelArguments, TrainArguments, flat_arguments
from .data import synthetic_data
from .data.augmentation import MultiViewAugmentation
from .data.batch_augmentation import BatchMultiViewAugmentation
from .data.view_recipe import RECIPE_FIELDS, view_recipe
from .engine.launch import build_accelerator
from .methods import config_class, model_class, num_views, processor_class, trains_with_labels, trains_with_views
from .outputs.model_folder import CardExamples
from .trainer import EvaluationData, Trainer, TrainingData

logger = logging.getLogger(__name__)

TEMPLATE_SETS = {
    "unicl": prompts.UNICL_TEMPLATES,
    "openai": prompts.OPENAI_IMAGENET_TEMPLATES,
    "shapes": synthetic_data.SHAPES_TEMPLATES,
    "name": ("{}",),
}


def load_templates(spec: str) -> tuple[str, ...]:
    """A named template set (`TEMPLATE_SETS`) or a JSON file holding a list of `"...{}..."` strings."""
    if spec in TEMPLATE_SETS:
        return tuple(TEMPLATE_SETS[spec])
    if os.path.isfile(spec):
        templates = json.loads(Path(spec).read_text())
        if templates and all(isinstance(t, str) and "{}" in t for t in templates):
            return tuple(templates)
    raise ValueError(
        f"templates must be one of {sorted(TEMPLATE_SETS)} or a JSON list of '{{}}' strings, got {spec!r}"
    )


def _none_if_empty(value):
    return None if isinstance(value, str) and value.lower() in ("", "none", "null") else value


def train_sources(args: DataArguments) -> list[data_lib.SourceSpec]:
    """One `SourceSpec` per `train_data` entry (per-source lists of one value apply to every source; their lengths
    were checked when the arguments were parsed)."""
    count = len(args.train_data)

    def per_source(values, default=None) -> list:
        values = list(values) if values else [default]
        return [_none_if_empty(v) for v in (values * count if len(values) == 1 else values)]

    formats, images, texts = per_source(args.train_format), per_source(args.image_column), per_source(args.text_column)
    labels, weights = per_source(args.label_column), per_source(args.train_probabilities, 1.0)
    return [
        data_lib.SourceSpec(
            path,
            images[i],
            texts[i],
            labels[i],
            float(weights[i]),
            formats[i],
            args.train_split,
            max_caption_chars=args.max_caption_chars,
        )
        for i, path in enumerate(args.train_data)
    ]


def eval_source(args: DataArguments) -> data_lib.SourceSpec | None:
    if not args.eval_data:
        return None
    return data_lib.SourceSpec(
        args.eval_data,
        args.eval_image_column,
        _none_if_empty(args.eval_text_column),
        _none_if_empty(args.eval_label_column),
        1.0,
        args.eval_format,
        args.eval_split,
        max_caption_chars=args.max_caption_chars,
    )


def ensure_embedded_data(args: DataArguments, accelerator) -> None:
    """Generates the shapes data when a source points into `embedded_data_dir` and it is not there whole yet
    (written aside and published at once: `synthetic_data.generate`)."""
    paths = list(args.train_data) + [args.eval_data or "", args.class_names_file or ""]
    root = os.path.normpath(args.embedded_data_dir)
    if any(os.path.normpath(p).startswith(root) for p in paths if p):
        with accelerator.main_process_first():
            if accelerator.is_main_process and not synthetic_data.is_complete(root):
                accelerator.print(f"generating the embedded shapes dataset in {root} ...")
                synthetic_data.ensure_dataset(root)


@dataclass
class DataSources:
    """The run's data before a model exists (`build_data_sources`).

    Args:
        train: one `SourceSpec` per `train_data` entry.
        raw: this rank's raw training rows, one stream per lane (`data.build_lanes`).
        evaluation: the evaluation source, opened (a wrong column failed already), or None (no `eval_data`, or
            `do_eval` off).
        class_names: per class its names, or None.
        templates: the prompts of labelled training data; `eval_templates` those of zero-shot evaluation.
        label_vocabulary: maps captions naming one class to its label (`map_captions_to_labels`), or None.
    """

    train: list[data_lib.SourceSpec]
    raw: list
    evaluation: data_lib.SourceSpec | None
    class_names: list[list[str]] | None
    templates: tuple[str, ...]
    eval_templates: tuple[str, ...]
    label_vocabulary: data_lib.LabelVocabulary | None = None


def build_data_sources(data_args: DataArguments, train_args: TrainArguments, accelerator) -> DataSources:
    """Opens the training and evaluation sources and reads the class names and templates: a wrong column, path or
    file fails here, before anything is built or trained."""
    specs = train_sources(data_args)
    raw = data_lib.build_lanes(
        specs,
        train_args.seed,
        accelerator.process_index,
        accelerator.num_processes,
        data_args.shuffle_buffer_size,
        shuffle_input_shards=data_args.shuffle_input_shards,
        lanes=data_args.stream_lanes,
    )
    readers = max(1, data_args.num_workers)  # without workers the main process reads every lane
    if data_args.stream_lanes > 1 and data_args.stream_lanes % readers:
        logger.warning(
            f"stream_lanes {data_args.stream_lanes} is not a multiple of num_workers {data_args.num_workers}: each "
            f"worker reads 1/{math.gcd(data_args.stream_lanes, readers)} of the raw stream"
        )
    evaluation = eval_source(data_args) if train_args.do_eval else None
    if evaluation is not None:
        data_lib.open_source(evaluation)
    class_names = data_lib.load_class_names(data_args.class_names_file)
    templates = load_templates(data_args.templates)
    eval_templates = load_templates(data_args.eval_templates or data_args.templates)
    if any(s.text_column is None for s in specs) and not class_names:
        raise ValueError("a source without text_column needs class_names_file to build its prompts")
    vocabulary = None
    if data_args.map_captions_to_labels:
        names = data_lib.load_class_names(data_args.label_vocabulary_file) or class_names
        if not names:
            raise ValueError("map_captions_to_labels needs label_vocabulary_file or class_names_file")
        vocabulary = data_lib.LabelVocabulary(names)
    return DataSources(specs, raw, evaluation, class_names, templates, eval_templates, vocabulary)


def build_card_examples(data_args: DataArguments, class_names: list[list[str]] | None) -> CardExamples:
    """The evaluation split the model card shows examples of (`eval_data`, whether or not the run evaluates)."""
    return CardExamples(
        data_args.eval_data or None,
        class_names,
        image_column=data_args.eval_image_column or "jpg",
        label_column=_none_if_empty(data_args.eval_label_column),
        format=data_args.eval_format or None,
        split=data_args.eval_split or "validation",
        **data_args.image_limits,
    )


def pretrained_text_source(model_args: ModelArguments) -> str | None:
    """Where a pretrained start keeps its tokenizer."""
    return (
        model_args.tokenizer_name_or_path
        or model_args.model_name_or_path
        or model_args.init_from_clip
        or model_args.text_model_name_or_path
    )


def _saved_tokenizer(folder: Path):
    """The tokenizer an earlier start of this run trained into `folder`, or None when there is none or it is not
    whole (a folder cut by a kill before its writes were atomic: without its config it has no padding token)."""
    if not folder.is_dir():
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as error:
        logger.warning(f"{folder} cannot be loaded ({' '.join(str(error).split())[:200]}): training it again")
        return None
    if tokenizer.pad_token is None or tokenizer.eos_token is None:
        logger.warning(f"{folder} is incomplete (no padding or end-of-text token): training it again")
        return None
    return tokenizer


def build_tokenizer(model_args: ModelArguments, sources: DataSources, seed: int, output_dir: str | Path, accelerator):
    """The pretrained start's tokenizer, or a caption BPE trained on the training texts and the class prompts of
    `sources` (once, in `output_dir/tokenizer`, written atomically, on the whole unsplit stream so that every world
    size trains the same one; a damaged folder is trained again)."""
    source = pretrained_text_source(model_args)
    if source:
        return AutoTokenizer.from_pretrained(source)
    folder = Path(output_dir) / "tokenizer"
    with accelerator.main_process_first():
        if accelerator.is_main_process and _saved_tokenizer(folder) is None:
            texts = list(data_lib.iter_texts(sources.train, model_args.tokenizer_train_samples, seed))
            if sources.class_names:
                templates = sources.templates + sources.eval_templates
                texts += [t.format(name) for names in sources.class_names for name in names for t in templates]
            tokenizer = train_caption_tokenizer(
                texts, vocab_size=model_args.tokenizer_vocab_size, model_max_length=model_args.max_text_length
            )
            with StagedFolder(folder) as staging:  # whole or absent, never half-written
                tokenizer.save_pretrained(staging)
    return AutoTokenizer.from_pretrained(folder)


def _pretrained_constructor(model_type: str, name: str):
    cls = model_class(model_type)
    constructor = getattr(cls, name, None)
    if constructor is None:
        raise ValueError(f"{cls.__name__} (model_type {model_type!r}) has no {name}() in this checkout")
    return constructor


def check_starting_point(model_args: ModelArguments) -> None:
    """Fails early when the model class lacks the constructor a pretrained start needs."""
    if model_args.init_from_clip:
        _pretrained_constructor(model_args.model_type, "from_clip")
    if model_args.vision_model_name_or_path:
        _pretrained_constructor(model_args.model_type, "from_vision_text_pretrained")


def build_model(model_args: ModelArguments, tokenizer, image_size: int) -> torch.nn.Module:
    """The model from the starting point the arguments name (see the module docstring)."""
    if model_args.model_name_or_path:  # its objective stays; the training-time settings apply
        model = AutoModel.from_pretrained(model_args.model_name_or_path, **model_args.config_overrides)
        model.config.check_values()
        return model
    if model_args.init_from_clip:
        return _pretrained_constructor(model_args.model_type, "from_clip")(
            model_args.init_from_clip, **model_args.config_kwargs
        )
    if model_args.vision_model_name_or_path:
        return _pretrained_constructor(model_args.model_type, "from_vision_text_pretrained")(
            model_args.vision_model_name_or_path, model_args.text_model_name_or_path, **model_args.config_kwargs
        )
    kwargs = json.loads(json.dumps(model_args.config_kwargs))  # a deep copy
    # Fit the text tower to the tokenizer and the image tower to the image size, unless the YAML says otherwise.
    # Dual encoders hold them in text_config / vision_config; MS-CLIP's single stack holds them at the top level.
    text = kwargs.get("text_config") if "text_config" in kwargs else kwargs
    vision = kwargs.get("vision_config") if "vision_config" in kwargs else kwargs
    if isinstance(text, dict):
        text.setdefault("vocab_size", len(tokenizer))
        text.setdefault("max_position_embeddings", model_args.max_text_length)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(tokenizer, name, None) is not None:
                text.setdefault(name, getattr(tokenizer, name))
    if isinstance(vision, dict):
        vision.setdefault("image_size", image_size)
    return AutoModel.from_config(config_class(model_args.model_type)(**kwargs))


def _only_settings_over(image_processor, cls: type) -> bool:
    """Whether `image_processor` preprocesses as `cls` does given the same settings: its class derives from a class
    of `cls`'s lineage (`CLIPImageProcessor`, or the generic backend they share) and adds only default values to it,
    no method of its own (as CLIP's, ViT's, BiT's and DINOv2's image processors do)."""
    for klass in type(image_processor).__mro__:
        if klass in cls.__mro__:
            return klass is not object
        if any(
            inspect.isfunction(value) or isinstance(value, (classmethod, staticmethod, property))
            for value in vars(klass).values()
        ):
            return False
    return False


def bounded_image_processor(image_processor, max_image_pixels: int, max_aspect_ratio: float):
    """The image processor a model is trained and saved with: a `DualEncoderImageProcessor` (every input held
    against `max_image_pixels` and `max_aspect_ratio` before it is resized, on the zero-shot pipeline route too) with
    `image_processor`'s settings.

    A pretrained start brings transformers' own image processor (a CLIP checkpoint's, a vision tower's ViT one),
    which resizes whatever it is given: where its preprocessing is the bounded class's with other settings
    (`_only_settings_over`), it is replaced by the bounded class holding every one of its settings (the pixels are
    the same). A processor with steps of its own (a class that overrides a method, or another backend) is kept, with
    a warning: the bounded class would change what the tower was trained on. The run's data are bounded either way
    (`data.DecodeConfig`); only a bare pipeline on the saved folder is then not.
    """
    if not _only_settings_over(image_processor, DualEncoderImageProcessor):
        logger.warning(
            f"the starting model's image processor ({type(image_processor).__name__}) has preprocessing steps of its "
            "own: it is kept, and the saved model's pipeline route does not bound its input images (max_image_pixels, "
            "max_aspect_ratio); the training and evaluation data are bounded"
        )
        return image_processor
    keys = [
        key for key in DualEncoderImagesKwargs.__annotations__ if key not in ("max_image_pixels", "max_aspect_ratio")
    ]
    settings = {key: getattr(image_processor, key) for key in keys if hasattr(image_processor, key)}
    return DualEncoderImageProcessor(**settings, max_image_pixels=max_image_pixels, max_aspect_ratio=max_aspect_ratio)


def build_processor(model, tokenizer, model_args: ModelArguments, data_args: DataArguments):
    """A saved model keeps its processor; a pretrained start uses its checkpoint's image processor; a model built
    here gets its method's evaluation preprocessing at `image_size` (resize by `resize_ratio`, centre crop). The image
    processor is bounded by the run's `max_image_pixels` and `max_aspect_ratio` (`bounded_image_processor`), so that
    the evaluation, and the pipeline on the saved model, refuse what the data streams skip."""
    if model_args.model_name_or_path:
        processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
        processor.image_processor = bounded_image_processor(processor.image_processor, **data_args.image_limits)
        return processor
    cls = processor_class(model.config)
    image_source = model_args.init_from_clip or model_args.vision_model_name_or_path
    if image_source:
        image_processor = AutoImageProcessor.from_pretrained(image_source)
    else:
        size = data_args.image_size
        image_processor = cls.default_image_processor(size)
        image_processor.size = {"shortest_edge": max(size, round(size * data_args.resize_ratio))}
        image_processor.crop_size = {"height": size, "width": size}
    image_processor = bounded_image_processor(image_processor, **data_args.image_limits)
    return cls(image_processor=image_processor, tokenizer=tokenizer)


def processor_image_size(image_processor) -> int:
    """The side of the images the processor prepares (its crop, else its resize)."""
    size = (
        image_processor.crop_size if getattr(image_processor, "do_center_crop", False) else None
    ) or image_processor.size
    return int(size.get("height") or size.get("shortest_edge"))


class ProcessorTransform:
    """Evaluation images go through the saved processor's own preprocessing (what inference will use): the image
    transform `{"pixel_values": [C, H, W]}` (`data.DecodeConfig`)."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, image) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]}


@dataclass
class TrainAugmentation:
    """The training augmentation of a run, in its two places.

    Args:
        image_transform: what the DataLoader workers run on each decoded image: its batch fields
            (`data.DecodeConfig`).
        views: for views made on the training device, what the step runs on each batch of canvases
            (`TrainingData.views`); None when the workers make the whole input.
    """

    image_transform: Callable
    views: BatchMultiViewAugmentation | None = None


def check_view_arguments(data_args: DataArguments) -> None:
    """Fails at once on a view recipe that cannot be built (an unknown or out-of-range `augmentation_kwargs`
    field), before anything is built or trained."""
    overrides = data_args.augmentation_kwargs
    unknown = sorted(set(overrides) - set(RECIPE_FIELDS))
    if unknown:
        raise ValueError(
            f"augmentation_kwargs: unknown view recipe field(s) {unknown}; the fields are {list(RECIPE_FIELDS)} (the "
            "view size is image_size, the number of views the model's num_views, the preset view_preset)"
        )
    try:
        view_recipe(data_args.view_preset, data_args.image_size, **overrides)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"augmentation_kwargs {overrides} on view_preset {data_args.view_preset!r}: {error}"
        ) from None


def train_augmentation(
    config, data_args: DataArguments, image_processor, image_size: int, torch_compile: bool = False
) -> TrainAugmentation:
    """The training augmentation (see the module docstring); normalised with the processor's mean and std.

    Views: `view_preset` at `image_size` with `augmentation_kwargs` on top, flipped only with `horizontal_flip`
    (captions may say left or right); made by `BatchMultiViewAugmentation` on the device from canvases of
    `view_canvas_size` (`views_on_device`; their colour jitter compiled with `torch_compile`, as the model is), else
    by `MultiViewAugmentation` in the workers. Other methods: a random resized crop of area `crop_scale_min`-1 (1:
    resize and centre crop) and the optional flip.
    """
    mean, std = list(image_processor.image_mean), list(image_processor.image_std)
    if trains_with_views(config):
        recipe = {"flip_p": 0.5 if data_args.horizontal_flip else 0.0, **data_args.augmentation_kwargs}
        kwargs = dict(num_views=num_views(config), size=image_size, preset=data_args.view_preset, **recipe)
        kwargs.update(image_mean=mean, image_std=std)
        if data_args.views_on_device:
            views = BatchMultiViewAugmentation(
                canvas_size=data_args.view_canvas_size, torch_compile=torch_compile, **kwargs
            )
            return TrainAugmentation(views.canvas, views)
        return TrainAugmentation(data_lib.ImageFields(MultiViewAugmentation(**kwargs), data_lib.VIEW_FIELDS))
    if data_args.crop_scale_min >= 1.0:
        steps = [v2.ToImage(), v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    else:
        steps = [v2.ToImage(), v2.RandomResizedCrop(image_size, scale=(data_args.crop_scale_min, 1.0), antialias=True)]
    if data_args.horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    transform = v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    return TrainAugmentation(data_lib.ImageFields(transform))


def take_samples(loader, limit: int):
    """Stops an evaluation loader after about `limit` examples on this rank."""
    seen = 0
    for batch in loader:
        if seen >= limit:
            break
        seen += len(batch.get("input_ids", ())) + batch["num_skipped"]
        yield batch


def fit_text_length(model, tokenizer, max_text_length: int) -> int:
    """Makes the tokenizer (saved with the model) truncate at the text tower's positions, and returns the training
    truncation: `max_text_length`, or fewer tokens if the tower has fewer positions."""
    positions = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None)
    if positions is None:
        return max_text_length
    tokenizer.model_max_length = positions
    return min(max_text_length, positions)


def build_evaluation(
    spec: data_lib.SourceSpec,
    processor,
    class_names: list[list[str]] | None,
    templates: tuple[str, ...],
    text_length: int,
    data_args: DataArguments,
    train_args: TrainArguments,
    accelerator,
) -> EvaluationData:
    """Evaluation on `spec`: this rank's share of it, each pass decoded afresh through the processor's own
    preprocessing (`ProcessorTransform`: what inference uses), capped at `eval_max_samples`; zero-shot over
    `class_names` with `templates`, retrieval when the source has captions."""

    def loader():
        batches = data_lib.eval_dataloader(
            spec,
            data_lib.DecodeConfig(
                ProcessorTransform(processor.image_processor), class_names, templates, **data_args.image_limits
            ),
            processor.tokenizer,
            text_length,
            train_args.per_device_eval_batch_size,
            accelerator.process_index,
            accelerator.num_processes,
            data_args.num_workers,
        )
        return take_samples(batches, data_args.eval_max_samples) if data_args.eval_max_samples else batches

    return EvaluationData(loader, class_names, templates, retrieval=spec.text_column is not None)


def build_training_data(
    raw,
    model: torch.nn.Module,
    processor,
    data_args: DataArguments,
    train_args: TrainArguments,
    *,
    tokenizer,
    text_length: int,
    class_names: list[list[str]] | None = None,
    templates: tuple[str, ...] = ("{}.",),
    label_vocabulary: data_lib.LabelVocabulary | None = None,
    rank: int = 0,
    evaluation: EvaluationData | None = None,
) -> TrainingData:
    """The training side of a run over this rank's raw rows `raw` (a `datasets.IterableDataset` of
    `sources.RAW_FEATURES` rows, or a list of lanes): decoded with the method's augmentation (`train_augmentation`,
    at the processor's image size), prompts built from `class_names` and `templates`, tokenised to `text_length`,
    cut into `per_device_train_batch_size` batches (`data.TrainStream`, exactly resumable)."""
    image_size = processor_image_size(processor.image_processor)
    augmentation = train_augmentation(
        model.config, data_args, processor.image_processor, image_size, torch_compile=train_args.torch_compile
    )
    decode = data_lib.DecodeConfig(
        image_transform=augmentation.image_transform,
        class_names=class_names,
        templates=templates,
        label_vocabulary=label_vocabulary,
        with_labels=trains_with_labels(model.config),
        **data_args.image_limits,
    )
    stream = data_lib.TrainStream(
        raw, decode, tokenizer, text_length, train_args.per_device_train_batch_size, train_args.seed, rank
    )
    return TrainingData(
        stream,
        num_workers=data_args.num_workers,
        evaluation=evaluation,
        max_skipped_fraction=data_args.max_skipped_fraction,
        skipped_check_after=data_args.skipped_check_after,
        views=augmentation.views,
    )


def build_trainer(model_args: ModelArguments, data_args: DataArguments, train_args: TrainArguments) -> Trainer:
    """Everything `training/train.py` runs, from its three argument dataclasses (the module docstring's
    composition). `output_dir` is claimed for the run first (`runs.claim_output_dir`: checked and locked before
    anything is written there)."""
    check_starting_point(model_args)
    check_view_arguments(data_args)
    accelerator = build_accelerator(train_args)
    run_folder = runs.claim_output_dir(train_args, accelerator)
    try:
        set_seed(train_args.seed)
        ensure_embedded_data(data_args, accelerator)
        sources = build_data_sources(data_args, train_args, accelerator)
        tokenizer = build_tokenizer(model_args, sources, train_args.seed, train_args.output_dir, accelerator)
        model = build_model(model_args, tokenizer, data_args.image_size)
        model_args.model_type = model.config.model_type  # a loaded model decides the method
        text_length = fit_text_length(model, tokenizer, model_args.max_text_length)
        processor = build_processor(model, tokenizer, model_args, data_args)
        if processor_image_size(processor.image_processor) != data_args.image_size:
            accelerator.print(
                f"training at {processor_image_size(processor.image_processor)} pixels, the size of the starting "
                "model's processor"
            )
        evaluation = None
        if sources.evaluation is not None:
            evaluation = build_evaluation(
                sources.evaluation,
                processor,
                sources.class_names,
                sources.eval_templates,
                text_length,
                data_args,
                train_args,
                accelerator,
            )
        data = build_training_data(
            sources.raw,
            model,
            processor,
            data_args,
            train_args,
            tokenizer=tokenizer,
            text_length=text_length,
            class_names=sources.class_names,
            templates=sources.templates,
            label_vocabulary=sources.label_vocabulary,
            rank=accelerator.process_index,
            evaluation=evaluation,
        )
        return Trainer(
            model,
            processor,
            train_args,
            data,
            accelerator=accelerator,
            run_arguments=flat_arguments(model_args, data_args, train_args),
            base_model=model_args.pretrained_start,
            pretrained=model_args.starts_pretrained,
            run_folder=run_folder,
            card_examples=build_card_examples(data_args, sources.class_names),
        )
    except BaseException:
        run_folder.release()  # the trainer that would have released it does not exist
        raise


__all__ = [
    "DataSources",
    "ProcessorTransform",
    "TEMPLATE_SETS",
    "TrainAugmentation",
    "build_card_examples",
    "build_data_sources",
    "build_evaluation",
    "build_model",
    "build_processor",
    "build_tokenizer",
    "build_trainer",
    "build_training_data",
    "bounded_image_processor",
    "check_starting_point",
    "check_view_arguments",
    "ensure_embedded_data",
    "fit_text_length",
    "eval_source",
    "load_templates",
    "processor_image_size",
    "take_samples",
    "train_augmentation",
    "train_sources",
]
