"""Small-scale replication: CLIP vs UniCL vs UniCLIP vs MS-CLIP (shared vs separate), trained by the shipped trainer.

Every run goes through `hf_unified.training.trainer.Trainer`, the loop `training/train.py` runs: the same data
pipeline (`data.TrainStream`: decoding, prompts from class names, the method's augmentation), AdamW groups,
warmup + cosine schedule, temperature clamp, evaluation (`hf_unified.training.evaluation`: zero-shot with the
class prompts averaged over the templates, retrieval). Only the data source differs: an in-memory
`datasets.Dataset` instead of shards on disk.

Data: the embedded procedural "shapes" set (`hf_unified.training.synthetic_data`: 6 shape classes, colour / size /
position captions; the evaluation split holds (shape, colour) pairs never seen in training for half its samples),
rendered in memory at 32 px; or scikit-learn's bundled handwritten digits (real 8x8 scans, 10 classes) upscaled to
32 px with captions "a handwritten {digit}." / "the digit {digit}, written by hand." (`--dataset digits`).

Training mix (UniCL's setting): the even-numbered training images are image-label data (text = a prompt built from
the class name, label = the class), the odd ones image-text data (text = the caption, a label of its own). Every
method sees the same images and texts in the same order for a given seed:

- `clip`: UniCLModel with CLIP towers, `use_labels=False` (CLIP loss: equal prompts are negatives);
- `unicl`: the same model with UniCL's label-aware loss (items that share a class label are positives);
- `uniclip`: UniCLIPModel with the same towers, 2 augmented views per image (`augmentation.MultiViewAugmentation`:
  crop area 0.5-1, brightness / contrast jitter, grayscale; no flip, hue, saturation or blur), MP-NCE loss;
- `msclip-shared`: MSCLIPModel "shared" preset (attention + MLP weights shared by both modalities, per-modality
  LayerNorms), CLIP loss;
- `msclip-separate`: MSCLIPModel "separate" preset (same code, nothing shared), CLIP loss.

Compute budget: the same number of optimizer steps, batch size, schedule and widths for every method (towers
64 wide, 2 layers, patch 8). UniCLIP encodes 2 image views per pair, so its budget in FLOPs is higher; the table
gives the measured training GFLOPs of the first step (torch FlopCounterMode, through the trainer's step strategy).

Usage:

    python benchmarks/replication.py                    # shapes, 3 seeds, all methods
    python benchmarks/replication.py --dataset digits
    python benchmarks/replication.py --smoke
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import random
import tempfile
import time
from functools import partial
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import torch
from accelerate.utils import set_seed
from common import describe_machine, markdown_table, spread

from hf_unified.training.arguments import DataArguments, ModelArguments, TrainArguments
from hf_unified.training.data import DecodeConfig, TrainStream, collate, decode_example
from hf_unified.training.engine import build_accelerator
from hf_unified.training.factory import ProcessorTransform, build_processor, train_transform
from hf_unified.training.logs import quiet_progress_bars
from hf_unified.training.methods import trains_with_labels, trains_with_views
from hf_unified.training.steps import build_step
from hf_unified.training.tokenization import train_caption_tokenizer
from hf_unified.training.trainer import EvaluationData, Trainer, TrainingData

METHODS = ("clip", "unicl", "uniclip", "msclip-shared", "msclip-separate")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_CAPTIONS = ("a handwritten {}.", "the digit {}, written by hand.", "a scanned {}.", "a {} drawn with a pen.")
DIGIT_TEMPLATES = ("a handwritten {}.", "the digit {}, written by hand.", "a {}.")
# UniCLIP's two views: random crops of half the area or more, brightness and contrast jitter, some grayscale.
VIEW_AUGMENTATION = {
    "scale": (0.5, 1.0),
    "flip_p": 0.0,
    "jitter_p": 0.8,
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.0,
    "hue": 0.0,
    "grayscale_p": 0.2,
    "blur_p": 0.0,
}


# ----------------------------------------------------------------------------------------------------------------
# Data: images, captions and labels in memory


def shapes_data(num_train: int, num_eval: int, image_size: int, seed: int = 0) -> dict:
    from hf_unified.training import synthetic_data

    splits = {}
    for split, count in (("train", num_train), ("eval", num_eval)):
        rng = random.Random(f"{seed}-{split}")
        images, captions, labels = [], [], []
        for _ in range(count):
            attributes = synthetic_data.sample_attributes(rng, split)
            shape, colour, size, position = (attributes[k] for k in ("shape", "colour", "size", "position"))
            images.append(synthetic_data.render(shape, colour, size, position, image_size, rng))
            captions.append(synthetic_data.caption(attributes, rng))
            labels.append(synthetic_data.SHAPES.index(shape))
        splits[split] = {"images": images, "captions": captions, "labels": labels}
    return {**splits, "class_names": list(synthetic_data.SHAPES), "templates": list(synthetic_data.SHAPES_TEMPLATES)}


def digits_data(num_eval: int, image_size: int, seed: int = 0) -> dict:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    scans = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    images = [Image.fromarray(scan).convert("RGB").resize((image_size, image_size), Image.BILINEAR) for scan in scans]
    labels = [int(y) for y in digits.target]
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist()
    rng = random.Random(seed)
    captions = [rng.choice(DIGIT_CAPTIONS).format(DIGIT_NAMES[y]) for y in labels]
    split = {}
    for name, index in (("eval", order[:num_eval]), ("train", order[num_eval:])):
        split[name] = {
            "images": [images[i] for i in index],
            "captions": [captions[i] for i in index],
            "labels": [labels[i] for i in index],
        }
    return {**split, "class_names": list(DIGIT_NAMES), "templates": list(DIGIT_TEMPLATES)}


def as_dataset(split: dict, label_items: bool):
    """A `datasets.Dataset` of the pipeline's raw rows (`sources.RAW_FEATURES`: the image as PNG bytes, `text`,
    `label`, where it came from). With `label_items`, the even rows are image-label data (no text: the pipeline
    builds a prompt from the class name) and the odd rows image-text data (no label)."""
    from datasets import Dataset

    from hf_unified.training.sources import RAW_FEATURES

    rows = {name: [] for name in RAW_FEATURES}
    for index, (image, caption, label) in enumerate(zip(split["images"], split["captions"], split["labels"])):
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


# ----------------------------------------------------------------------------------------------------------------
# Models


def build_model(method: str, tokenizer, args):
    from transformers import AutoConfig, AutoModel

    import hf_unified  # noqa: F401  (registers the model types)

    width, layers, heads = args.width, args.layers, max(1, args.width // 32)
    special = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    scale = math.log(1 / 0.07)  # one temperature init for every method
    if method.startswith("msclip"):
        from hf_unified import MSCLIPConfig

        config = MSCLIPConfig.from_preset(
            method.split("-", 1)[1],
            vocab_size=len(tokenizer),
            max_position_embeddings=args.text_len,
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            vision_num_attention_heads=heads,
            text_num_attention_heads=heads,
            image_size=args.image_size,
            patch_size=args.patch_size,
            projection_dim=args.projection_dim,
            layer_norm_eps=1e-5,
            logit_scale_init_value=scale,
            **special,
        )
        return AutoModel.from_config(config)
    tower = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads)
    text = dict(
        model_type="clip_text_model",
        vocab_size=len(tokenizer),
        max_position_embeddings=args.text_len,
        hidden_act="quick_gelu",
        **tower,
        **special,
    )
    vision = dict(
        model_type="clip_vision_model",
        image_size=args.image_size,
        patch_size=args.patch_size,
        hidden_act="quick_gelu",
        **tower,
    )
    towers = dict(vision_config=vision, text_config=text, projection_dim=args.projection_dim)
    if method == "uniclip":
        config = AutoConfig.for_model("uniclip", num_views=2, logit_scale_init_value=scale, **towers)
    else:
        config = AutoConfig.for_model("unicl", use_labels=method == "unicl", logit_scale_init_value=scale, **towers)
    return AutoModel.from_config(config)


# ----------------------------------------------------------------------------------------------------------------
# Training and evaluation, through the shipped trainer


class CountFirstStep:
    """A step strategy that measures the FLOPs of the first optimizer step of the one it wraps."""

    def __init__(self, step):
        self.step, self.flops = step, None

    def __call__(self, model, micro_batches, accelerator):
        if self.flops is not None:
            return self.step(model, micro_batches, accelerator)
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            loss = self.step(model, micro_batches, accelerator)
        self.flops = counter.get_total_flops()
        return loss


def run_arguments(args, seed: int, output_dir: str):
    data_args = DataArguments(
        image_size=args.image_size,
        resize_ratio=1.0,
        crop_scale_min=1.0,  # single-view methods train on the images as they are
        augmentation_kwargs=dict(VIEW_AUGMENTATION),
        num_workers=args.num_workers,
    )
    train_args = TrainArguments(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=256,
        max_steps=args.steps,
        learning_rate=args.lr,
        warmup_steps=max(1, args.steps // 10),
        weight_decay=0.1,
        max_grad_norm=1.0,
        logging_steps=args.steps,
        seed=seed,
        mixed_precision="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    return data_args, train_args


def train_and_evaluate(method: str, seed: int, data: dict, tokenizer, accelerator, args) -> dict:
    with tempfile.TemporaryDirectory() as output_dir:
        data_args, train_args = run_arguments(args, seed, output_dir)
        set_seed(seed)
        model = build_model(method, tokenizer, args)
        model.set_attn_implementation("sdpa")
        processor = build_processor(model, tokenizer, ModelArguments(), data_args)
        templates = data["templates"]
        class_names = [[name] for name in data["class_names"]]
        decode = DecodeConfig(
            image_transform=train_transform(model.config, data_args, processor.image_processor, args.image_size),
            class_names=class_names,
            templates=templates,
            with_labels=trains_with_labels(model.config),
            multi_view=trains_with_views(model.config),
        )
        train = as_dataset(data["train"], label_items=True).to_iterable_dataset(num_shards=1)
        train = train.shuffle(seed=seed, buffer_size=len(data["train"]["images"]))  # reshuffled every pass
        stream = TrainStream(train, decode, tokenizer, args.text_len, args.batch_size, seed, rank=0)

        eval_decode = DecodeConfig(ProcessorTransform(processor.image_processor), class_names, templates)
        eval_items = [
            decode_example(example, eval_decode, random.Random(0)) for example in as_dataset(data["eval"], False)
        ]
        evaluation = EvaluationData(
            loader=lambda: torch.utils.data.DataLoader(
                eval_items,
                batch_size=256,
                collate_fn=partial(collate, tokenizer=tokenizer, max_length=args.text_len, with_labels=True),
            ),
            class_names=class_names,
            templates=templates,
        )
        step = CountFirstStep(build_step(train_args.gradient_accumulation_mode))
        trainer = Trainer(
            model,
            processor,
            train_args,
            TrainingData(stream, evaluation=evaluation),
            accelerator=accelerator,
            step=step,
        )
        start = time.perf_counter()
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):
                result = trainer.train()
        except Exception:
            print(log.getvalue())
            raise
        seconds = time.perf_counter() - start
        records = [json.loads(line) for line in (Path(output_dir) / "training_log.jsonl").read_text().splitlines()]
    eval_results = result["eval_results"]
    return {
        "zero_shot_top1": eval_results["zero_shot_top1_accuracy"],
        "i2t_R@1": eval_results["image_to_text_R@1"],
        "t2i_R@1": eval_results["text_to_image_R@1"],
        "seconds": seconds,
        "gflops_per_step": step.flops / 1e9,
        "final_loss": records[-1]["loss"],
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["shapes", "digits"], default="shapes")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-train", type=int, default=1024)
    parser.add_argument("--num-eval", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--projection-dim", type=int, default=64)
    parser.add_argument("--text-len", type=int, default=24)
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding and augmenting")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: these tiny models gain nothing from a second, busy core)",
    )
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.steps, args.batch_size, args.num_train, args.num_eval = [0], 2, 8, 32, 16
        args.width, args.layers, args.projection_dim = 32, 1, 16
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_progress_bars()
    print(f"machine: {describe_machine()}")
    if args.dataset == "shapes":
        data = shapes_data(args.num_train, args.num_eval, args.image_size)
    else:
        data = digits_data(args.num_eval, args.image_size)
    corpus = data["train"]["captions"] + [t.format(c) for c in data["class_names"] for t in data["templates"]]
    tokenizer = train_caption_tokenizer(corpus, vocab_size=400, model_max_length=args.text_len)
    # One accelerator (accelerate's process state) for every run; each run writes into its own temporary folder.
    accelerator = build_accelerator(
        TrainArguments(output_dir="outputs/replication", mixed_precision="no", use_cpu=True)
    )

    results: dict[str, list[dict]] = {}
    for method in args.methods:
        for seed in args.seeds:
            metrics = train_and_evaluate(method, seed, data, tokenizer, accelerator, args)
            accelerator.free_memory()  # drops the references accelerate keeps to the run's model and optimizer
            results.setdefault(method, []).append(metrics)
            print(
                f"  {method} seed {seed}: zero-shot {metrics['zero_shot_top1']:.3f}, i2t R@1 "
                f"{metrics['i2t_R@1']:.3f}, t2i R@1 {metrics['t2i_R@1']:.3f} ({metrics['seconds']:.0f} s)",
                flush=True,
            )

    def cell(values: list[float]) -> str:
        mean, std = spread(values)
        return f"{100 * mean:.1f} +- {100 * std:.1f}"

    rows = []
    for method, runs in results.items():
        rows.append(
            [
                method,
                f"{runs[0]['params_m']:.2f}",
                f"{runs[0]['gflops_per_step']:.2f}",
                cell([r["zero_shot_top1"] for r in runs]),
                cell([r["i2t_R@1"] for r in runs]),
                cell([r["t2i_R@1"] for r in runs]),
                f"{spread([r['final_loss'] for r in runs])[0]:.3f}",
            ]
        )
    chance = 100 / len(data["class_names"])
    print(
        f"\n### replication on {args.dataset} ({args.num_train if args.dataset == 'shapes' else 'sklearn'} train, "
        f"{args.num_eval} eval; zero-shot chance {chance:.1f}%): {args.steps} steps x batch {args.batch_size}, "
        f"width {args.width}, {args.layers} layers, seeds {args.seeds}, shipped trainer; mean +- std in %"
    )
    print(
        markdown_table(
            [
                "method",
                "params (M)",
                "train GFLOPs/step",
                "zero-shot top-1",
                "image->text R@1",
                "text->image R@1",
                "final train loss",
            ],
            rows,
        )
    )
    return results


if __name__ == "__main__":
    main()
