"""The training studies' helpers (`replication.py`, `comparison.py`, `finetune_from_clip.py`): the embedded data sets
held in memory, models built from a method's name, and training runs through the shipped `Trainer` that evaluate over
the run.

A study run is one `Trainer` run, composed of the builders `training/train.py` runs (`hf_unified.training.builders`):
the data pipeline (`build_training_data`: decoding, prompts from class names, the method's augmentation, the
resumable stream), AdamW groups, warmup + cosine schedule, temperature clamp, evaluation
(`hf_unified.training.outputs.evaluation`). Only the data source differs: an in-memory `datasets.Dataset` instead of
shards on disk. Each evaluation also computes the study's own metrics (`StudyEvaluation`, the trainer's `on_evaluate`
hook), with the library's functions (`evaluation.embed_dataset`, `prompts.build_zero_shot_classifier`,
`evaluation.zero_shot_accuracy`) and a scikit-learn linear probe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from common import msclip_s_layout

# ----------------------------------------------------------------------------------------------------------------
# Study data: the embedded data sets in memory

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_CAPTIONS = ("a handwritten {}.", "the digit {}, written by hand.", "a scanned {}.", "a {} drawn with a pen.")
# Prompts of the image-label training items ...
DIGIT_TEMPLATES = ("a handwritten {}.", "the digit {}, written by hand.", "a {}.")
# ... and zero-shot prompts that no training text contains: known words, phrasings never seen.
DIGIT_UNSEEN_TEMPLATES = (
    "the digit {}.",
    "a {} written by hand.",
    "a scanned handwritten {}.",
    "{}, drawn with a pen.",
)
SHAPES_UNSEEN_TEMPLATES = (
    "there is a {}.",
    "a {} at the center.",
    "{}, top right.",
    "a large {} in the bottom left.",
    "there is a small {} at the top left.",
)


@dataclasses.dataclass
class Split:
    """Images (RGB PIL), one caption and one class label each."""

    images: list
    captions: list[str]
    labels: list[int]


@dataclasses.dataclass
class ZeroShotTask:
    """A zero-shot classification of some evaluation images besides the trainer's own.

    Args:
        class_names: the task's classes (prompts are built from them with `templates`).
        templates: format strings with one `{}`.
        labels: per evaluation image its class in `class_names`, or -1 when the image is not part of the task.
    """

    class_names: list[str]
    templates: tuple[str, ...]
    labels: list[int]


# The evaluation splits of a study data set: `validation` for every choice a study makes, `test` for the tables.
EVALUATION_SPLITS = ("validation", "test")


@dataclasses.dataclass
class StudyData:
    """One embedded data set as a study uses it: the training split and the one evaluation split a study reads
    (`split`, one of `EVALUATION_SPLITS`, held as `eval`).

    Args:
        split: which evaluation split `eval` is: `validation` (disjoint from training and test, where defaults and
            study choices are made) or `test` (what the tables report).
        train_templates: prompts of the image-label training items (UniCL's data).
        eval_templates: the trainer's zero-shot prompts, none of which occurs in a training text.
        held_out: zero-shot over classes no training image belongs to, where the data allows it.
    """

    name: str
    split: str
    train: Split
    eval: Split
    class_names: list[str]
    train_templates: tuple[str, ...]
    eval_templates: tuple[str, ...]
    held_out: ZeroShotTask | None = None
    _rows: dict = dataclasses.field(init=False, repr=False, default_factory=dict)

    def rows(self, split: str, label_items: bool):
        """`as_dataset(self.<split>, label_items)`, built once (PNG encoding is the slow part)."""
        if (split, label_items) not in self._rows:
            self._rows[split, label_items] = as_dataset(getattr(self, split), label_items)
        return self._rows[split, label_items]

    def tasks(self) -> dict[str, ZeroShotTask]:
        """The extra zero-shot tasks: the training prompts (how much of the trainer's score is phrasing), and the
        held-out classes."""
        tasks = {"zero_shot_seen_prompts": ZeroShotTask(self.class_names, self.train_templates, self.eval.labels)}
        if self.held_out is not None:
            tasks["held_out_classes"] = self.held_out
        return tasks


def shapes_data(num_train: int, num_eval: int, image_size: int, seed: int = 0, split: str = "test") -> StudyData:
    """The procedural shapes (`hf_unified.training.data.synthetic_data`; 6 shape classes). Six (shape, colour) pairs
    never occur in training; each evaluation split holds them for half its images, and `held_out` asks which of the 36
    (colour, shape) classes an image of those pairs shows: classes never seen in training, named with known words.

    The splits are drawn from their own random streams (`"{seed}-train"`, `"{seed}-eval"` for test,
    `"{seed}-validation"`), so the validation split (`num_eval` images, drawn like the test split) is new images and
    the training and test splits are those of every earlier version of this study.
    """
    from hf_unified.training.data import synthetic_data

    _check_split(split)
    stream = {"test": "eval", "validation": "validation"}[split]
    splits, attributes = {}, {}
    for name, count, rng_name in (("train", num_train, "train"), ("eval", num_eval, stream)):
        rng = random.Random(f"{seed}-{rng_name}")
        images, captions, labels, drawn = [], [], [], []
        for _ in range(count):
            sample = synthetic_data.sample_attributes(rng, name)
            images.append(
                synthetic_data.render(
                    sample["shape"], sample["colour"], sample["size"], sample["position"], image_size, rng
                )
            )
            captions.append(synthetic_data.caption(sample, rng))
            labels.append(synthetic_data.SHAPES.index(sample["shape"]))
            drawn.append(sample)
        splits[name], attributes[name] = Split(images, captions, labels), drawn
    pairs = [(colour, shape) for shape in synthetic_data.SHAPES for colour in synthetic_data.COLOURS]
    held_out = ZeroShotTask(
        class_names=[f"{colour} {shape}" for colour, shape in pairs],
        templates=SHAPES_UNSEEN_TEMPLATES,
        labels=[
            pairs.index((a["colour"], a["shape"])) if a["held_out_combination"] else -1 for a in attributes["eval"]
        ],
    )
    return StudyData(
        "shapes",
        split,
        splits["train"],
        splits["eval"],
        list(synthetic_data.SHAPES),
        tuple(synthetic_data.SHAPES_TEMPLATES),
        SHAPES_UNSEEN_TEMPLATES,
        held_out,
    )


def _check_split(split: str) -> None:
    if split not in EVALUATION_SPLITS:
        raise ValueError(f"split must be one of {EVALUATION_SPLITS}, got {split!r}")


def digits_data(
    num_eval: int,
    image_size: int,
    seed: int = 0,
    num_train: int | None = None,
    num_validation: int = 0,
    split: str = "test",
) -> StudyData:
    """scikit-learn's 1,797 handwritten digits (real 8x8 scans, 10 classes) upscaled to `image_size`, captioned
    "a handwritten {digit}." and the like. One seeded permutation splits them: the first `num_eval` are the test
    split, the next `num_validation` the validation split, the others (or `num_train` of them) training. No held-out
    classes: a digit's name is one word, which a class kept out of training would leave untrained."""
    import numpy as np
    import torch
    from PIL import Image
    from sklearn.datasets import load_digits

    _check_split(split)
    digits = load_digits()
    if num_eval + num_validation >= len(digits.target):
        raise ValueError(
            f"num_eval + num_validation = {num_eval + num_validation} leaves no training digit of {len(digits.target)}"
        )
    scans = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    images = [Image.fromarray(scan).convert("RGB").resize((image_size, image_size), Image.BILINEAR) for scan in scans]
    labels = [int(y) for y in digits.target]
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist()
    rng = random.Random(seed)
    captions = [rng.choice(DIGIT_CAPTIONS).format(DIGIT_NAMES[y]) for y in labels]
    test, validation = order[:num_eval], order[num_eval : num_eval + num_validation]
    if split == "validation" and not validation:
        raise ValueError("split='validation' needs num_validation > 0")
    splits = {
        name: Split([images[i] for i in index], [captions[i] for i in index], [labels[i] for i in index])
        for name, index in (
            ("eval", test if split == "test" else validation),
            ("train", order[num_eval + num_validation :][:num_train]),
        )
    }
    return StudyData(
        "digits",
        split,
        splits["train"],
        splits["eval"],
        list(DIGIT_NAMES),
        DIGIT_TEMPLATES,
        DIGIT_UNSEEN_TEMPLATES,
    )


def as_dataset(split: Split, label_items: bool):
    """A `datasets.Dataset` of the pipeline's raw rows (`sources.RAW_FEATURES`: the image as PNG bytes, `text`,
    `label`, where it came from). With `label_items`, the even rows are image-label data (no text: the pipeline
    builds a prompt from the class name) and the odd rows image-text data (no label): UniCL's training mix."""
    from datasets import Dataset

    from hf_unified.training.data.sources import RAW_FEATURES

    rows = {name: [] for name in RAW_FEATURES}
    for index, (image, caption, label) in enumerate(zip(split.images, split.captions, split.labels)):
        png = io.BytesIO()
        image.save(png, format="PNG")
        labelled = label_items and index % 2 == 0
        rows["image"].append({"bytes": png.getvalue(), "path": None})
        rows["text"].append(None if labelled else caption)
        rows["label"].append(label if labelled or not label_items else None)
        rows["key"].append(str(index))
        rows["shard"].append("memory")
        rows["damage"].append(None)
        rows["detail"].append(None)
    return Dataset.from_dict(rows, features=RAW_FEATURES)


def caption_tokenizer(data: StudyData, max_length: int, vocab_size: int = 400):
    """The caption BPE `training/train.py` trains (`tokenization.train_caption_tokenizer`) on the training texts and
    the class prompts of every template set."""
    from hf_unified.tokenization import train_caption_tokenizer

    templates = data.train_templates + data.eval_templates + (data.held_out.templates if data.held_out else ())
    names = data.class_names + (data.held_out.class_names if data.held_out else [])
    corpus = data.train.captions + [t.format(name) for name in names for t in templates]
    return train_caption_tokenizer(corpus, vocab_size=vocab_size, model_max_length=max_length)


# ----------------------------------------------------------------------------------------------------------------
# Models


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The widths every method of a study shares (both towers, or MS-CLIP's one stack)."""

    width: int = 64
    layers: int = 2
    patch_size: int = 8
    projection_dim: int = 64
    image_size: int = 32
    text_len: int = 24

    @property
    def heads(self) -> int:
        """Attention heads of 32 channels (one for towers narrower than 64)."""
        return max(1, self.width // 32)


# How a study's architecture names map onto the package: two CLIP towers (`UniCLConfig`, or `UniCLIPConfig` for an
# objective with views) or an `MSCLIPConfig` preset of the sharing spectrum.
ARCHITECTURES = ("towers", "ms-clip-s", "msclip-shared", "msclip-separate")


def tower_model_type(objective: str) -> str:
    """The model type whose config names the objective's method: `uniclip` for an objective with views, else
    `unicl` (either config takes any objective)."""
    from hf_unified.configuration_contrastive import OBJECTIVE_PRESETS

    return "uniclip" if OBJECTIVE_PRESETS[objective]["num_views"] > 1 else "unicl"


def build_config(architecture: str, objective: str, tokenizer, sizes: Sizes, **overrides):
    """The config of `architecture` (`ARCHITECTURES`) with the named objective
    (`configuration_contrastive.OBJECTIVE_PRESETS`) at `sizes`; `overrides` are any config fields (they win).

    The temperature starts at CLIP's ln(1/0.07) (UniCL's and MS-CLIP's releases use 1.0) unless the objective's
    preset names its own start: SigLIP's t = 10, UniCLIP's per-domain-pair scales.
    """
    from hf_unified import MSCLIPConfig
    from hf_unified.configuration_contrastive import OBJECTIVE_PRESETS
    from hf_unified.training.methods import config_class

    if objective not in OBJECTIVE_PRESETS:
        raise ValueError(f"unknown objective {objective!r}; choose one of {sorted(OBJECTIVE_PRESETS)}")
    special = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    fields = {"logit_scale_init_value": math.log(1 / 0.07), **OBJECTIVE_PRESETS[objective], **overrides}
    if architecture.startswith("ms"):
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURES}")
        preset = architecture.removeprefix("msclip-")
        if preset == "ms-clip-s":
            fields = {**msclip_s_layout(sizes.width, sizes.layers, sizes.image_size, sizes.patch_size), **fields}
        return MSCLIPConfig.from_preset(
            preset,
            vocab_size=len(tokenizer),
            max_position_embeddings=sizes.text_len,
            hidden_size=sizes.width,
            intermediate_size=4 * sizes.width,
            num_hidden_layers=sizes.layers,
            vision_num_attention_heads=sizes.heads,
            text_num_attention_heads=sizes.heads,
            image_size=sizes.image_size,
            patch_size=sizes.patch_size,
            projection_dim=sizes.projection_dim,
            layer_norm_eps=1e-5,
            **special,
            **fields,
        )
    if architecture != "towers":
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {ARCHITECTURES}")
    tower = dict(
        hidden_size=sizes.width,
        intermediate_size=4 * sizes.width,
        num_hidden_layers=sizes.layers,
        num_attention_heads=sizes.heads,
        hidden_act="quick_gelu",
    )
    text = dict(
        model_type="clip_text_model", vocab_size=len(tokenizer), max_position_embeddings=sizes.text_len, **tower
    )
    vision = dict(model_type="clip_vision_model", image_size=sizes.image_size, patch_size=sizes.patch_size, **tower)
    return config_class(tower_model_type(objective))(
        vision_config=vision, text_config={**text, **special}, projection_dim=sizes.projection_dim, **fields
    )


def build_model(architecture: str, objective: str, tokenizer, sizes: Sizes, **overrides):
    """A freshly initialised model of `build_config(...)` (seed torch first), with SDPA attention."""
    from transformers import AutoModel

    model = AutoModel.from_config(build_config(architecture, objective, tokenizer, sizes, **overrides))
    model.set_attn_implementation("sdpa")
    return model


def parameter_count(model) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def matched_width(architecture: str, target: int, tokenizer, sizes: Sizes) -> int:
    """The width (a multiple of 4 that its heads divide) at which `architecture` has the parameter count closest
    to `target`; the other sizes stay."""
    import torch

    from hf_unified.training.methods import model_class

    def count(width: int) -> int:
        config = build_config(architecture, "clip", tokenizer, dataclasses.replace(sizes, width=width))
        with torch.device("meta"):  # the count without the allocation
            return parameter_count(model_class(config)(config))

    widths = [w for w in range(8, 4 * sizes.width + 1, 4) if w % max(1, w // 32) == 0]
    return min(widths, key=lambda width: abs(count(width) - target))


# ----------------------------------------------------------------------------------------------------------------
# Runs, through the shipped trainer


@dataclasses.dataclass
class RunSettings:
    """What every method of a study shares in one run.

    Args:
        steps: optimizer steps (the cosine schedule's length).
        eval_steps: evaluate every this many steps too (0: only at the end).
        crop_scale_min: random-resized-crop area range `[min, 1]` of the single-view methods (`DataArguments`).
        data_overrides: any other `DataArguments` fields (the view recipe of the methods that train on views:
            `view_preset`, `augmentation_kwargs`; empty: the shipped defaults).
        train_overrides: any other `TrainArguments` fields.
        label_items: UniCL's mix (even items image-label, odd items image-text); False: image-text pairs only.
    """

    steps: int = 120
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.1
    weight_decay: float = 0.1
    eval_steps: int = 0
    crop_scale_min: float = 1.0
    data_overrides: dict = dataclasses.field(default_factory=dict)
    train_overrides: dict = dataclasses.field(default_factory=dict)
    label_items: bool = True
    num_workers: int = 0


@dataclasses.dataclass
class RunResult:
    """One run: `history` holds one record per evaluation (`step` and every metric), `losses` the logged
    `(step, training loss)` pairs, `loss_terms` the logged `(step, {"loss_image_text": ..., ...})` split of the loss
    by domain pair (the pairs the objective has), `step_seconds` the median wall time of one optimizer step over the
    logging windows after the first (training only: no evaluation, no start-up), `seconds` the whole run."""

    history: list[dict]
    losses: list[tuple[int, float]]
    loss_terms: list[tuple[int, dict]]
    gflops_per_step: float
    params: int
    seconds: float
    step_seconds: float

    def at(self, step: int) -> dict:
        """The evaluation record of `step`."""
        for record in self.history:
            if record["step"] == step:
                return record
        raise KeyError(f"no evaluation at step {step}; evaluated at {[r['step'] for r in self.history]}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class CountFirstStep:
    """A step strategy that measures the FLOPs of the first optimizer step of the one it wraps."""

    def __init__(self, step):
        self.step, self.flops = step, None
        self.name, self.deepspeed_unsupported = step.name, step.deepspeed_unsupported

    def __call__(self, model, micro_batches, accelerator):
        if self.flops is not None:
            return self.step(model, micro_batches, accelerator)
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            loss_and_terms = self.step(model, micro_batches, accelerator)
        self.flops = counter.get_total_flops()
        return loss_and_terms


def linear_probe(train: dict, test: dict) -> float:
    """Top-1 accuracy of a logistic regression (scikit-learn, standardised features, `C = 1`) fitted on the frozen
    image embeddings of `train` and scored on `test` (`evaluation.embed_dataset` outputs)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    probe.fit(train["image_embeds"].numpy(), train["labels"].numpy())
    return float(probe.score(test["image_embeds"].numpy(), test["labels"].numpy()))


class StudyEvaluation:
    """The study's metrics beyond the trainer's (zero-shot with the trainer's prompts, retrieval): the extra
    zero-shot tasks of `StudyData.tasks()` and a linear probe fitted on the training images, computed at every
    evaluation of the run (the `Trainer`'s `on_evaluate` hook), which it keeps in `history` with the trainer's own.

    Args:
        eval_loader, probe_loader: return a fresh pass over the evaluation / the probe's training batches
            (`data.collate` outputs, in a fixed order).
    """

    def __init__(self, data: StudyData, tokenizer, eval_loader: Callable, probe_loader: Callable):
        self.tasks, self.tokenizer = data.tasks(), tokenizer
        self.eval_loader, self.probe_loader = eval_loader, probe_loader
        self.history: list[dict] = []

    def __call__(self, model, step: int, results: dict) -> dict:
        metrics = self.metrics(model)
        self.history.append({"step": step, **results, **metrics})
        return metrics

    def metrics(self, model) -> dict:
        import torch

        from hf_unified.prompts import build_zero_shot_classifier
        from hf_unified.training.outputs.evaluation import embed_dataset, zero_shot_accuracy

        evaluated = embed_dataset(model, self.eval_loader())
        results = {"linear_probe_top1": linear_probe(embed_dataset(model, self.probe_loader()), evaluated)}
        for name, task in self.tasks.items():
            labels = torch.tensor(task.labels)
            member = labels >= 0
            classifier = build_zero_shot_classifier(model, self.tokenizer, task.class_names, task.templates)
            accuracy = zero_shot_accuracy(evaluated["image_embeds"][member], labels[member], classifier.cpu(), (1,))
            results[f"{name}_top1"] = accuracy["top1_accuracy"]
        return results


def run_arguments(settings: RunSettings, image_size: int, seed: int, output_dir: str, **train_fields):
    """The `DataArguments` and `TrainArguments` of one run."""
    from hf_unified.training.arguments import DataArguments, TrainArguments

    data_args = DataArguments(
        image_size=image_size,
        resize_ratio=1.0,  # evaluation images as they are: no border cut off 32-pixel images
        crop_scale_min=settings.crop_scale_min,
        num_workers=settings.num_workers,
        **settings.data_overrides,
    )
    fields = dict(
        output_dir=output_dir,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=256,
        max_steps=settings.steps,
        learning_rate=settings.learning_rate,
        warmup_steps=max(1, round(settings.steps * settings.warmup_fraction)),
        weight_decay=settings.weight_decay,
        max_grad_norm=1.0,
        logging_steps=max(1, settings.steps // 20),
        eval_steps=settings.eval_steps,
        seed=seed,
        mixed_precision="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    return data_args, TrainArguments(**{**fields, **settings.train_overrides, **train_fields})


def _batches(items: list, tokenizer, max_length: int):
    import torch

    from hf_unified.training.data import collate

    return torch.utils.data.DataLoader(
        items,
        batch_size=256,
        collate_fn=partial(collate, tokenizer=tokenizer, max_length=max_length, with_labels=True),
    )


@functools.cache
def study_accelerator(output_dir: str):
    """The accelerator (accelerate's process state, CPU, float32) every run of a study process shares; each run
    writes into its own temporary folder."""
    from hf_unified.training.arguments import TrainArguments
    from hf_unified.training.engine.launch import build_accelerator

    return build_accelerator(TrainArguments(output_dir=output_dir, mixed_precision="no", use_cpu=True))


def train_run(
    model,
    tokenizer,
    data: StudyData,
    settings: RunSettings,
    seed: int,
    accelerator,
    *,
    clip_folder: str | None = None,
    export_clip: str | None = None,
) -> RunResult:
    """Trains `model` with the shipped `Trainer` on `data` and evaluates it every `settings.eval_steps` steps and at
    the end: the trainer's zero-shot (with `data.eval_templates`) and retrieval, plus `StudyEvaluation`.

    The run is composed of the builders `training/train.py` runs (`hf_unified.training.builders`): the processor
    (`build_processor`), the training data (`build_training_data`: the method's augmentation, prompts from class
    names, the resumable stream) over the in-memory rows, an `EvaluationData` over the decoded evaluation split.

    Args:
        clip_folder: the CLIPModel folder a `from_clip` model started from (its processor is used).
        export_clip: also write the trained model as a transformers CLIPModel folder there (`--export_clip`).
    """
    from hf_unified.training.arguments import ModelArguments
    from hf_unified.training.builders import ProcessorTransform, build_processor, build_training_data, fit_text_length
    from hf_unified.training.data import DecodeConfig, decode_example
    from hf_unified.training.engine.steps import build_step
    from hf_unified.training.trainer import EvaluationData, Trainer

    text_length = fit_text_length(model, tokenizer, tokenizer.model_max_length)
    class_names = [[name] for name in data.class_names]
    with tempfile.TemporaryDirectory() as output_dir:
        image_size = data.train.images[0].size[0]
        data_args, train_args = run_arguments(settings, image_size, seed, output_dir, export_clip=export_clip)
        processor = build_processor(model, tokenizer, ModelArguments(init_from_clip=clip_folder), data_args)
        plain = DecodeConfig(ProcessorTransform(processor.image_processor), class_names, data.train_templates)
        rng = random.Random(0)
        eval_items = [decode_example(row, plain, rng) for row in data.rows("eval", False)]
        probe_items = [decode_example(row, plain, rng) for row in data.rows("train", False)]
        eval_batches = partial(_batches, eval_items, tokenizer, text_length)
        rows = data.rows("train", settings.label_items).to_iterable_dataset(num_shards=1)
        rows = rows.shuffle(seed=seed, buffer_size=len(data.train.images))  # reshuffled every pass
        training = build_training_data(
            rows,
            model,
            processor,
            data_args,
            train_args,
            tokenizer=tokenizer,
            text_length=text_length,
            class_names=class_names,
            templates=data.train_templates,
            evaluation=EvaluationData(eval_batches, class_names, data.eval_templates),
        )
        metrics = StudyEvaluation(
            data, tokenizer, eval_batches, partial(_batches, probe_items, tokenizer, text_length)
        )
        step = CountFirstStep(build_step(train_args.gradient_accumulation_mode))
        trainer = Trainer(
            model, processor, train_args, training, accelerator=accelerator, step=step, on_evaluate=metrics
        )
        start = time.perf_counter()
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                trainer.train()
        except Exception:
            print(log.getvalue())
            raise
        finally:
            accelerator.free_memory()  # drops the references accelerate keeps to the run's model and optimizer
        seconds = time.perf_counter() - start
        records = [json.loads(line) for line in (Path(output_dir) / "training_log.jsonl").read_text().splitlines()]
    history = [
        {key: value for key, value in record.items() if isinstance(value, (int, float))} for record in metrics.history
    ]
    rates = [r["samples_per_second"] for r in records[1:] if r.get("samples_per_second")]
    return RunResult(
        history=history,
        losses=[(r["step"], r["loss"]) for r in records if r.get("loss") is not None],
        loss_terms=[(r["step"], {k: v for k, v in r.items() if k.startswith("loss_")}) for r in records],
        gflops_per_step=step.flops / 1e9,
        params=parameter_count(model),
        seconds=seconds,
        step_seconds=settings.batch_size / statistics.median(rates) if rates else float("nan"),
    )
