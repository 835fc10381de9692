"""Train UniCL, UniCLIP or MS-CLIP with accelerate on streamed `datasets` sources.

    accelerate launch training/train.py --config training/configs/unicl-tiny.yaml [--max_steps 100 ...]
    python training/train.py --config training/configs/unicl-tiny.yaml

The YAML holds the fields of `ModelArguments`, `DataArguments` and `TrainArguments` below; flags given on the
command line override it. `model_type` (unicl | uniclip | msclip) picks the model and so the objective: each model
computes its own distributed-exact loss when called with `return_loss=True` (UniCL also takes `labels`, -1 for an
image-text pair).

Without `train_data` pointing elsewhere the run uses the embedded "shapes" data (`hf_unified.training.synthetic_data`),
generated into `data/shapes` on first use, and a caption tokenizer trained on the training texts, so it runs offline.

Outputs in `output_dir`: `checkpoint-<step>/` (accelerate state + data-stream position, written atomically),
`training_log.jsonl`, and at the end the `save_pretrained` model and processor, `eval_results.json`, a model card.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from torchvision.transforms import v2
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, HfArgumentParser, get_cosine_schedule_with_warmup

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python training/train.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

from hf_unified.prompts import OPENAI_IMAGENET_TEMPLATES, UNICL_TEMPLATES  # noqa: E402
from hf_unified.training import data as data_lib  # noqa: E402
from hf_unified.training import synthetic_data  # noqa: E402
from hf_unified.training.evaluation import evaluate_model  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer also runs in DataLoader workers

# model_type -> (config class, model class, processor class, image-processor factory, trains with labels,
# trains on multi-view augmentations), as "module:attribute" so a method whose files are absent fails only when used.
METHODS = {
    "unicl": (
        "configuration_unicl:UniCLConfig",
        "modeling_unicl:UniCLModel",
        "processing_unicl:UniCLProcessor",
        "processing_unicl:unicl_image_processor",
        True,
        False,
    ),
    "uniclip": (
        "configuration_uniclip:UniCLIPConfig",
        "modeling_uniclip:UniCLIPModel",
        "processing_uniclip:UniCLIPProcessor",
        "processing_uniclip:uniclip_image_processor",
        False,
        True,
    ),
    "msclip": (
        "configuration_msclip:MSCLIPConfig",
        "modeling_msclip:MSCLIPModel",
        "processing_msclip:MSCLIPProcessor",
        "processing_msclip:msclip_image_processor",
        False,
        False,
    ),
}
TEMPLATE_SETS = {
    "unicl": UNICL_TEMPLATES,
    "openai": OPENAI_IMAGENET_TEMPLATES,
    "shapes": synthetic_data.SHAPES_TEMPLATES,
    "name": ("{}",),
}
LOG_MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class ModelArguments:
    model_type: str = field(default="unicl", metadata={"help": "unicl | uniclip | msclip: the model and objective"})
    model_config: dict | str | None = field(
        default=None, metadata={"help": "config kwargs of the method (YAML mapping, or JSON on the command line)"}
    )
    model_name_or_path: str | None = field(default=None, metadata={"help": "start from a saved model folder/Hub id"})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "tokenizer folder or Hub id; default: train a BPE on the training captions"}
    )
    tokenizer_vocab_size: int = field(default=512, metadata={"help": "size of the trained caption tokenizer"})
    tokenizer_train_samples: int = field(default=2000, metadata={"help": "training texts used to fit it"})
    max_text_length: int = field(default=32, metadata={"help": "tokens per caption (truncation)"})

    def __post_init__(self):
        if isinstance(self.model_config, str):
            self.model_config = json.loads(self.model_config)
        self.model_config = dict(self.model_config or {})
        if self.model_type not in METHODS:
            raise ValueError(f"model_type must be one of {sorted(METHODS)}, got {self.model_type!r}")


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
    num_workers: int = field(default=2, metadata={"help": "DataLoader workers decoding and augmenting"})
    image_size: int = 224
    resize_ratio: float = field(
        default=256 / 224, metadata={"help": "evaluation resize = image_size * ratio, then centre crop"}
    )
    crop_scale_min: float = field(
        default=0.5,
        metadata={"help": "random-resized-crop area range [min, 1] (single view); 1 = resize + centre crop"},
    )
    horizontal_flip: bool = field(default=False, metadata={"help": "off by default: captions may say left/right"})
    augmentation_kwargs: dict | str | None = field(
        default=None, metadata={"help": "UniCLIP MultiViewAugmentation kwargs"}
    )
    embedded_data_dir: str = field(default="data/shapes", metadata={"help": "generated here when a source uses it"})

    def __post_init__(self):
        if isinstance(self.augmentation_kwargs, str):
            self.augmentation_kwargs = json.loads(self.augmentation_kwargs)
        self.augmentation_kwargs = dict(self.augmentation_kwargs or {})


@dataclass
class TrainArguments:
    output_dir: str = "outputs/run"
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
    learning_rate: float = 5e-4
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_epsilon: float = 1e-6
    warmup_steps: int = 100
    max_grad_norm: float = field(default=1.0, metadata={"help": "0 = no clipping"})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "micro-batches per step; each micro-batch's loss sees only its own negatives"}
    )
    mixed_precision: str = field(
        default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU) | no | bf16 | fp16"}
    )
    gradient_checkpointing: bool = False
    use_cpu: bool = field(default=False, metadata={"help": "train on the CPU even when a GPU is present"})
    torch_compile: bool = False
    max_logit_scale: float = field(default=100.0, metadata={"help": "clamp exp(logit_scale) after each step; 0 = off"})
    seed: int = 0
    logging_steps: int = 10
    eval_steps: int = field(default=0, metadata={"help": "evaluate every N steps (0 = only at the end)"})
    save_steps: int = field(default=0, metadata={"help": "checkpoint every N steps (0 = never)"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept (0 = all)"})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "a checkpoint folder or 'latest'"})
    do_eval: bool = True
    report_to: list[str] | None = field(
        default=None, metadata={"help": "accelerate trackers: tensorboard, trackio, ..."}
    )
    project_name: str = "hf-unified"
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private: bool = False
    disable_tqdm: bool = False


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainArguments)


def parse_arguments(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainArguments]:
    """`--config file.yaml` gives the values, other flags override them; unknown YAML keys are an error."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    config_path = None
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise ValueError("--config needs a YAML file")
        config_path = argv[index + 1]
        del argv[index : index + 2]
    if config_path is not None:
        values = yaml.safe_load(Path(config_path).read_text()) or {}
        known = {f.name for cls in ARGUMENT_CLASSES for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{config_path}: unknown keys {unknown}")
        parser.set_defaults(**values)
    return parser.parse_args_into_dataclasses(args=argv)


def _load(reference: str):
    module, attribute = reference.split(":")
    try:
        return getattr(importlib.import_module(f"hf_unified.{module}"), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"this checkout has no {reference} ({error})") from error


def _per_source(values: list[str] | None, count: int, name: str, default=None) -> list:
    values = values if values else [default]
    if len(values) == 1:
        values = values * count
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} values for {count} training sources")
    return [None if isinstance(v, str) and v.lower() in ("", "none", "null") else v for v in values]


def _templates(spec: str) -> tuple[str, ...]:
    if spec in TEMPLATE_SETS:
        return tuple(TEMPLATE_SETS[spec])
    if os.path.isfile(spec):
        templates = json.loads(Path(spec).read_text())
        if templates and all(isinstance(t, str) and "{}" in t for t in templates):
            return tuple(templates)
    raise ValueError(
        f"templates must be one of {sorted(TEMPLATE_SETS)} or a JSON list of '{{}}' strings, got {spec!r}"
    )


def train_sources(args: DataArguments) -> list[data_lib.SourceSpec]:
    count = len(args.train_data)
    if count == 0:
        raise ValueError("train_data is empty")
    formats = _per_source(args.train_format, count, "train_format")
    images = _per_source(args.image_column, count, "image_column")
    texts = _per_source(args.text_column, count, "text_column")
    labels = _per_source(args.label_column, count, "label_column")
    probabilities = _per_source(args.train_probabilities, count, "train_probabilities", default=1.0)
    return [
        data_lib.SourceSpec(
            path, images[i], texts[i], labels[i], float(probabilities[i]), formats[i], args.train_split
        )
        for i, path in enumerate(args.train_data)
    ]


def eval_source(args: DataArguments) -> data_lib.SourceSpec | None:
    if not args.eval_data:
        return None
    label = None if args.eval_label_column.lower() in ("", "none") else args.eval_label_column
    text = None if args.eval_text_column.lower() in ("", "none") else args.eval_text_column
    return data_lib.SourceSpec(
        args.eval_data, args.eval_image_column, text, label, 1.0, args.eval_format, args.eval_split
    )


def ensure_embedded_data(args: DataArguments, accelerator: Accelerator) -> None:
    """Generates the shapes data when a source points into `embedded_data_dir` and it is not there yet."""
    paths = list(args.train_data) + [args.eval_data or "", args.class_names_file or ""]
    root = os.path.normpath(args.embedded_data_dir)
    if any(os.path.normpath(p).startswith(root) for p in paths if p):
        with accelerator.main_process_first():
            if accelerator.is_main_process and not (Path(root) / "info.json").exists():
                accelerator.print(f"generating the embedded shapes dataset in {root} ...")
                synthetic_data.ensure_dataset(root)


def build_tokenizer(
    model_args: ModelArguments, specs, seed: int, class_names, templates, output_dir: Path, accelerator
):
    if model_args.tokenizer_name_or_path:
        return AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path)
    from hf_unified.training.tokenization import train_caption_tokenizer

    folder = output_dir / "tokenizer"
    with accelerator.main_process_first():
        if accelerator.is_main_process and not (folder / "tokenizer.json").exists():
            # The whole (unsplit) stream, so that every world size trains the same tokenizer.
            stream = data_lib.build_stream(specs, seed, rank=0, world_size=1, shuffle_buffer_size=0)
            texts = [ex["text"] for ex in stream.take(model_args.tokenizer_train_samples) if ex["text"]]
            if class_names:
                texts += [t.format(name) for names in class_names for name in names for t in templates]
            tokenizer = train_caption_tokenizer(
                texts, vocab_size=model_args.tokenizer_vocab_size, model_max_length=model_args.max_text_length
            )
            tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def build_model(model_args: ModelArguments, tokenizer, image_size: int):
    config_class, model_class = _load(METHODS[model_args.model_type][0]), _load(METHODS[model_args.model_type][1])
    if model_args.model_name_or_path:
        return AutoModel.from_pretrained(model_args.model_name_or_path)
    kwargs = json.loads(json.dumps(model_args.model_config))  # a deep copy
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
    return model_class(config_class(**kwargs))


def build_processor(model_type: str, tokenizer, data_args: DataArguments, model_name_or_path: str | None = None):
    if model_name_or_path:  # continue or evaluate a saved model with its own preprocessing
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(model_name_or_path)
    processor_class, image_processor_factory = _load(METHODS[model_type][2]), _load(METHODS[model_type][3])
    image_processor = image_processor_factory(data_args.image_size)
    size = data_args.image_size
    image_processor.size = {"shortest_edge": max(size, round(size * data_args.resize_ratio))}
    image_processor.crop_size = {"height": size, "width": size}
    return processor_class(image_processor=image_processor, tokenizer=tokenizer)


class ProcessorTransform:
    """Evaluation images go through the saved processor's own preprocessing (what inference will use)."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, image):
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]


def train_transform(model, data_args: DataArguments, image_processor):
    mean, std = list(image_processor.image_mean), list(image_processor.image_std)
    if METHODS[model.config.model_type][5]:
        from hf_unified.training.augmentation import MultiViewAugmentation

        kwargs = {
            "num_views": model.config.num_views,
            "size": data_args.image_size,
            "image_mean": mean,
            "image_std": std,
            "flip_p": 0.5 if data_args.horizontal_flip else 0.0,
        }
        return MultiViewAugmentation(**{**kwargs, **data_args.augmentation_kwargs})
    if data_args.crop_scale_min >= 1.0:  # no random crop: resize and centre crop
        steps = [v2.ToImage(), v2.Resize(data_args.image_size, antialias=True), v2.CenterCrop(data_args.image_size)]
    else:
        steps = [
            v2.ToImage(),
            v2.RandomResizedCrop(data_args.image_size, scale=(data_args.crop_scale_min, 1.0), antialias=True),
        ]
    if data_args.horizontal_flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on norms, biases, embeddings and temperatures (all 0/1-d or embedding
    tables), decay on the other matrices."""
    no_decay_modules = (
        torch.nn.LayerNorm,
        torch.nn.Embedding,
        torch.nn.GroupNorm,
        torch.nn.modules.batchnorm._BatchNorm,
    )
    no_decay = set()
    for module_name, module in model.named_modules():
        if isinstance(module, no_decay_modules) or "norm" in type(module).__name__.lower():
            no_decay.update(
                f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters(recurse=False)
            )
    decay_params, plain_params = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = (
            param.ndim < 2
            or name in no_decay
            or "embed" in name.split(".")[-2 if "." in name else -1]
            or re.search(r"(logit_scale|logit_offset|logit_bias|temperature|position_embedding|class_embedding)", name)
        )
        (plain_params if skip else decay_params).append(param)
    return [{"params": decay_params, "weight_decay": weight_decay}, {"params": plain_params, "weight_decay": 0.0}]


def clamp_logit_scale(model: torch.nn.Module, maximum: float) -> None:
    """open_clip's clamp of the learnt log temperature to ln(max) after each optimizer step."""
    if maximum <= 0:
        return
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.split(".")[-1] == "logit_scale":
                param.clamp_(max=math.log(maximum))


def find_checkpoint(output_dir: Path, spec: str) -> Path | None:
    if spec != "latest":
        path = Path(spec)
        if not path.is_dir():
            raise ValueError(f"resume_from_checkpoint: {spec} is not a checkpoint folder")
        return path
    steps = [(int(p.name.split("-")[1]), p) for p in output_dir.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    return max(steps)[1] if steps else None


def save_checkpoint(accelerator, output_dir: Path, step: int, stream, counters: dict, limit: int) -> None:
    """`save_state` into a temporary folder, then one rename: a crash never leaves a half-written checkpoint."""
    final = output_dir / f"checkpoint-{step}"
    temporary = output_dir / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    (temporary / f"data_state_rank{accelerator.process_index}.json").write_text(json.dumps(stream.state_dict()))
    if accelerator.is_main_process:
        (temporary / "trainer_state.json").write_text(json.dumps({"step": step, **counters}))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        if limit > 0:
            old = sorted((int(p.name.split("-")[1]), p) for p in output_dir.glob("checkpoint-*"))[:-limit]
            for _, path in old:
                shutil.rmtree(path)
    accelerator.wait_for_everyone()


def write_model_card(output_dir: Path, model_type: str, eval_results: dict, training_args: dict) -> bool:
    try:
        from hf_unified.hub.model_card import write_model_card as render
    except ImportError:
        return False
    render(output_dir, model_type, eval_results=eval_results, training_args=training_args)
    return True


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, train_args = parse_arguments(argv)
    if train_args.push_to_hub and not train_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id")
    if model_args.model_name_or_path and not model_args.tokenizer_name_or_path:
        model_args.tokenizer_name_or_path = model_args.model_name_or_path
    output_dir = Path(train_args.output_dir)
    mixed_precision = train_args.mixed_precision
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() else "no"
    # On a machine without an accelerator, say so to accelerate: several processes then train as MULTI_CPU (gloo).
    use_cpu = train_args.use_cpu or not (torch.cuda.is_available() or torch.backends.mps.is_available())
    accelerator = Accelerator(
        cpu=use_cpu,
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=train_args.gradient_accumulation_steps,
        log_with=train_args.report_to or None,
        project_dir=str(output_dir),
        dynamo_backend="inductor" if train_args.torch_compile else "no",
    )
    set_seed(train_args.seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    ensure_embedded_data(data_args, accelerator)

    # Data first: a wrong column or path fails here, before anything is built or trained.
    specs = train_sources(data_args)
    stream = data_lib.build_stream(
        specs, train_args.seed, accelerator.process_index, accelerator.num_processes, data_args.shuffle_buffer_size
    )
    eval_spec = eval_source(data_args) if train_args.do_eval else None
    if eval_spec is not None:
        data_lib.open_source(eval_spec)
    class_names = data_lib.load_class_names(data_args.class_names_file)
    templates = _templates(data_args.templates)
    eval_templates = _templates(data_args.eval_templates or data_args.templates)
    if any(spec.text_column is None for spec in specs) and not class_names:
        raise ValueError("a source without text_column needs class_names_file to build its prompts")
    vocabulary = None
    if data_args.map_captions_to_labels:
        names = data_lib.load_class_names(data_args.label_vocabulary_file) or class_names
        if not names:
            raise ValueError("map_captions_to_labels needs label_vocabulary_file or class_names_file")
        vocabulary = data_lib.LabelVocabulary(names)

    tokenizer = build_tokenizer(
        model_args, specs, train_args.seed, class_names, templates + eval_templates, output_dir, accelerator
    )
    model = build_model(model_args, tokenizer, data_args.image_size)
    model_args.model_type = model.config.model_type  # a loaded model decides the method
    uses_labels = METHODS[model_args.model_type][4]
    processor = build_processor(model_args.model_type, tokenizer, data_args, model_args.model_name_or_path)
    if train_args.gradient_checkpointing:
        model.gradient_checkpointing_enable()

    decode = data_lib.DecodeConfig(
        image_transform=train_transform(model, data_args, processor.image_processor),
        class_names=class_names,
        templates=templates,
        label_vocabulary=vocabulary,
        with_labels=uses_labels,
        multi_view=METHODS[model_args.model_type][5],
    )
    train_stream = data_lib.TrainStream(
        stream,
        decode,
        tokenizer,
        model_args.max_text_length,
        train_args.per_device_train_batch_size,
        train_args.seed,
        accelerator.process_index,
    )

    optimizer = torch.optim.AdamW(
        parameter_groups(model, train_args.weight_decay),
        lr=train_args.learning_rate,
        betas=(train_args.adam_beta1, train_args.adam_beta2),
        eps=train_args.adam_epsilon,
    )
    # The scheduler is stepped by hand once per optimizer step (accelerate's prepared scheduler would step once per
    # process, which changes the schedule with the world size).
    scheduler = get_cosine_schedule_with_warmup(optimizer, train_args.warmup_steps, train_args.max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    counters = {"samples_seen": 0, "samples_skipped": 0, "captions_mapped_to_labels": 0}
    start_step = 0
    if train_args.resume_from_checkpoint:
        checkpoint = find_checkpoint(output_dir, train_args.resume_from_checkpoint)
        if checkpoint is None:
            accelerator.print(f"no checkpoint in {output_dir}: starting from scratch")
        else:
            accelerator.load_state(str(checkpoint))
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            start_step = state.pop("step")
            counters.update(state)
            data_state = checkpoint / f"data_state_rank{accelerator.process_index}.json"
            if not data_state.exists():
                raise ValueError(
                    f"{checkpoint} has no data state for rank {accelerator.process_index} "
                    "(resume with the number of processes it was saved with)"
                )
            train_stream.load_state_dict(json.loads(data_state.read_text()))
            accelerator.print(f"resumed from {checkpoint} at step {start_step}")

    if train_args.report_to:
        flat = {
            k: v
            for k, v in {**asdict(model_args), **asdict(data_args), **asdict(train_args)}.items()
            if isinstance(v, (int, float, str, bool))
        }
        accelerator.init_trackers(train_args.project_name, config=flat)

    loader = torch.utils.data.DataLoader(
        train_stream, batch_size=None, num_workers=data_args.num_workers, persistent_workers=False
    )
    batches = iter(loader)
    unwrapped = accelerator.unwrap_model(model)
    log_file = output_dir / "training_log.jsonl"
    progress = tqdm(
        total=train_args.max_steps,
        initial=start_step,
        desc=f"{model_args.model_type}",
        disable=not accelerator.is_main_process or train_args.disable_tqdm,
        dynamic_ncols=True,
    )
    eval_results: dict = {}

    def next_batch() -> dict:
        # Skipped samples are counted; a batch that lost every sample is passed over (deterministically).
        while True:
            batch = next(batches)  # noqa: F821 (deleted only after the loop)
            train_stream.batches_consumed += 1
            counters["samples_skipped"] += batch["num_skipped"]
            counters["captions_mapped_to_labels"] += batch["num_mapped"]
            if "pixel_values" in batch:
                return batch

    def run_eval(step: int) -> dict:
        loader = data_lib.eval_dataloader(
            eval_spec,
            data_lib.DecodeConfig(ProcessorTransform(processor.image_processor), class_names, eval_templates),
            tokenizer,
            model_args.max_text_length,
            train_args.per_device_eval_batch_size,
            accelerator.process_index,
            accelerator.num_processes,
            data_args.num_workers,
        )
        if data_args.eval_max_samples:
            loader = _take_samples(loader, data_args.eval_max_samples)
        results = evaluate_model(
            accelerator.unwrap_model(model),
            loader,
            tokenizer,
            class_names,
            eval_templates,
            accelerator,
            retrieval=eval_spec.text_column is not None,
        )
        accelerator.log({f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float))}, step=step)
        summary = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in results.items())
        accelerator.print(f"[eval step {step}] {summary}")
        return results

    model.train()
    window_start, window_samples = time.perf_counter(), 0
    last_step = min(train_args.max_steps, train_args.stop_at_step or train_args.max_steps)
    for step in range(start_step + 1, last_step + 1):
        step_loss = torch.zeros((), device=accelerator.device)
        for _ in range(train_args.gradient_accumulation_steps):
            batch = next_batch()
            inputs = {
                k: batch[k].to(accelerator.device)
                for k in ("input_ids", "attention_mask", "pixel_values", "labels", "augmentation_params")
                if k in batch
            }
            window_samples += inputs["pixel_values"].shape[0]
            with accelerator.accumulate(model):
                loss = model(**inputs, return_loss=True).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and train_args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), train_args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            step_loss += loss.detach() / train_args.gradient_accumulation_steps
        scheduler.step()
        clamp_logit_scale(unwrapped, train_args.max_logit_scale)

        if step % train_args.logging_steps == 0 or step == train_args.max_steps or step == start_step + 1:
            mean_loss = accelerator.reduce(step_loss, reduction="mean").item()
            samples = accelerator.reduce(torch.tensor(window_samples, device=accelerator.device), "sum").item()
            elapsed = time.perf_counter() - window_start
            record = {
                "step": step,
                "loss": mean_loss,
                "lr": scheduler.get_last_lr()[0],
                "logit_scale": float(unwrapped.logit_scale.detach().float().exp().mean()),
                "samples_per_second": samples / max(elapsed, 1e-9),
                "samples_skipped": counters["samples_skipped"],
                "captions_mapped_to_labels": counters["captions_mapped_to_labels"],
            }
            accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step)
            if accelerator.is_main_process:
                with log_file.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
            progress.set_postfix(
                loss=f"{mean_loss:.4f}", samples_s=f"{record['samples_per_second']:.1f}", lr=f"{record['lr']:.2e}"
            )
            window_start, window_samples = time.perf_counter(), 0
        progress.update(1)
        if train_args.save_steps and step % train_args.save_steps == 0 and step < train_args.max_steps:
            save_checkpoint(accelerator, output_dir, step, train_stream, counters, train_args.save_total_limit)
        if (
            eval_spec is not None
            and train_args.eval_steps
            and step % train_args.eval_steps == 0
            and step < train_args.max_steps
        ):
            run_eval(step)
    progress.close()
    del batches, loader  # stop the workers

    if (train_args.save_steps and last_step > start_step) or last_step < train_args.max_steps:
        save_checkpoint(accelerator, output_dir, last_step, train_stream, counters, train_args.save_total_limit)
    if last_step < train_args.max_steps:
        accelerator.print(
            f"stopped at step {last_step} of {train_args.max_steps}; resume with --resume_from_checkpoint latest"
        )
        accelerator.end_training()
        return {"eval_results": {}, "counters": counters, "output_dir": str(output_dir)}
    skipped = int(accelerator.reduce(torch.tensor(counters["samples_skipped"], device=accelerator.device), "sum"))
    mapped = int(
        accelerator.reduce(torch.tensor(counters["captions_mapped_to_labels"], device=accelerator.device), "sum")
    )
    accelerator.print(f"training samples skipped as corrupt or incomplete: {skipped}")
    if vocabulary is not None:
        accelerator.print(f"captions mapped to a class label: {mapped}")
    if eval_spec is not None:
        eval_results = run_eval(train_args.max_steps)

    if accelerator.is_main_process:
        final_model = accelerator.unwrap_model(model, keep_torch_compile=False)
        final_model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        payload = {"step": train_args.max_steps, "train_samples_skipped": skipped, **eval_results}
        (output_dir / "eval_results.json").write_text(json.dumps(payload, indent=2))
        training_args = {**asdict(model_args), **asdict(data_args), **asdict(train_args)}
        (output_dir / "training_args.json").write_text(json.dumps(training_args, indent=2, default=str))
        if not write_model_card(output_dir, model_args.model_type, eval_results, training_args):
            accelerator.print("hf_unified.hub.model_card is not available: no model card written")
        if "zero_shot_top1_accuracy" in eval_results:
            accelerator.print(
                f"zero-shot top-1 accuracy: {100 * eval_results['zero_shot_top1_accuracy']:.1f}% "
                f"(chance {100 * eval_results['zero_shot_chance']:.1f}%) on {eval_results['num_examples']} images"
            )
        accelerator.print(f"model, processor and eval_results.json saved to {output_dir}")
        if train_args.push_to_hub:
            push_to_hub(output_dir, train_args)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"eval_results": eval_results, "counters": counters, "output_dir": str(output_dir)}


def _take_samples(loader, limit: int):
    """Stops an evaluation loader after about `limit` examples on this rank."""
    seen = 0
    for batch in loader:
        if seen >= limit:
            break
        seen += batch.get("input_ids", torch.zeros(0)).shape[0] + batch["num_skipped"]
        yield batch


def push_to_hub(output_dir: Path, train_args: TrainArguments) -> None:
    """Uploads the finished model folder with the Hub engineer's `push_folder` (also `training/push_to_hub.py`)."""
    if not train_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id")
    from hf_unified import hub

    result = hub.push_folder(output_dir, train_args.hub_model_id, private=train_args.hub_private)
    print(f"pushed {len(result.files)} files to {result.repo_url}")


if __name__ == "__main__":
    main()
