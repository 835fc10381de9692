"""Small-scale replication: CLIP vs UniCL vs UniCLIP vs MS-CLIP (shared vs separate) under one compute budget.

Data: the embedded procedural "shapes" set (`hf_unified.training.synthetic_data`: 6 shape classes, colour / size /
position
captions; the evaluation split holds (shape, colour) pairs never seen in training for half its samples), rendered
in memory at 32 px. Optionally scikit-learn's bundled handwritten digits (real 8x8 scans, 10 classes) upscaled to
32 px with captions "a handwritten {digit}." / "the digit {digit}, written by hand." (`--dataset digits`).

Training mix (UniCL's setting): half the training images are image-label data (text = a prompt built from the class
name, label = the class), half image-text data (text = the caption, a label of its own). Every method sees the
same images and texts in the same order for a given seed:

- `clip`: UniCLModel with CLIP towers, CLIP loss (every item its own label, so equal prompts are negatives);
- `unicl`: the same model with the UniCL target-aware loss (items that share a class label are positives);
- `uniclip`: UniCLIPModel with the same towers, 2 augmented views per image (batched random crop + brightness /
  contrast jitter + grayscale, parameters in `hf_unified.training.augmentation`'s layout), MP-NCE loss;
- `msclip-shared`: MSCLIPModel "shared" preset (attention + MLP weights shared by both modalities, per-modality
  LayerNorms), CLIP loss;
- `msclip-separate`: MSCLIPModel "separate" preset (same code, nothing shared), CLIP loss.

Compute budget: the same number of optimizer steps, batch size, schedule and widths for every method (towers
64 wide, 2 layers, patch 8). UniCLIP encodes 2 image views per pair, so its budget in FLOPs is higher; the table
gives the measured training GFLOPs per step (torch FlopCounterMode) so the reader can judge.

Evaluation on the held-out split: zero-shot top-1 (class prompts averaged over the shapes templates) and image->text
/ text->image R@1 (`hf_unified.training.evaluation.retrieval_recall`; identical captions count as matches). Mean +- std
over seeds.

Usage:

    python benchmarks/replication.py                    # shapes, 3 seeds, all methods
    python benchmarks/replication.py --dataset digits
    python benchmarks/replication.py --smoke
"""

from __future__ import annotations

import argparse
import math
import random
import time

import common  # noqa: F401  (puts the repository on sys.path)
import numpy as np
import torch
import torch.nn.functional as F
from common import describe_machine, markdown_table, spread

from hf_unified.training import synthetic_data
from hf_unified.training.augmentation import AUGMENTATION_PARAM_NAMES, CLIP_MEAN, CLIP_STD, identity_params
from hf_unified.training.evaluation import retrieval_recall
from hf_unified.training.tokenization import train_caption_tokenizer

METHODS = ("clip", "unicl", "uniclip", "msclip-shared", "msclip-separate")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_CAPTIONS = ("a handwritten {}.", "the digit {}, written by hand.", "a scanned {}.", "a {} drawn with a pen.")
DIGIT_TEMPLATES = ("a handwritten {}.", "the digit {}, written by hand.", "a {}.")


# ----------------------------------------------------------------------------------------------------------------
# Data: tensors in memory


def _to_tensor(images: list) -> torch.Tensor:
    """PIL RGB images -> float [N, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])).permute(0, 3, 1, 2)


def shapes_data(num_train: int, num_eval: int, image_size: int, seed: int = 0) -> dict:
    splits = {}
    for split, count in (("train", num_train), ("eval", num_eval)):
        rng = random.Random(f"{seed}-{split}")
        images, captions, labels = [], [], []
        for _ in range(count):
            attributes = synthetic_data.sample_attributes(rng, split)
            images.append(
                synthetic_data.render(
                    attributes["shape"],
                    attributes["colour"],
                    attributes["size"],
                    attributes["position"],
                    image_size,
                    rng,
                )
            )
            captions.append(synthetic_data.caption(attributes, rng))
            labels.append(synthetic_data.SHAPES.index(attributes["shape"]))
        splits[split] = {"images": _to_tensor(images), "captions": captions, "labels": torch.tensor(labels)}
    return {**splits, "class_names": list(synthetic_data.SHAPES), "templates": list(synthetic_data.SHAPES_TEMPLATES)}


def digits_data(num_eval: int, image_size: int, seed: int = 0) -> dict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None].repeat(1, 3, 1, 1)
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    labels = torch.from_numpy(digits.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    rng = random.Random(seed)
    captions = [rng.choice(DIGIT_CAPTIONS).format(DIGIT_NAMES[int(y)]) for y in labels]
    split = {}
    for name, index in (("eval", order[:num_eval]), ("train", order[num_eval:])):
        split[name] = {"images": images[index], "captions": [captions[int(i)] for i in index], "labels": labels[index]}
    return {**split, "class_names": list(DIGIT_NAMES), "templates": list(DIGIT_TEMPLATES)}


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN)[None, :, None, None]
    std = torch.tensor(CLIP_STD)[None, :, None, None]
    return (images - mean) / std


def augmented_views(
    images: torch.Tensor, num_views: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched random crop (area 0.5-1, aspect 3/4-4/3, resized back), brightness / contrast jitter (p=0.8) and
    grayscale (p=0.2): `[B, 3, H, W]` in [0, 1] -> (views `[B, V, 3, H, W]` normalised, params `[B, V, 11]`)."""
    b = images.shape[0]
    views, params = [], []
    for _ in range(num_views):
        area = torch.empty(b).uniform_(0.5, 1.0, generator=generator)
        log_ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
        ratio = log_ratio.exp()
        width = (area * ratio).sqrt().clamp(max=1.0)
        height = (area / ratio).sqrt().clamp(max=1.0)
        left = torch.rand(b, generator=generator) * (1 - width)
        top = torch.rand(b, generator=generator) * (1 - height)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 1, 1] = width, height
        theta[:, 0, 2], theta[:, 1, 2] = 2 * left + width - 1, 2 * top + height - 1
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        view = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        jitter = torch.rand(b, generator=generator) < 0.8
        brightness = torch.where(jitter, torch.empty(b).uniform_(0.6, 1.4, generator=generator), torch.ones(b))
        contrast = torch.where(jitter, torch.empty(b).uniform_(0.6, 1.4, generator=generator), torch.ones(b))
        view = (view * brightness[:, None, None, None]).clamp(0, 1)
        gray = (0.299 * view[:, 0] + 0.587 * view[:, 1] + 0.114 * view[:, 2])[:, None]
        mean_gray = gray.mean(dim=(2, 3), keepdim=True)
        view = ((view - mean_gray) * contrast[:, None, None, None] + mean_gray).clamp(0, 1)
        grayscale = torch.rand(b, generator=generator) < 0.2
        gray = (0.299 * view[:, 0] + 0.587 * view[:, 1] + 0.114 * view[:, 2])[:, None].expand_as(view)
        view = torch.where(grayscale[:, None, None, None], gray, view)
        p = identity_params((b,))
        slot = {name: i for i, name in enumerate(AUGMENTATION_PARAM_NAMES)}
        p[:, slot["crop_left"]], p[:, slot["crop_top"]] = left, top
        p[:, slot["crop_width"]], p[:, slot["crop_height"]] = width, height
        p[:, slot["brightness"]], p[:, slot["contrast"]] = brightness, contrast
        p[:, slot["grayscale"]] = grayscale.float()
        views.append(normalise(view))
        params.append(p)
    return torch.stack(views, dim=1), torch.stack(params, dim=1)


# ----------------------------------------------------------------------------------------------------------------
# Models


def build_model(method: str, tokenizer, args):
    from transformers import CLIPTextConfig, CLIPVisionConfig

    width, layers, heads = args.width, args.layers, max(1, args.width // 32)
    special = dict(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=args.text_len,
        hidden_act="quick_gelu",
        **special,
    )
    vision = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=args.image_size,
        patch_size=args.patch_size,
        hidden_act="quick_gelu",
    )
    scale = math.log(1 / 0.07)  # one temperature init for every method
    if method in ("clip", "unicl"):
        from hf_unified.configuration_unicl import UniCLConfig
        from hf_unified.modeling_unicl import UniCLModel

        return UniCLModel(
            UniCLConfig(
                vision_config=vision,
                text_config=text,
                projection_dim=args.projection_dim,
                logit_scale_init_value=scale,
            )
        )
    if method == "uniclip":
        from hf_unified.configuration_uniclip import UniCLIPConfig
        from hf_unified.modeling_uniclip import UniCLIPModel

        return UniCLIPModel(
            UniCLIPConfig(
                vision_config=vision,
                text_config=text,
                projection_dim=args.projection_dim,
                num_views=2,
                logit_scale_init_value=scale,
            )
        )
    from hf_unified.configuration_msclip import MSCLIPConfig
    from hf_unified.modeling_msclip import MSCLIPModel

    preset = method.split("-", 1)[1]
    config = MSCLIPConfig.from_preset(
        preset,
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
    return MSCLIPModel(config)


def training_loss(method: str, model, batch: dict) -> torch.Tensor:
    common_inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if method == "unicl":
        return model(pixel_values=batch["pixel_values"], labels=batch["labels"], **common_inputs).loss
    if method == "uniclip":
        return model(
            pixel_values=batch["views"], augmentation_params=batch["params"], return_loss=True, **common_inputs
        ).loss
    return model(pixel_values=batch["pixel_values"], return_loss=True, **common_inputs).loss


# ----------------------------------------------------------------------------------------------------------------
# Training and evaluation


class Texts:
    """Pre-tokenised captions and class prompts."""

    def __init__(self, tokenizer, data: dict, text_len: int):
        def encode(texts):
            out = tokenizer(texts, padding="max_length", truncation=True, max_length=text_len, return_tensors="pt")
            return out["input_ids"], out["attention_mask"]

        self.train_captions = encode(data["train"]["captions"])
        self.eval_captions = encode(data["eval"]["captions"])
        prompts = [t.format(name) for name in data["class_names"] for t in data["templates"]]
        self.prompts = encode(prompts)  # [C * T], class-major
        self.num_templates = len(data["templates"])


def make_batch(method: str, index: torch.Tensor, data: dict, texts: Texts, generator: torch.Generator) -> dict:
    """Items with an even index are image-label data (a random class prompt, label = class), odd ones image-text
    data (the caption, label -1). The draws do not depend on the method, so every method sees the same texts."""
    train = data["train"]
    is_label_item = index % 2 == 0
    template = torch.randint(0, texts.num_templates, index.shape, generator=generator)
    prompt_row = train["labels"][index] * texts.num_templates + template
    input_ids = torch.where(is_label_item[:, None], texts.prompts[0][prompt_row], texts.train_captions[0][index])
    attention_mask = torch.where(is_label_item[:, None], texts.prompts[1][prompt_row], texts.train_captions[1][index])
    labels = torch.where(is_label_item, train["labels"][index], torch.full_like(index, -1))
    view_generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if method == "uniclip":
        batch["views"], batch["params"] = augmented_views(train["images"][index], 2, view_generator)
    else:
        batch["pixel_values"] = normalise(train["images"][index])
    return batch


@torch.no_grad()
def evaluate(model, data: dict, texts: Texts, batch_size: int = 256) -> dict:
    model.eval()
    images = normalise(data["eval"]["images"])

    def embed_images(x):
        return F.normalize(model.get_image_features(pixel_values=x).pooler_output, dim=-1)

    def embed_texts(ids, mask):
        return F.normalize(model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, dim=-1)

    image_embeds = torch.cat([embed_images(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    ids, mask = texts.eval_captions
    text_embeds = torch.cat(
        [embed_texts(ids[i : i + batch_size], mask[i : i + batch_size]) for i in range(0, len(ids), batch_size)]
    )
    prompt_embeds = embed_texts(*texts.prompts).view(len(data["class_names"]), texts.num_templates, -1)
    classifier = F.normalize(prompt_embeds.mean(dim=1), dim=-1)
    accuracy = ((image_embeds @ classifier.T).argmax(dim=1) == data["eval"]["labels"]).float().mean().item()
    recall = retrieval_recall(image_embeds, text_embeds, data["eval"]["captions"], ks=(1,))
    model.train()
    return {"zero_shot_top1": accuracy, "i2t_R@1": recall["image_to_text_R@1"], "t2i_R@1": recall["text_to_image_R@1"]}


def train_and_evaluate(method: str, seed: int, data: dict, texts: Texts, tokenizer, args) -> dict:
    torch.manual_seed(seed)
    model = build_model(method, tokenizer, args)
    model.set_attn_implementation("sdpa")
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    warmup = max(1, args.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / args.steps))),
    )
    generator = torch.Generator().manual_seed(seed)  # same data order for every method of one seed
    num_train = data["train"]["images"].shape[0]
    order = torch.randperm(num_train, generator=generator)
    position, flops = 0, float("nan")
    start = time.perf_counter()
    for step in range(args.steps):
        if position + args.batch_size > num_train:
            order, position = torch.randperm(num_train, generator=generator), 0
        index = order[position : position + args.batch_size]
        position += args.batch_size
        batch = make_batch(method, index, data, texts, generator)
        if step == 0:
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
            with counter:
                loss = training_loss(method, model, batch)
                loss.backward()
            flops = counter.get_total_flops()
        else:
            loss = training_loss(method, model, batch)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        with torch.no_grad():  # CLIP's clamp of the temperature at 100
            for name, parameter in model.named_parameters():
                if "logit_scale" in name:
                    parameter.clamp_(max=math.log(100))
    seconds = time.perf_counter() - start
    metrics = evaluate(model, data, texts)
    metrics.update(
        seconds=seconds,
        gflops_per_step=flops / 1e9,
        final_loss=loss.item(),
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return metrics


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
    print(f"machine: {describe_machine()}")
    if args.dataset == "shapes":
        data = shapes_data(args.num_train, args.num_eval, args.image_size)
    else:
        data = digits_data(args.num_eval, args.image_size)
    corpus = data["train"]["captions"] + [t.format(c) for c in data["class_names"] for t in data["templates"]]
    tokenizer = train_caption_tokenizer(corpus, vocab_size=400, model_max_length=args.text_len)
    texts = Texts(tokenizer, data, args.text_len)

    results: dict[str, list[dict]] = {}
    for method in args.methods:
        for seed in args.seeds:
            metrics = train_and_evaluate(method, seed, data, texts, tokenizer, args)
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
        f"width {args.width}, {args.layers} layers, seeds {args.seeds}; mean +- std in %"
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
