"""A fair comparison on the shipped trainer: CLIP, UniCL, UniCLIP, MS-CLIP-S, MS-CLIP separate at a matched parameter
count and two composed objectives, on both embedded data sets, over seeds and two budgets; and UniCLIP's ablations.

Every run is one `hf_unified.training.trainer.Trainer` run (`studies.train_run`): the pipeline, augmentation,
optimizer, schedule and evaluation `training/train.py` uses, on the data held in memory. What every method shares:
the data and its order for a seed (UniCL's mix: even training images are image-label items whose text is a prompt
from the training templates, odd ones image-text pairs), the widths (`studies.Sizes`: both towers, or MS-CLIP's one
stack), optimizer steps, batch size, learning rate and schedule, the temperature initialisation (CLIP's), and the
crop distribution (single-view methods crop area `crop_scale_min`-1; UniCLIP's views come from the shipped
`view_preset: auto`, which is `small` at 32 px: crop area 0.85-1, no colour jitter). The objective comes from
`OBJECTIVE_PRESETS` and the architecture from `studies.build_config`; nothing else differs. UniCLIP encodes two views
per image, so a step costs it more: the tables give the FLOPs of one training step.

Methods of the `comparison` study (`METHODS`):

- `clip`: two CLIP towers (UniCLModel), the `clip` objective (equal prompts are negatives);
- `unicl`: the same towers, UniCL's labels (items that share a class are positives);
- `uniclip`: the same towers in UniCLIPModel, the `uniclip` objective with the shipped defaults;
- `ms-clip-s`: MS-CLIP's released layout scaled down (`common.msclip_s_layout`: conv stem, attention + MLP shared
  in blocks 1..L-1, parallel CNN branch), `clip` objective;
- `msclip-separate`: the same code with nothing shared, no stem and no branch, its width chosen so that its
  parameter count matches `ms-clip-s`'s;
- `ms-clip-s+unicl`, `uniclip+unicl`: composed points (MS-CLIP's stack with UniCL's labels; UniCLIP whose views and
  texts of one class are positives);
- `siglip`, `siglip+unicl`: the towers of `clip` with SigLIP's sigmoid loss (one binary term per image-text pair,
  t = 10 and b = -10 at the start), alone and with UniCL's labels (same-class pairs positive).

The `uniclip-ablations` study (`ABLATIONS`) changes one thing of UniCLIP at a time (offsets, views, duplicate masking,
MP-NCE vs SupCon, the augmentation-aware head, intra-domain pairs), next to `clip` and `uniclip`.

Metrics at every evaluation, on the held-out split: zero-shot top-1 with prompts no training text contains
(`studies.SHAPES_UNSEEN_TEMPLATES` / `DIGIT_UNSEEN_TEMPLATES`) and with the training prompts; on shapes, zero-shot over
the 36 (colour, shape) classes for the images of the six pairs no training image shows (held-out classes, chance
2.8%); a linear probe (logistic regression) on the frozen image embeddings of the training images; image->text and
text->image R@1. Tables: mean +- std over seeds, and the same-seed difference to CLIP in points with its 95%
interval (Student's t). Budgets: each run is `--steps` long and evaluated every `--eval-steps`; the tables report
`--budgets` (the last is the whole run); a shorter budget is the run at that step of its cosine schedule (the
learning rate not yet annealed), the same for every method. The figures plot every evaluation.

Usage:

    python benchmarks/comparison.py --preset reduced          # under 15 min on 2 cores: tables and figures
    python benchmarks/comparison.py --preset full             # the README tables (about an hour on 2 cores)
    python benchmarks/comparison.py --study uniclip-ablations --preset reduced
    python benchmarks/comparison.py --from-results outputs/comparison/comparison-full.json   # no training
    python benchmarks/comparison.py --smoke

Runs are spread over `--jobs` processes (one torch thread each); the raw results go to `--output` (JSON), the
figures to `--figures` (PNG, matplotlib).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import multiprocessing
import os
import time
from functools import lru_cache
from pathlib import Path

import common
import studies
from common import markdown_table, percent_difference, percent_spread, spread
from studies import Sizes

FIGURES = Path(__file__).resolve().parent / "figures"


@dataclasses.dataclass
class Method:
    """A point of the study: an architecture of `studies.ARCHITECTURES` with a named objective.

    Args:
        config: config fields on top of the objective preset.
        data: `DataArguments` fields of its runs (the view recipe of a method that trains on views, ...).
        train: `TrainArguments` fields of its runs.
        match_parameters_of: another method whose parameter count this one matches, by width.
    """

    architecture: str
    objective: str
    config: dict = dataclasses.field(default_factory=dict)
    data: dict = dataclasses.field(default_factory=dict)
    train: dict = dataclasses.field(default_factory=dict)
    match_parameters_of: str | None = None


METHODS = {
    "clip": Method("towers", "clip"),
    "unicl": Method("towers", "unicl"),
    "uniclip": Method("towers", "uniclip"),
    "ms-clip-s": Method("ms-clip-s", "clip"),
    "msclip-separate": Method("msclip-separate", "clip", match_parameters_of="ms-clip-s"),
    "ms-clip-s+unicl": Method("ms-clip-s", "unicl"),
    "uniclip+unicl": Method("towers", "uniclip+unicl"),
    # SigLIP's sigmoid loss as a point of the same objective (t = 10, b = -10 at the start), alone and with labels.
    "siglip": Method("towers", "siglip"),
    "siglip+unicl": Method("towers", "siglip+unicl"),
}
ABLATIONS = {
    "clip": METHODS["clip"],
    "uniclip": METHODS["uniclip"],
    # The review's offsets: near the mean cosines of different items at initialisation.
    "uniclip, offsets 0.9/0/0.75": Method("towers", "uniclip", config={"logit_offset_init_value": [0.9, 0.0, 0.75]}),
    "uniclip, simclr views": Method("towers", "uniclip", data={"augmentation_kwargs": {"preset": "simclr"}}),
    "uniclip, duplicates not masked": Method("towers", "uniclip", config={"mask_duplicate_texts": False}),
    "uniclip, SupCon": Method("towers", "uniclip", config={"contrastive_loss": "supcon"}),
    "uniclip, no augmentation-aware head": Method("towers", "uniclip", config={"augmentation_aware": False}),
    "uniclip, image-text pairs only": Method("towers", "uniclip", config={"intra_domain_pairs": False}),
    # The heads' initialisation: UniCL's std 0.02 (the package default) against CLIPModel's width ** -0.5 (0.125 at
    # the study's width 64), for both objectives.
    "clip, projections std 0.125": Method("towers", "clip", config={"initializer_range": 0.125}),
    "uniclip, projections std 0.125": Method("towers", "uniclip", config={"initializer_range": 0.125}),
    "uniclip, offsets 0.9/0/0.75, projections std 0.125": Method(
        "towers", "uniclip", config={"logit_offset_init_value": [0.9, 0.0, 0.75], "initializer_range": 0.125}
    ),
}
STUDIES = {"comparison": METHODS, "uniclip-ablations": ABLATIONS}
REFERENCE = "clip"  # the same-seed differences are taken against it

# name -> settings; the command line overrides any of them.
_STUDY_SIZES = dict(batch_size=64, num_train=1400, num_eval=400, width=64, layers=4, jobs=2)
PRESETS = {
    "smoke": dict(
        seeds=[0, 1],
        steps=4,
        eval_steps=2,
        budgets=[2, 4],
        batch_size=8,
        num_train=48,
        num_eval=24,
        width=32,
        layers=2,
        jobs=1,
    ),  # fmt: skip
    "reduced": dict(seeds=[0, 1, 2], steps=120, eval_steps=30, budgets=[60, 120], **_STUDY_SIZES),
    "full": dict(seeds=[0, 1, 2, 3, 4], steps=600, eval_steps=100, budgets=[200, 600], **_STUDY_SIZES),
}
# metric key -> (column title, figure title)
METRICS = {
    "zero_shot_top1_accuracy": ("zero-shot, unseen prompts", "zero-shot top-1 (prompts not seen in training)"),
    "zero_shot_seen_prompts_top1": ("zero-shot, training prompts", "zero-shot top-1 (training prompts)"),
    "held_out_classes_top1": ("held-out classes (36-way)", "zero-shot top-1, held-out (colour, shape) classes"),
    "linear_probe_top1": ("linear probe", "linear probe top-1 (frozen image embeddings)"),
    "image_to_text_R@1": ("image->text R@1", "image->text R@1"),
    "text_to_image_R@1": ("text->image R@1", "text->image R@1"),
}
PLOTTED = ("zero_shot_top1_accuracy", "held_out_classes_top1", "linear_probe_top1", "image_to_text_R@1")


# ----------------------------------------------------------------------------------------------------------------
# Runs


@lru_cache(maxsize=2)
def study_data(dataset: str, num_train: int, num_eval: int, image_size: int, text_len: int):
    """The data set and its caption tokenizer (deterministic: every worker process builds the same)."""
    if dataset == "shapes":
        data = studies.shapes_data(num_train, num_eval, image_size)
    else:
        data = studies.digits_data(num_eval, image_size, num_train=min(num_train, 1797 - num_eval))
    return data, studies.caption_tokenizer(data, text_len)


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run: a method on a data set with a seed."""

    dataset: str
    method_name: str
    method: Method
    sizes: Sizes
    seed: int
    settings: studies.RunSettings
    num_train: int
    num_eval: int


def run_job(job: Job, threads: int = 1) -> dict:
    """Trains and evaluates one job; returns its `RunResult` as a dict with the job's names and the learnt
    similarity parameters."""
    import torch
    from accelerate.utils import set_seed

    from hf_unified.training.logs import quiet_progress_bars

    torch.set_num_threads(threads)
    quiet_progress_bars()
    data, tokenizer = study_data(job.dataset, job.num_train, job.num_eval, job.sizes.image_size, job.sizes.text_len)
    set_seed(job.seed)
    model = studies.build_model(
        job.method.architecture, job.method.objective, tokenizer, job.sizes, **job.method.config
    )
    settings = dataclasses.replace(job.settings, data_overrides=job.method.data, train_overrides=job.method.train)
    result = studies.train_run(
        model, tokenizer, data, settings, job.seed, studies.study_accelerator("outputs/comparison")
    )
    similarity = {
        name: getattr(model, name).detach().reshape(-1).tolist()
        for name in ("logit_scale", "logit_offset")
        if getattr(model, name, None) is not None
    }
    return {
        "dataset": job.dataset,
        "method": job.method_name,
        "seed": job.seed,
        "width": job.sizes.width,
        "similarity": similarity,
        **result.to_dict(),
    }


def resolve_sizes(methods: dict[str, Method], dataset: str, sizes: Sizes, num_train: int, num_eval: int) -> dict:
    """Each method's sizes: the study's, or the width that matches another method's parameter count."""
    import torch

    from hf_unified.training.methods import model_class

    data, tokenizer = study_data(dataset, num_train, num_eval, sizes.image_size, sizes.text_len)
    resolved = {}
    for name, method in methods.items():
        if method.match_parameters_of is None:
            resolved[name] = sizes
            continue
        target = methods[method.match_parameters_of]
        config = studies.build_config(target.architecture, target.objective, tokenizer, sizes)
        with torch.device("meta"):
            count = studies.parameter_count(model_class(config)(config))
        width = studies.matched_width(method.architecture, count, tokenizer, sizes)
        resolved[name] = dataclasses.replace(sizes, width=width)
    return resolved


def run_jobs(worker, jobs: list, processes: int, threads: int) -> list[dict]:
    """`worker(job, threads)` for every job, in `processes` worker processes (spawned: each imports its own torch)
    or in this one; prints each result's final metrics as it comes."""
    results = []

    def report(result: dict) -> None:
        final = result["history"][-1]
        print(
            f"  {result['dataset']} {result['method']} seed {result['seed']}: zero-shot "
            f"{final['zero_shot_top1_accuracy']:.3f}, probe {final['linear_probe_top1']:.3f}, i2t R@1 "
            f"{final['image_to_text_R@1']:.3f} ({result['seconds']:.0f} s)",
            flush=True,
        )
        results.append(result)

    if processes <= 1:
        for job in jobs:
            report(worker(job, threads))
        return results
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        futures = [pool.submit(worker, job, threads) for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            report(future.result())
    return results


# ----------------------------------------------------------------------------------------------------------------
# Tables and figures


def _runs_by_method(results: dict, dataset: str) -> dict[str, list[dict]]:
    """The runs of one data set, per method in study order, each method's runs sorted by seed."""
    runs: dict[str, list[dict]] = {}
    for run in sorted(results["runs"], key=lambda r: r["seed"]):
        if run["dataset"] == dataset:
            runs.setdefault(run["method"], []).append(run)
    return {name: runs[name] for name in results["methods"] if name in runs}


def _metric(runs: list[dict], step: int, key: str) -> list[float]:
    values = []
    for run in runs:
        record = next(r for r in run["history"] if r["step"] == step)
        values.append(record[key])
    return values


def tables(results: dict) -> str:
    """The markdown tables of a study: per data set and budget, mean +- std and the same-seed difference to CLIP."""
    settings = results["settings"]
    blocks = []
    for dataset in results["datasets"]:
        by_method = _runs_by_method(results, dataset)
        keys = [k for k in METRICS if all(k in r["history"][-1] for runs in by_method.values() for r in runs)]
        reference = by_method.get(results["reference"])
        seeds = sorted({r["seed"] for runs in by_method.values() for r in runs})
        for step in settings["budgets"]:
            title = (
                f"**{results['study']} on {dataset}, step {step} of {settings['steps']} (batch "
                f"{settings['batch_size']}, seeds {seeds}): mean +- std in %**"
            )
            rows = []
            for name, runs in by_method.items():
                seconds = spread([r["seconds"] for r in runs])[0]
                rows.append(
                    [name, f"{runs[0]['params'] / 1e6:.3f}", f"{runs[0]['gflops_per_step']:.2f}", f"{seconds:.0f}"]
                    + [percent_spread(_metric(runs, step, key)) for key in keys]
                )
            header = ["method", "params (M)", "train GFLOPs/step", "s/run"] + [METRICS[k][0] for k in keys]
            blocks.append(title + "\n\n" + markdown_table(header, rows))
            if reference is None:
                continue
            rows = []
            for name, runs in by_method.items():
                if name == results["reference"]:
                    continue
                paired = [r for r in runs if r["seed"] in {ref["seed"] for ref in reference}]
                base = [ref for ref in reference if ref["seed"] in {r["seed"] for r in paired}]
                rows.append(
                    [name] + [percent_difference(_metric(paired, step, k), _metric(base, step, k)) for k in keys]
                )
            blocks.append(
                f"*same-seed difference to {results['reference']} at step {step}, points [95% interval]*\n\n"
                + markdown_table(["method"] + [METRICS[k][0] for k in keys], rows)
            )
    return "\n\n".join(blocks)


def similarity_table(results: dict) -> str:
    """The learnt similarity parameters of the methods that have offsets (mean over seeds): one per domain pair
    (image-image / image-text / text-text) or one shared (SigLIP's, whose bias is -exp(log-scale) * offset)."""
    rows = []
    for dataset in results["datasets"]:
        for name, runs in _runs_by_method(results, dataset).items():
            if "logit_offset" not in runs[0]["similarity"]:
                continue
            values = {
                key: [
                    spread([r["similarity"][key][i] for r in runs])[0] for i in range(len(runs[0]["similarity"][key]))
                ]
                for key in ("logit_offset", "logit_scale")
            }
            rows.append(
                [
                    dataset,
                    name,
                    " / ".join(f"{v:.3f}" for v in values["logit_offset"]),
                    " / ".join(f"{v:.2f}" for v in values["logit_scale"]),
                ]
            )
    if not rows:
        return ""
    header = ["data", "method", "final offsets (image-image / image-text / text-text, or one)", "final log-scales"]
    return "*learnt domain-pair similarity at the end of the run (mean over seeds)*\n\n" + markdown_table(header, rows)


def plot(results: dict, folder: Path) -> list[Path]:
    """Accuracy-vs-steps figures, one PNG per data set: mean over seeds, the band one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for dataset in results["datasets"]:
        by_method = _runs_by_method(results, dataset)
        keys = [k for k in PLOTTED if all(k in r["history"][-1] for runs in by_method.values() for r in runs)]
        columns = min(2, len(keys))
        rows = math.ceil(len(keys) / columns)
        figure, axes = plt.subplots(
            rows, columns, figsize=(4.6 * columns + 1.8, 3.4 * rows), squeeze=False, layout="constrained"
        )
        for axis, key in zip(axes.flat, keys):
            for name, runs in by_method.items():
                steps = [record["step"] for record in runs[0]["history"]]
                values = [[100 * v for v in _metric(runs, step, key)] for step in steps]
                mean = [spread(v)[0] for v in values]
                std = [spread(v)[1] for v in values]
                (line,) = axis.plot(steps, mean, marker="o", markersize=2.5, linewidth=1.3, label=name)
                axis.fill_between(
                    steps,
                    [m - s for m, s in zip(mean, std)],
                    [m + s for m, s in zip(mean, std)],
                    color=line.get_color(),
                    alpha=0.12,
                    linewidth=0,
                )
            axis.set_title(METRICS[key][1], fontsize=9)
            axis.set_xlabel("optimizer step")
            axis.set_ylabel("%")
            axis.grid(alpha=0.3)
        for axis in list(axes.flat)[len(keys) :]:
            axis.set_visible(False)
        seeds = len({r["seed"] for runs in by_method.values() for r in runs})
        figure.suptitle(f"{results['study']} on {dataset}: mean over {seeds} seeds, band = 1 std", fontsize=10)
        figure.legend(*axes[0][0].get_legend_handles_labels(), loc="outside right upper", fontsize=8)
        path = folder / f"{results['study']}_{dataset}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def report(results: dict, figures: Path | None) -> str:
    """Prints (and returns) the tables; writes the figures."""
    text = f"machine: {results['machine']}\n\n" + tables(results)
    similarity = similarity_table(results)
    if similarity:
        text += "\n\n" + similarity
    print(text)
    if figures is not None:
        for path in plot(results, figures):
            print(f"figure: {path}")
    return text


def write_json(path: Path, payload: dict) -> None:
    """Written beside the target and renamed into place: an interrupted run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial_path = path.with_suffix(path.suffix + ".partial")
    partial_path.write_text(json.dumps(payload, indent=1))
    os.replace(partial_path, path)


# ----------------------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", choices=sorted(STUDIES), default="comparison")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="reduced")
    parser.add_argument("--smoke", action="store_true", help="the smoke preset (seconds)")
    parser.add_argument("--datasets", nargs="+", choices=["shapes", "digits"], default=["shapes", "digits"])
    parser.add_argument("--methods", nargs="+", help="a subset of the study's methods (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--steps", type=int, help="optimizer steps of every run")
    parser.add_argument("--eval-steps", type=int, help="evaluate every this many steps")
    parser.add_argument("--budgets", type=int, nargs="+", help="steps the tables report (evaluated steps)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--crop-scale-min", type=float, default=0.85, help="single-view crop area (views: 0.85-1)")
    parser.add_argument("--num-train", type=int, help="training images (digits: at most all but the evaluation)")
    parser.add_argument("--num-eval", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--jobs", type=int, help="worker processes (one run each at a time)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--output", type=Path, help="raw results (JSON); default outputs/comparison/STUDY-PRESET.json")
    parser.add_argument("--figures", type=Path, default=FIGURES, help="where the PNG figures go")
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("--from-results", type=Path, help="print the tables and draw the figures of a JSON, no runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset = "smoke"
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    methods = STUDIES[args.study]
    unknown = sorted(set(args.methods or ()) - set(methods))
    if unknown:
        parser.error(f"--methods {unknown} are not in the {args.study} study; choose from {list(methods)}")
    args.methods = args.methods or list(methods)
    if REFERENCE not in args.methods:
        args.methods.insert(0, REFERENCE)  # the differences are taken against it
    for name in list(args.methods):
        anchor = methods[name].match_parameters_of
        if anchor and anchor not in args.methods:
            args.methods.insert(args.methods.index(name), anchor)  # the method it matches is needed to size it
    if not set(args.budgets) <= set(range(args.eval_steps, args.steps + 1, args.eval_steps)) | {args.steps}:
        parser.error(f"--budgets {args.budgets} must be evaluated steps: multiples of --eval-steps up to --steps")
    if args.output is None:
        args.output = Path("outputs/comparison") / f"{args.study}-{args.preset}.json"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    figures = None if args.no_figures else args.figures
    if args.from_results:
        results = json.loads(args.from_results.read_text())
        report(results, figures)
        return results

    import torch

    torch.set_num_threads(args.threads)
    sizes = Sizes(width=args.width, layers=args.layers)
    settings = studies.RunSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        eval_steps=args.eval_steps,
        crop_scale_min=args.crop_scale_min,
    )
    study = {name: STUDIES[args.study][name] for name in args.methods}
    jobs = []
    for dataset in args.datasets:
        method_sizes = resolve_sizes(study, dataset, sizes, args.num_train, args.num_eval)
        for name, method in study.items():
            jobs += [
                Job(dataset, name, method, method_sizes[name], seed, settings, args.num_train, args.num_eval)
                for seed in args.seeds
            ]
    print(
        f"{args.study} ({args.preset}): {len(jobs)} runs of {args.steps} steps in {args.jobs} process(es), "
        f"{args.threads} torch thread(s) each",
        flush=True,
    )
    start = time.perf_counter()
    runs = run_jobs(run_job, jobs, args.jobs, args.threads)
    results = {
        "study": args.study,
        "preset": args.preset,
        "machine": common.describe_machine(),
        "datasets": args.datasets,
        "methods": list(study),
        "reference": REFERENCE,
        "wall_seconds": time.perf_counter() - start,
        "settings": {
            **dataclasses.asdict(settings),
            "budgets": args.budgets,
            "sizes": dataclasses.asdict(sizes),
            "seeds": args.seeds,
            "processes": args.jobs,
        },
        "runs": runs,
    }
    write_json(args.output, results)
    print(f"\n{len(runs)} runs in {results['wall_seconds'] / 60:.1f} min; raw results: {args.output}\n")
    report(results, figures)
    return results


if __name__ == "__main__":
    main()
