"""A fair comparison on the shipped trainer: CLIP, UniCL, UniCLIP, MS-CLIP-S, MS-CLIP with sharing alone and with
nothing shared (both at MS-CLIP-S's parameter count), CLIP with patch dropout at CLIP's wall time and CLIP at the
costlier methods' FLOPs, on both embedded data sets, over seeds and two budgets; the composed points; UniCLIP's
ablations; and the choices behind UniCLIP's defaults, made on validation splits.

Protocol. Each data set has a training split, a validation split and a test split, disjoint (`studies.shapes_data`,
`studies.digits_data`: shapes draws its validation images from a stream of their own, digits takes 300 of its 1,797
scans out of the training pool). Every choice a study makes (the `uniclip-choices` study: UniCLIP's views, the
offsets' learning rate and calibration, the MLP head) is read on `--split validation`; the tables report `--split
test` (the default), which no choice looked at.

Every run is one `hf_unified.training.trainer.Trainer` run (`studies.train_run`): the pipeline, augmentation,
optimizer, schedule and evaluation `training/train.py` uses, on the data held in memory. What every method shares:
the data and its order for a seed (UniCL's mix: even training images are image-label items whose text is a prompt
from the training templates, odd ones image-text pairs), the widths (`studies.Sizes`: both towers, or MS-CLIP's one
stack), optimizer steps, batch size, learning rate and schedule, the single-view crop distribution (area
`crop_scale_min`-1). The objective comes from `OBJECTIVE_PRESETS` with its own temperature start (CLIP's 0.07 unless
the preset names one: UniCLIP's 0.1 for image-image, SigLIP's t = 10) and the architecture from
`studies.build_config`; UniCLIP's views are the shipped `view_preset: auto`. Nothing else differs. UniCLIP encodes
two views per image and MS-CLIP-S has a conv branch, so a step costs them more: the tables give the FLOPs and the
time of one training step, and an equal-compute reading (below).

Studies (`STUDIES`):

- `comparison` (`METHODS`): `clip` (two CLIP towers in UniCLModel, equal prompts are negatives); `unicl` (the same
  towers, items that share a class are positives); `uniclip` (the same towers in UniCLIPModel, the shipped
  defaults); `ms-clip-s` (MS-CLIP's released layout scaled down, `common.msclip_s_layout`: conv stem, attention + MLP
  shared in blocks 1..L-1, parallel CNN branch); `msclip-shared` (the stack shared in every block, no stem, no
  branch) and `msclip-separate` (nothing shared, no stem, no branch), each at `ms-clip-s`'s parameter count, which
  separate the sharing from the stem and branch; `clip+patch-dropout` (FLIP: half the image patches dropped in
  training) given CLIP's wall time per run, measured on this machine before the runs; `clip@uniclip-flops` and
  `clip@ms-clip-s-flops`, CLIP given the training FLOPs of UniCLIP's and MS-CLIP-S's runs (`COMPUTE_MATCHED`).
- `composed` (`COMPOSED`): MS-CLIP's stack with UniCL's labels, UniCLIP whose views and texts of one class are
  positives, SigLIP's sigmoid loss alone and with labels.
- `uniclip-ablations` (`ABLATIONS`): one thing of UniCLIP changed at a time (offsets, views, duplicate masking, MP-NCE
  vs SupCon, the augmentation-aware head, image-image and text-text pairs each removed alone and together).
- `uniclip-choices` (`CHOICES`, validation only): the candidates for UniCLIP's defaults.

A method with a `budget_of` gets another method's budget: its run is that many times longer (FLOPs or seconds per
step of the two, measured by short runs), with its own whole schedule and as many evaluations, read at the steps
that match the study's budgets. The equal-compute table gives, for each costlier method, its same-seed difference to
the CLIP run given its FLOPs.

Metrics at every evaluation, on the evaluation split: zero-shot top-1 with prompts no training text contains
(`studies.SHAPES_UNSEEN_TEMPLATES` / `DIGIT_UNSEEN_TEMPLATES`) and with the training prompts; on shapes, zero-shot over
the 36 (colour, shape) classes for the images of the six pairs no training image shows (held-out classes, chance
2.8%); a linear probe (logistic regression) on the frozen image embeddings of the training images; image->text and
text->image R@1. Tables: mean +- std over seeds, and the same-seed difference to CLIP in points with its 95%
interval (Student's t; each table says how many intervals it holds, none corrected for multiple comparisons).
Budgets: each run is `--steps` long and evaluated every `--eval-steps`; the tables report `--budgets` (the last is
the whole run); a shorter budget is the run at that step of its cosine schedule (the learning rate not yet
annealed), the same for every method. The runs also record the training loss by domain pair (image-image /
image-text / text-text) and the learnt similarity. The figures plot every evaluation.

Usage:

    python benchmarks/comparison.py --preset reduced          # about 15 min on 2 cores: tables and figures
    python benchmarks/comparison.py --preset full             # the README tables (about an hour on 2 cores)
    python benchmarks/comparison.py --study uniclip-choices --preset full --seeds 0 1 2   # on validation
    python benchmarks/comparison.py --study uniclip-ablations --preset reduced
    python benchmarks/comparison.py --from-results outputs/comparison/comparison-full.json   # no training
    python benchmarks/comparison.py --preset full --from-log full.log   # a run stopped early: its printed lines
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
import re
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
        budget_of: another method whose training budget this one gets at every reported step, in `budget` units
            (`"flops"`: training FLOPs of a step; `"seconds"`: wall time of a step on this machine, measured before
            the runs): its runs are that many times longer (steps, evaluations and reported budgets scaled alike,
            each run with its own whole schedule).
    """

    architecture: str
    objective: str
    config: dict = dataclasses.field(default_factory=dict)
    data: dict = dataclasses.field(default_factory=dict)
    train: dict = dataclasses.field(default_factory=dict)
    match_parameters_of: str | None = None
    budget_of: str | None = None
    budget: str = "flops"

    def __post_init__(self):
        if self.budget not in BUDGET_UNITS:
            raise ValueError(f"budget must be one of {BUDGET_UNITS}, got {self.budget!r}")


# What a method's `budget_of` matches: training FLOPs per step, or wall seconds per step.
BUDGET_UNITS = ("flops", "seconds")
# SimCLR's and SLIP's temperature 0.1 for the image-image pair; CLIP's 0.07 for the pairs with text.
UNICLIP_LOGIT_SCALES = [math.log(1 / 0.1), math.log(1 / 0.07), math.log(1 / 0.07)]
# The candidate views of the `uniclip-choices` study on the 32-pixel images, made on top of the earlier `small`
# preset (area 0.85-1, no jitter, grayscale or blur): crop area 0.3-1 and colour jitter with probability 0.8 at the
# recipe's strengths (brightness, contrast, saturation 0.4, hue 0.1). Chosen on validation, it is now `small` itself.
WIDE_VIEWS = {
    "view_preset": "small",
    "augmentation_kwargs": {"scale": [0.3, 1.0], "jitter_p": 0.8, "brightness": 0.4, "contrast": 0.4},
}
# The earlier `small` preset, as the choices study ran it.
NEAR_DUPLICATE_VIEWS = {"view_preset": "small", "augmentation_kwargs": {"scale": [0.85, 1.0], "jitter_p": 0.0}}


METHODS = {
    "clip": Method("towers", "clip"),
    "unicl": Method("towers", "unicl"),
    "uniclip": Method("towers", "uniclip"),
    "ms-clip-s": Method("ms-clip-s", "clip"),
    # Sharing alone (the stack shared, no stem, no branch) and nothing shared, each at ms-clip-s's parameter count:
    # with ms-clip-s they separate what the sharing, and what the stem and branch, bring.
    "msclip-shared": Method("msclip-shared", "clip", match_parameters_of="ms-clip-s"),
    "msclip-separate": Method("msclip-separate", "clip", match_parameters_of="ms-clip-s"),
    # FLIP's patch dropout (half the image patches dropped in training), given CLIP's wall time on this machine.
    "clip+patch-dropout": Method("towers", "clip", config={"patch_dropout": 0.5}, budget_of="clip", budget="seconds"),
    # CLIP given the training FLOPs of the costlier methods: the equal-compute reading (`COMPUTE_MATCHED`).
    "clip@uniclip-flops": Method("towers", "clip", budget_of="uniclip"),
    "clip@ms-clip-s-flops": Method("towers", "clip", budget_of="ms-clip-s"),
}
# The composed points of the one objective, next to CLIP: MS-CLIP's stack and UniCLIP's views with UniCL's labels,
# and SigLIP's sigmoid loss (t = 10, b = -10 at the start) alone and with labels.
COMPOSED = {
    "clip": METHODS["clip"],
    "ms-clip-s+unicl": Method("ms-clip-s", "unicl"),
    "uniclip+unicl": Method("towers", "uniclip+unicl"),
    "siglip": Method("towers", "siglip"),
    "siglip+unicl": Method("towers", "siglip+unicl"),
}
# method -> the CLIP run given its training FLOPs.
COMPUTE_MATCHED = {"uniclip": "clip@uniclip-flops", "ms-clip-s": "clip@ms-clip-s-flops"}
# The review's offsets: near the mean cosines of different items at initialisation (set, so not calibrated).
FIXED_OFFSETS = dict(config={"logit_offset_init_value": [0.9, 0.0, 0.75]}, train={"calibrate_logit_offsets": "false"})
ABLATIONS = {
    "clip": METHODS["clip"],
    "uniclip": METHODS["uniclip"],
    "uniclip, offsets 0.9/0/0.75": Method("towers", "uniclip", **FIXED_OFFSETS),
    "uniclip, offsets 0 (not calibrated)": Method("towers", "uniclip", train={"calibrate_logit_offsets": "false"}),
    "uniclip, simclr views": Method("towers", "uniclip", data={"view_preset": "simclr"}),
    "uniclip, near-duplicate views": Method("towers", "uniclip", data=NEAR_DUPLICATE_VIEWS),
    "uniclip, duplicates not masked": Method("towers", "uniclip", config={"mask_duplicate_texts": False}),
    "uniclip, SupCon": Method("towers", "uniclip", config={"contrastive_loss": "supcon"}),
    "uniclip, no augmentation-aware head": Method("towers", "uniclip", config={"augmentation_aware": False}),
    "uniclip, no image-image pairs": Method("towers", "uniclip", config={"intra_domain_pairs": "text"}),
    "uniclip, no text-text pairs": Method("towers", "uniclip", config={"intra_domain_pairs": "image"}),
    "uniclip, image-text pairs only": Method("towers", "uniclip", config={"intra_domain_pairs": False}),
    # The heads' initialisation: UniCL's std 0.02 (the package default) against CLIPModel's width ** -0.5 (0.125 at
    # the study's width 64), for both objectives.
    "clip, projections std 0.125": Method("towers", "clip", config={"initializer_range": 0.125}),
    "uniclip, projections std 0.125": Method("towers", "uniclip", config={"initializer_range": 0.125}),
}
# The choices behind UniCLIP's shipped defaults, made on the validation splits only (`--split validation`): the
# faithful similarity (log-scales at the towers' rate, image-image temperature 0.1) with the earlier `small` views or
# wider views with jitter, the offsets' learning rate, the first-batch offset calibration.
FAITHFUL = {"logit_scale_init_value": UNICLIP_LOGIT_SCALES}
CHOICES = {
    "clip": METHODS["clip"],
    "uniclip, small views": Method("towers", "uniclip", config=FAITHFUL, data=NEAR_DUPLICATE_VIEWS),
    "uniclip, wide views": Method("towers", "uniclip", config=FAITHFUL, data=WIDE_VIEWS),
    "uniclip, wide views, offsets at 1x": Method(
        "towers", "uniclip", config=FAITHFUL, data=WIDE_VIEWS, train={"logit_offset_learning_rate_multiplier": 1.0}
    ),
    "uniclip, wide views, offsets not calibrated": Method(
        "towers", "uniclip", config=FAITHFUL, data=WIDE_VIEWS, train={"calibrate_logit_offsets": "false"}
    ),
    # Second round, on the best of the first: the augmentation code into an MLP head.
    "uniclip, wide views, offsets at 1x, MLP head": Method(
        "towers",
        "uniclip",
        config={**FAITHFUL, "augmentation_fusion": "mlp"},
        data=WIDE_VIEWS,
        train={"logit_offset_learning_rate_multiplier": 1.0},
    ),
}
STUDIES = {"comparison": METHODS, "composed": COMPOSED, "uniclip-ablations": ABLATIONS, "uniclip-choices": CHOICES}
# Studies whose purpose is a choice: they run on the validation splits only.
VALIDATION_STUDIES = ("uniclip-choices",)
REFERENCE = "clip"  # the same-seed differences are taken against it

# name -> settings; the command line overrides any of them.
_STUDY_SIZES = dict(batch_size=64, num_train=1400, num_eval=400, num_validation=300, width=64, layers=4, jobs=2)
PRESETS = {
    "smoke": dict(
        seeds=[0, 1],
        steps=4,
        eval_steps=2,
        budgets=[2, 4],
        batch_size=8,
        num_train=48,
        num_eval=24,
        num_validation=24,
        width=32,
        layers=2,
        jobs=1,
    ),  # fmt: skip
    "reduced": dict(seeds=[0, 1, 2], steps=120, eval_steps=30, budgets=[60, 120], **_STUDY_SIZES),
    "full": dict(seeds=[0, 1, 2, 3, 4], steps=600, eval_steps=200, budgets=[200, 600], **_STUDY_SIZES),
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
def study_data(
    dataset: str, num_train: int, num_eval: int, num_validation: int, image_size: int, text_len: int, split: str
):
    """The data set with its `split` (`validation` or `test`) as the evaluation split, and its caption tokenizer
    (deterministic: every worker process builds the same). Shapes draws `num_eval` validation images of its own;
    digits takes `num_validation` of its 1,797 scans out of the training pool."""
    if dataset == "shapes":
        data = studies.shapes_data(num_train, num_eval, image_size, split=split)
    else:
        num_train = min(num_train, 1797 - num_eval - num_validation)
        data = studies.digits_data(
            num_eval, image_size, num_train=num_train, num_validation=num_validation, split=split
        )
    return data, studies.caption_tokenizer(data, text_len)


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run: a method on a data set with a seed, evaluated on `split`, `step_multiplier` times as long
    as `settings` says (a method with a `budget_of`)."""

    dataset: str
    method_name: str
    method: Method
    sizes: Sizes
    seed: int
    settings: studies.RunSettings
    num_train: int
    num_eval: int
    num_validation: int
    split: str
    step_multiplier: float = 1.0


def scaled_steps(settings: studies.RunSettings, multiplier: float) -> studies.RunSettings:
    """The settings of a run `multiplier` times as long: evaluations every `round(eval_steps * multiplier)` steps and
    as many of them, so that budget `b` (a multiple of `eval_steps`) is read at `scaled_step(b, ...)`."""
    if multiplier == 1.0:
        return settings
    every = settings.eval_steps or settings.steps
    scaled_every = max(1, round(every * multiplier))
    return dataclasses.replace(
        settings,
        steps=scaled_every * settings.steps // every,
        eval_steps=scaled_every if settings.eval_steps else 0,
    )


def scaled_step(step: int, settings: dict, multiplier: float) -> int:
    """The evaluated step of a run `multiplier` times as long that stands for `step` of the study (`settings`: the
    results' settings)."""
    every = settings["eval_steps"] or settings["steps"]
    return step if multiplier == 1.0 else max(1, round(every * multiplier)) * step // every


def run_job(job: Job, threads: int = 1) -> dict:
    """Trains and evaluates one job; returns its `RunResult` as a dict with the job's names and the learnt
    similarity parameters."""
    import torch
    from accelerate.utils import set_seed

    from hf_unified.training.logs import quiet_progress_bars

    torch.set_num_threads(threads)
    quiet_progress_bars()
    data, tokenizer = study_data(
        job.dataset,
        job.num_train,
        job.num_eval,
        job.num_validation,
        job.sizes.image_size,
        job.sizes.text_len,
        job.split,
    )
    set_seed(job.seed)
    model = studies.build_model(
        job.method.architecture, job.method.objective, tokenizer, job.sizes, **job.method.config
    )
    settings = dataclasses.replace(
        scaled_steps(job.settings, job.step_multiplier),
        data_overrides=job.method.data,
        train_overrides=job.method.train,
    )
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
        "split": job.split,
        "step_multiplier": job.step_multiplier,
        "width": job.sizes.width,
        "similarity": similarity,
        **result.to_dict(),
    }


def resolve_sizes(methods: dict[str, Method], dataset: str, sizes: Sizes, data_sizes: tuple) -> dict:
    """Each method's sizes: the study's, or the width that matches another method's parameter count
    (`data_sizes`: `(num_train, num_eval, num_validation)`)."""
    import torch

    from hf_unified.training.methods import model_class

    data, tokenizer = study_data(dataset, *data_sizes, sizes.image_size, sizes.text_len, "test")
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


# Calibration runs of the budget matching: steps of a FLOPs count (the first step is counted), and steps of a timing
# run (the step time is the median over its logging windows after the first), taken `TIMING_ROUNDS` times,
# alternating between the two methods.
FLOPS_STEPS, TIMING_STEPS, TIMING_ROUNDS = 1, 60, 2


def resolve_multipliers(methods: dict[str, Method], job_template: Job, sizes: dict[str, Sizes]) -> dict[str, dict]:
    """Each method's step multiplier on `job_template.dataset`: 1, or for a method with a `budget_of` the ratio of
    the other method's training FLOPs (or wall seconds) per step to its own, measured by short runs here.

    Returns:
        name -> `{"multiplier": float, "own": float, "matched": float, "unit": str}` (per-step FLOPs or seconds of
        the method and of the one whose budget it gets); `{"multiplier": 1.0}` for the others.
    """
    resolved = {name: {"multiplier": 1.0} for name in methods}
    for name, method in methods.items():
        if method.budget_of is None:
            continue
        pair = (name, method.budget_of)
        flops = method.budget == "flops"
        steps = FLOPS_STEPS if flops else TIMING_STEPS
        measured = {n: [] for n in pair}
        for _ in range(1 if flops else TIMING_ROUNDS):
            for n in pair:
                settings = dataclasses.replace(job_template.settings, steps=steps, eval_steps=0)
                job = dataclasses.replace(
                    job_template, method_name=n, method=methods[n], sizes=sizes[n], settings=settings
                )
                result = run_job(job, threads=1)
                measured[n].append(result["gflops_per_step"] if flops else result["step_seconds"])
        own, matched = (min(measured[n]) for n in pair)
        resolved[name] = {"multiplier": matched / own, "own": own, "matched": matched, "unit": method.budget}
        print(
            f"  {job_template.dataset}: {name} gets {method.budget_of}'s {method.budget} per step: "
            f"{matched:.4g} / {own:.4g} = {matched / own:.3f}x its steps",
            flush=True,
        )
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


def _metric(runs: list[dict], step: int, key: str, settings: dict) -> list[float]:
    """`key` of each run at study step `step` (a run with a `step_multiplier` at its matching step)."""
    values = []
    for run in runs:
        scaled = scaled_step(step, settings, run.get("step_multiplier", 1.0))
        record = next(r for r in run["history"] if r["step"] == scaled)
        values.append(record[key])
    return values


def _paired(runs: list[dict], reference: list[dict]) -> tuple[list[dict], list[dict]]:
    """The runs of the seeds both lists have, in seed order."""
    seeds = {r["seed"] for r in runs} & {r["seed"] for r in reference}
    return [r for r in runs if r["seed"] in seeds], [r for r in reference if r["seed"] in seeds]


def _intervals_note(rows: list[list], columns: int) -> str:
    count = len(rows) * columns
    return (
        f" ({count} intervals, none corrected for multiple comparisons: at 95% each, {count * 0.05:.1f} of them are "
        "expected to exclude 0 by chance where no method differs)"
    )


def _number(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)  # "-": not recorded (a table read from printed lines)


def _method_label(name: str, runs: list[dict]) -> str:
    multiplier = runs[0].get("step_multiplier", 1.0)
    return name if multiplier == 1.0 else f"{name} ({multiplier:.2f}x steps)"


def tables(results: dict) -> str:
    """The markdown tables of a study: per data set and budget, mean +- std and the same-seed difference to CLIP at
    equal steps, then (where the study has compute-matched CLIP runs) the difference to CLIP at equal training
    FLOPs."""
    settings = results["settings"]
    split = results.get("split", "test")
    blocks = []
    for dataset in results["datasets"]:
        by_method = _runs_by_method(results, dataset)
        keys = [k for k in METRICS if all(k in r["history"][-1] for runs in by_method.values() for r in runs)]
        columns = [METRICS[k][0] for k in keys]
        reference = by_method.get(results["reference"])
        seeds = sorted({r["seed"] for runs in by_method.values() for r in runs})
        matched = {m: c for m, c in COMPUTE_MATCHED.items() if m in by_method and c in by_method}
        for step in settings["budgets"]:
            title = (
                f"**{results['study']} on {dataset} ({split} split), step {step} of {settings['steps']} (batch "
                f"{settings['batch_size']}, seeds {seeds}): mean +- std in %**"
            )
            rows = []
            for name, runs in by_method.items():
                seconds = spread([r["seconds"] for r in runs])[0]
                step_ms = 1000 * sum(r.get("step_seconds", math.nan) for r in runs) / len(runs)  # nan: not measured
                rows.append(
                    [
                        _method_label(name, runs),
                        _number(runs[0]["params"] / 1e6, ".3f"),
                        _number(runs[0]["gflops_per_step"], ".2f"),
                        _number(step_ms, ".0f"),
                        _number(seconds, ".0f"),
                    ]
                    + [percent_spread(_metric(runs, step, key, settings)) for key in keys]
                )
            header = ["method", "params (M)", "train GFLOPs/step", "ms/step", "s/run"] + columns
            blocks.append(title + "\n\n" + markdown_table(header, rows))
            if reference is None:
                continue
            rows = []
            for name, runs in by_method.items():
                if name == results["reference"]:
                    continue
                paired, base = _paired(runs, reference)
                rows.append(
                    [_method_label(name, runs)]
                    + [
                        percent_difference(_metric(paired, step, k, settings), _metric(base, step, k, settings))
                        for k in keys
                    ]
                )
            blocks.append(
                f"*same-seed difference to {results['reference']} at step {step}, points [95% interval]"
                + _intervals_note(rows, len(keys))
                + "*\n\n"
                + markdown_table(["method"] + columns, rows)
            )
            if not matched:
                continue
            rows = []
            for name, clip_name in matched.items():
                paired, base = _paired(by_method[name], by_method[clip_name])
                rows.append(
                    [f"{name} vs {clip_name}"]
                    + [
                        percent_difference(_metric(paired, step, k, settings), _metric(base, step, k, settings))
                        for k in keys
                    ]
                )
            blocks.append(
                f"*equal training FLOPs: same-seed difference to CLIP given the method's FLOPs up to its step {step}, "
                "points [95% interval]"
                + _intervals_note(rows, len(keys))
                + "*\n\n"
                + markdown_table(["method"] + columns, rows)
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


TERM_KEYS = ("loss_image_image", "loss_image_text", "loss_text_text")


def loss_terms_table(results: dict) -> str:
    """The training loss split by domain pair (image-image / image-text / text-text, `-` for a pair the objective
    does not have; the three sum to the loss) of the methods with intra-domain pairs, mean over seeds, at the last
    logged step up to each budget (runs of a budget-matched method at their matching step)."""
    settings = results["settings"]
    rows = []
    for dataset in results["datasets"]:
        for name, runs in _runs_by_method(results, dataset).items():
            if not all(len(r.get("loss_terms") or []) and len(r["loss_terms"][-1][1]) > 1 for r in runs):
                continue
            cells = []
            for budget in settings["budgets"]:
                values = {key: [] for key in TERM_KEYS}
                for run in runs:
                    last = scaled_step(budget, settings, run.get("step_multiplier", 1.0))
                    _, terms = [entry for entry in run["loss_terms"] if entry[0] <= last][-1]
                    for key in TERM_KEYS:
                        values[key].append(terms.get(key, float("nan")))
                cells.append(
                    " / ".join("-" if math.isnan(spread(v)[0]) else f"{spread(v)[0]:.3f}" for v in values.values())
                )
            rows.append([dataset, _method_label(name, runs), *cells])
    if not rows:
        return ""
    header = ["data", "method"] + [
        f"loss terms at step {b} (image-image / image-text / text-text)" for b in settings["budgets"]
    ]
    return "*the training loss by domain pair (mean over seeds; the terms sum to the loss)*\n\n" + markdown_table(
        header, rows
    )


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
                multiplier = runs[0].get("step_multiplier", 1.0)
                steps = [record["step"] for record in runs[0]["history"]]
                values = [
                    [100 * next(r[key] for r in run["history"] if r["step"] == s) for run in runs] for s in steps
                ]
                steps = [s / multiplier for s in steps]  # a budget-matched run at the steps of the study's budget
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
    for extra in (similarity_table(results), loss_terms_table(results)):
        if extra:
            text += "\n\n" + extra
    print(text)
    if figures is not None:
        for path in plot(results, figures):
            print(f"figure: {path}")
    return text


_RUN_LINE = re.compile(
    r"^  (?P<dataset>\w+) (?P<method>.+) seed (?P<seed>\d+): zero-shot (?P<zero_shot>[\d.]+), "
    r"probe (?P<probe>[\d.]+), i2t R@1 (?P<i2t>[\d.]+) \((?P<seconds>\d+) s\)$"
)
_MATCH_LINE = re.compile(r"^  (?P<dataset>\w+): (?P<method>.+) gets .* = (?P<multiplier>[\d.]+)x its steps$")


def results_from_log(path: Path, study: str, preset: str) -> dict:
    """The results of a run's printed lines (`run_jobs` prints each run's final metrics as it ends; the budget
    matching prints each multiplier), for a run stopped before its end, which writes no JSON: one evaluation per run,
    its last (zero-shot with unseen prompts, linear probe, image->text R@1), read at the preset's last step."""
    settings = {**PRESETS[preset], "eval_steps": 0, "budgets": [PRESETS[preset]["steps"]]}
    multipliers, runs = {}, []
    for line in path.read_text().splitlines():
        if match := _MATCH_LINE.match(line):
            multipliers[match["dataset"], match["method"]] = float(match["multiplier"])
        elif match := _RUN_LINE.match(line):
            multiplier = multipliers.get((match["dataset"], match["method"]), 1.0)
            step = scaled_step(settings["steps"], settings, multiplier)
            metrics = {
                "zero_shot_top1_accuracy": "zero_shot",
                "linear_probe_top1": "probe",
                "image_to_text_R@1": "i2t",
            }
            runs.append(
                {
                    "dataset": match["dataset"],
                    "method": match["method"],
                    "seed": int(match["seed"]),
                    "step_multiplier": multiplier,
                    "history": [{"step": step, **{key: float(match[group]) for key, group in metrics.items()}}],
                    "seconds": float(match["seconds"]),
                    "params": float("nan"),
                    "gflops_per_step": float("nan"),
                    "similarity": {},
                }
            )
    datasets = [name for name in ("shapes", "digits") if any(run["dataset"] == name for run in runs)]
    return {
        "study": study,
        "preset": preset,
        "machine": f"(from the printed lines of {path.name})",
        "datasets": datasets,
        "split": "test",
        "methods": [name for name in STUDIES[study] if any(run["method"] == name for run in runs)],
        "reference": REFERENCE,
        "settings": settings,
        "runs": runs,
    }


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
    parser.add_argument("--num-eval", type=int, help="test images (and, on shapes, validation images)")
    parser.add_argument("--num-validation", type=int, help="digits' validation scans, out of the training pool")
    parser.add_argument(
        "--split",
        choices=studies.EVALUATION_SPLITS,
        help="the evaluation split: validation (choices) or test (the tables); default test, validation for the "
        f"studies that make choices ({', '.join(VALIDATION_STUDIES)})",
    )
    parser.add_argument("--width", type=int)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--jobs", type=int, help="worker processes (one run each at a time)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--output", type=Path, help="raw results (JSON); default outputs/comparison/STUDY-PRESET.json")
    parser.add_argument("--figures", type=Path, default=FIGURES, help="where the PNG figures go")
    parser.add_argument("--no-figures", action="store_true")
    parser.add_argument("--from-results", type=Path, help="print the tables and draw the figures of a JSON, no runs")
    parser.add_argument(
        "--from-log", type=Path, help="print the step-`--steps` tables of a run's printed lines (a run stopped early)"
    )

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
        for anchor in (methods[name].match_parameters_of, methods[name].budget_of):
            if anchor and anchor not in args.methods:
                args.methods.insert(args.methods.index(name), anchor)  # the method it matches is needed to size it
    if args.split is None:
        args.split = "validation" if args.study in VALIDATION_STUDIES else "test"
    elif args.split == "test" and args.study in VALIDATION_STUDIES:
        parser.error(f"the {args.study} study makes choices: it runs on --split validation only")
    if not set(args.budgets) <= set(range(args.eval_steps, args.steps + 1, args.eval_steps)) | {args.steps}:
        parser.error(f"--budgets {args.budgets} must be evaluated steps: multiples of --eval-steps up to --steps")
    if args.output is None:
        suffix = "" if args.split == "test" else f"-{args.split}"
        args.output = Path("outputs/comparison") / f"{args.study}-{args.preset}{suffix}.json"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    figures = None if args.no_figures else args.figures
    if args.from_results:
        results = json.loads(args.from_results.read_text())
        report(results, figures)
        return results
    if args.from_log:
        results = results_from_log(args.from_log, args.study, args.preset)
        report(results, None)
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
    data_sizes = (args.num_train, args.num_eval, args.num_validation)
    jobs, multipliers = [], {}
    for dataset in args.datasets:
        method_sizes = resolve_sizes(study, dataset, sizes, data_sizes)
        template = Job(dataset, REFERENCE, study[REFERENCE], sizes, 0, settings, *data_sizes, args.split)
        multipliers[dataset] = resolve_multipliers(study, template, method_sizes)
        for name, method in study.items():
            jobs += [
                dataclasses.replace(
                    template,
                    method_name=name,
                    method=method,
                    sizes=method_sizes[name],
                    seed=seed,
                    step_multiplier=multipliers[dataset][name]["multiplier"],
                )
                for seed in args.seeds
            ]
    print(
        f"{args.study} ({args.preset}): {len(jobs)} runs of {args.steps} steps in {args.jobs} process(es), "
        f"{args.threads} torch thread(s) each",
        flush=True,
    )
    jobs.sort(key=lambda job: -job.step_multiplier)  # the longest runs first: no long run left alone at the end
    start = time.perf_counter()
    runs = run_jobs(run_job, jobs, args.jobs, args.threads)
    results = {
        "study": args.study,
        "preset": args.preset,
        "machine": common.describe_machine(),
        "datasets": args.datasets,
        "split": args.split,
        "methods": list(study),
        "budgets_matched": multipliers,
        "reference": REFERENCE,
        "wall_seconds": time.perf_counter() - start,
        "settings": {
            **dataclasses.asdict(settings),
            "budgets": args.budgets,
            "sizes": dataclasses.asdict(sizes),
            "seeds": args.seeds,
            "processes": args.jobs,
            "num_train": args.num_train,
            "num_eval": args.num_eval,
            "num_validation": args.num_validation,
        },
        "runs": runs,
    }
    write_json(args.output, results)
    print(f"\n{len(runs)} runs in {results['wall_seconds'] / 60:.1f} min; raw results: {args.output}\n")
    report(results, figures)
    return results


if __name__ == "__main__":
    main()
