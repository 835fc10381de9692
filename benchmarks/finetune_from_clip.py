"""Fine-tuning a CLIP checkpoint with UniCL's labels or UniCLIP's views, against continuing with CLIP's objective.

Issue 15, item 5, on the embedded shapes data, through the shipped `Trainer` (`studies.train_run`):

1. Per seed, a tiny CLIP is pre-trained from scratch with the `clip` objective (UniCLModel, two CLIP towers) on the
   captions alone (image-text pairs, as web data comes) for `--pretrain-steps`, and exported by the trainer
   (`TrainArguments.export_clip`, i.e. `hf_unified.hub.export.export_clip`) as a plain transformers `CLIPModel`
   folder: the checkpoint a user would download.
2. From that folder, `--finetune-steps` more on UniCL's mix (even training images labelled: their text is a class
   prompt; odd ones captioned), the same data order, steps, learning rate and schedule for each of:
   - `continue clip`: `UniCLModel.from_clip(folder, **OBJECTIVE_PRESETS["clip"])`, the objective it was trained with;
   - `unicl labels`: `UniCLModel.from_clip(folder, **OBJECTIVE_PRESETS["unicl"])`;
   - `uniclip views`: `UniCLIPModel.from_clip(folder, **OBJECTIVE_PRESETS["uniclip"])` (shipped view and offset
     defaults);
   - `uniclip views + unicl labels`: `UniCLIPModel.from_clip(folder, **OBJECTIVE_PRESETS["uniclip+unicl"])`.
   `from_clip` starts each one as the CLIP model's exact function (at identity augmentation), so the `start` row (the
   pre-trained model's own evaluation) is where all four begin.

The tokenizer is CLIP's byte-level BPE (49408 ids, from the vocabulary file open_clip ships), as a CLIP checkpoint
brings it: the caption BPE the other studies train gives `<|endoftext|>` the id 2, which transformers' CLIPTextModel
reads as its legacy "pool at the largest id" flag, so such a model is refused by the CLIP export.

Metrics (held-out split, `studies.StudyEvaluation`): zero-shot with unseen prompts and with the training prompts,
the 36 held-out (colour, shape) classes, a linear probe on the frozen image embeddings, retrieval; mean +- std over
seeds and the same-seed difference to `continue clip` with its 95% interval.

Usage:

    python benchmarks/finetune_from_clip.py              # 3 seeds (about 10 min on 2 cores)
    python benchmarks/finetune_from_clip.py --smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from functools import lru_cache
from pathlib import Path

import common
import studies
from common import markdown_table, percent_difference, percent_spread
from comparison import run_jobs, write_json
from studies import Sizes

# row name -> objective preset of the fine-tuning run
FINETUNE_OBJECTIVES = {
    "continue clip": "clip",
    "unicl labels": "unicl",
    "uniclip views": "uniclip",
    "uniclip views + unicl labels": "uniclip+unicl",
}
REFERENCE = "continue clip"
START = "start (pre-trained CLIP)"
METRICS = {
    "zero_shot_top1_accuracy": "zero-shot, unseen prompts",
    "zero_shot_seen_prompts_top1": "zero-shot, training prompts",
    "held_out_classes_top1": "held-out classes (36-way)",
    "linear_probe_top1": "linear probe",
    "image_to_text_R@1": "image->text R@1",
    "text_to_image_R@1": "text->image R@1",
}


@lru_cache(maxsize=1)
def study_data(num_train: int, num_eval: int, image_size: int, text_len: int):
    """The shapes data and CLIP's tokenizer, truncating at the text tower's positions."""
    from hf_unified.tokenization import clip_tokenizer_from_bpe_gz

    return studies.shapes_data(num_train, num_eval, image_size), clip_tokenizer_from_bpe_gz(model_max_length=text_len)


@dataclasses.dataclass(frozen=True)
class Job:
    """A pre-training run (`objective` None: writes the CLIP folder) or a fine-tuning run from it."""

    seed: int
    clip_folder: str
    settings: studies.RunSettings
    sizes: Sizes
    num_train: int
    num_eval: int
    name: str = START
    objective: str | None = None


def run_job(job: Job, threads: int = 1) -> dict:
    """Pre-trains and exports, or fine-tunes from the export; returns the run as a dict."""
    import torch
    from accelerate.utils import set_seed

    from hf_unified.training.logs import quiet_progress_bars

    torch.set_num_threads(threads)
    quiet_progress_bars()
    data, tokenizer = study_data(job.num_train, job.num_eval, job.sizes.image_size, job.sizes.text_len)
    set_seed(job.seed)
    accelerator = studies.study_accelerator("outputs/finetune_from_clip")
    if job.objective is None:
        model = studies.build_model("towers", "clip", tokenizer, job.sizes)
        run = studies.train_run(
            model, tokenizer, data, job.settings, job.seed, accelerator, export_clip=job.clip_folder
        )
    else:
        from hf_unified.configuration_contrastive import OBJECTIVE_PRESETS
        from hf_unified.training.methods import model_class

        model = model_class(studies.tower_model_type(job.objective)).from_clip(
            job.clip_folder, **OBJECTIVE_PRESETS[job.objective]
        )
        model.set_attn_implementation("sdpa")
        run = studies.train_run(
            model, tokenizer, data, job.settings, job.seed, accelerator, clip_folder=job.clip_folder
        )
    return {"dataset": "shapes", "method": job.name, "seed": job.seed, **run.to_dict()}


def table(runs: list[dict]) -> str:
    """Each row's final evaluation: mean +- std, and the same-seed difference to `continue clip`."""
    by_name: dict[str, list[dict]] = {}
    for run in sorted(runs, key=lambda r: r["seed"]):
        by_name.setdefault(run["method"], []).append(run)
    finals = {name: [r["history"][-1] for r in group] for name, group in by_name.items()}
    reference = finals[REFERENCE]
    rows = []
    for name in [START, *FINETUNE_OBJECTIVES]:
        if name not in finals:
            continue
        cells = [percent_spread([f[key] for f in finals[name]]) for key in METRICS]
        difference = [
            ""
            if name == REFERENCE
            else percent_difference([f[key] for f in finals[name]], [f[key] for f in reference])
            for key in ("zero_shot_top1_accuracy", "linear_probe_top1")
        ]
        rows.append([name, *cells, *difference])
    header = ["run", *METRICS.values(), "zero-shot vs continue clip", "probe vs continue clip"]
    return markdown_table(header, rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2 (smoke: 0 1)")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--finetune-lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-train", type=int, default=1400)
    parser.add_argument("--num-eval", type=int, default=400)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--crop-scale-min", type=float, default=0.85, help="single-view crop area (views: 0.85-1)")
    parser.add_argument(
        "--objectives", nargs="+", choices=list(FINETUNE_OBJECTIVES), default=list(FINETUNE_OBJECTIVES)
    )
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--output", type=Path, default=Path("outputs/finetune_from_clip"))
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if REFERENCE not in args.objectives:
        args.objectives.insert(0, REFERENCE)  # the differences are taken against it
    if args.seeds is None:
        args.seeds = [0, 1] if args.smoke else [0, 1, 2]
    if args.smoke:
        args.pretrain_steps, args.finetune_steps, args.batch_size = 4, 2, 8
        args.num_train, args.num_eval, args.width, args.layers, args.jobs = 48, 24, 32, 1, 1
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    sizes = Sizes(width=args.width, layers=args.layers)
    shared = dict(batch_size=args.batch_size, crop_scale_min=args.crop_scale_min)
    pretrain = studies.RunSettings(
        steps=args.pretrain_steps, learning_rate=args.pretrain_lr, label_items=False, **shared
    )
    finetune = studies.RunSettings(steps=args.finetune_steps, learning_rate=args.finetune_lr, **shared)
    folders = {seed: str((args.output / f"clip-seed{seed}").resolve()) for seed in args.seeds}
    start = time.perf_counter()
    print(f"pre-training {len(args.seeds)} tiny CLIPs ({args.pretrain_steps} steps, captions only)", flush=True)
    common_fields = dict(sizes=sizes, num_train=args.num_train, num_eval=args.num_eval)
    runs = run_jobs(
        run_job, [Job(seed, folders[seed], pretrain, **common_fields) for seed in args.seeds], args.jobs, args.threads
    )
    print(f"fine-tuning each for {args.finetune_steps} steps on UniCL's mix", flush=True)
    jobs = [
        Job(seed, folders[seed], finetune, **common_fields, name=name, objective=FINETUNE_OBJECTIVES[name])
        for name in args.objectives
        for seed in args.seeds
    ]
    runs += run_jobs(run_job, jobs, args.jobs, args.threads)
    results = {
        "study": "finetune-from-clip",
        "machine": common.describe_machine(),
        "wall_seconds": time.perf_counter() - start,
        "settings": {
            "pretrain": dataclasses.asdict(pretrain),
            "finetune": dataclasses.asdict(finetune),
            "sizes": dataclasses.asdict(sizes),
            "seeds": args.seeds,
        },
        "runs": runs,
    }
    write_json(args.output / "results.json", results)
    print(
        f"\n### fine-tuning a pre-trained tiny CLIP on shapes ({args.pretrain_steps} pre-training steps on captions, "
        f"then {args.finetune_steps} steps at lr {args.finetune_lr:g} on UniCL's mix; width {args.width}, "
        f"{args.layers} layers, seeds {args.seeds}, shipped trainer; {results['wall_seconds'] / 60:.1f} min): "
        f"mean +- std in %, differences in points [95% interval]\n"
    )
    print(f"machine: {results['machine']}\n")
    print(table(runs))
    return results


if __name__ == "__main__":
    main()
