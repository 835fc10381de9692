"""Small-scale replication: CLIP vs UniCL vs UniCLIP vs MS-CLIP (shared vs separate), trained by the shipped trainer.

The package defaults at the reviewer's setting (3 seeds, 120 steps, the training prompts for zero-shot);
`benchmarks/comparison.py` is the fuller study (more methods, 5 seeds, unseen prompts, held-out classes, linear
probe, paired differences, curves). Every run goes through `hf_unified.training.trainer.Trainer` on in-memory data
(`studies.train_run`), the loop `training/train.py` runs.

Data: the embedded procedural "shapes" set (`hf_unified.training.data.synthetic_data`: 6 shape classes, colour / size /
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
import dataclasses

import studies
import torch
from accelerate.utils import set_seed
from common import describe_machine, markdown_table, percent_spread, spread
from studies import Sizes

METHODS = ("clip", "unicl", "uniclip", "msclip-shared", "msclip-separate")
# method -> (architecture, objective) of `studies.build_model`
RECIPES = {
    "clip": ("towers", "clip"),
    "unicl": ("towers", "unicl"),
    "uniclip": ("towers", "uniclip"),
    "msclip-shared": ("msclip-shared", "clip"),
    "msclip-separate": ("msclip-separate", "clip"),
}
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
    from hf_unified.training.logs import quiet_progress_bars

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_progress_bars()
    print(f"machine: {describe_machine()}")
    if args.dataset == "shapes":
        data = studies.shapes_data(args.num_train, args.num_eval, args.image_size)
    else:
        data = studies.digits_data(args.num_eval, args.image_size)
    data = dataclasses.replace(data, eval_templates=data.train_templates)  # zero-shot with the training prompts
    tokenizer = studies.caption_tokenizer(data, args.text_len)
    sizes = Sizes(args.width, args.layers, args.patch_size, args.projection_dim, args.image_size, args.text_len)
    settings = studies.RunSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        crop_scale_min=1.0,  # single-view methods train on the images as they are
        data_overrides={"augmentation_kwargs": dict(VIEW_AUGMENTATION)},
        num_workers=args.num_workers,
    )
    accelerator = studies.study_accelerator("outputs/replication")

    results: dict[str, list[dict]] = {}
    for method in args.methods:
        for seed in args.seeds:
            set_seed(seed)
            model = studies.build_model(*RECIPES[method], tokenizer, sizes)
            run = studies.train_run(model, tokenizer, data, settings, seed, accelerator)
            final = run.history[-1]
            metrics = {
                "zero_shot_top1": final["zero_shot_top1_accuracy"],
                "i2t_R@1": final["image_to_text_R@1"],
                "t2i_R@1": final["text_to_image_R@1"],
                "linear_probe_top1": final["linear_probe_top1"],
                "seconds": run.seconds,
                "gflops_per_step": run.gflops_per_step,
                "final_loss": run.losses[-1][1],
                "params_m": run.params / 1e6,
            }
            results.setdefault(method, []).append(metrics)
            print(
                f"  {method} seed {seed}: zero-shot {metrics['zero_shot_top1']:.3f}, i2t R@1 "
                f"{metrics['i2t_R@1']:.3f}, t2i R@1 {metrics['t2i_R@1']:.3f} ({metrics['seconds']:.0f} s)",
                flush=True,
            )

    rows = []
    for method, runs in results.items():
        rows.append(
            [
                method,
                f"{runs[0]['params_m']:.2f}",
                f"{runs[0]['gflops_per_step']:.2f}",
                percent_spread([r["zero_shot_top1"] for r in runs]),
                percent_spread([r["linear_probe_top1"] for r in runs]),
                percent_spread([r["i2t_R@1"] for r in runs]),
                percent_spread([r["t2i_R@1"] for r in runs]),
                f"{spread([r['final_loss'] for r in runs])[0]:.3f}",
            ]
        )
    chance = 100 / len(data.class_names)
    print(
        f"\n### replication on {args.dataset} ({len(data.train.images)} train, {len(data.eval.images)} eval; "
        f"zero-shot chance {chance:.1f}%): {args.steps} steps x batch {args.batch_size}, width {args.width}, "
        f"{args.layers} layers, seeds {args.seeds}, shipped trainer; mean +- std in %"
    )
    print(
        markdown_table(
            [
                "method",
                "params (M)",
                "train GFLOPs/step",
                "zero-shot top-1",
                "linear probe top-1",
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
