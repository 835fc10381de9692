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

3. LoRA vs full fine-tuning (issue 24): the `--lora-objectives` rows again with `--lora_rank` (`--lora-ranks`, peft
   adapters on every linear layer of the towers' blocks, the projections whole, everything else frozen; merged at
   the end as `train.py` does) at `--lora-lr` (LoRA's usual higher rate; not tuned here). Their accuracy is compared
   with the full run of the same objective and seeds; `step_costs` measures, per variant, the trainable parameters,
   the AdamW state held after a step (the tensors in `optimizer.state`), and the time of one training step (forward,
   backward, AdamW; one batch of `--batch-size`, median of interleaved rounds).

The tokenizer is CLIP's byte-level BPE (49408 ids, from the vocabulary file open_clip ships), as a CLIP checkpoint
brings it: the caption BPE the other studies train gives `<|endoftext|>` the id 2, which transformers' CLIPTextModel
reads as its legacy "pool at the largest id" flag, so such a model is refused by the CLIP export.

Metrics (held-out split, `studies.StudyEvaluation`): zero-shot with unseen prompts and with the training prompts,
the 36 held-out (colour, shape) classes, a linear probe on the frozen image embeddings, retrieval; mean +- std over
seeds and the same-seed difference to `continue clip` with its 95% interval.

Usage:

    python benchmarks/finetune_from_clip.py              # 3 seeds (about 10 min on 2 cores)
    python benchmarks/finetune_from_clip.py --smoke
    python benchmarks/finetune_from_clip.py --from-results outputs/finetune_from_clip/results.json  # tables only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
    lora_rank: int = 0


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
    return {"dataset": "shapes", "method": job.name, "seed": job.seed, "lora_rank": job.lora_rank, **run.to_dict()}


def lora_name(name: str, rank: int) -> str:
    return f"{name}, LoRA r{rank}"


def _variant(clip_folder: str, objective: str, rank: int, learning_rate: float):
    """The model of one row as the trainer trains it (`lora.apply_lora` for a LoRA rank) and its AdamW."""
    import torch

    from hf_unified.configuration_contrastive import OBJECTIVE_PRESETS
    from hf_unified.training import lora
    from hf_unified.training.arguments import TrainArguments
    from hf_unified.training.methods import model_class
    from hf_unified.training.optim import build_optimizer

    model = model_class(studies.tower_model_type(objective)).from_clip(clip_folder, **OBJECTIVE_PRESETS[objective])
    model.set_attn_implementation("sdpa")
    args = TrainArguments(learning_rate=learning_rate, lora_rank=rank, use_cpu=True)
    if rank:
        model = lora.apply_lora(model, args)
    return model.train(), build_optimizer(model, args, device=torch.device("cpu"))


def step_costs(clip_folder: str, objective: str, ranks: list[int], batch_size: int, rounds: int, args) -> dict:
    """Per variant (rank 0, always first: full fine-tuning): trainable parameters and the base model's, the AdamW
    state after one step (MiB) and the median time of one training step over `rounds` interleaved rounds (ms), on a
    fixed batch of captions."""
    import torch

    from hf_unified.training.methods import model_inputs
    from hf_unified.training.optim import clamp_logit_scale

    _, tokenizer = study_data(args.num_train, args.num_eval, args.image_size, args.text_len)
    torch.manual_seed(0)
    text = tokenizer(["a red circle on a blue background"] * batch_size, padding=True, return_tensors="pt")
    batch = {**text, "pixel_values": torch.randn(batch_size, 3, args.image_size, args.image_size)}
    inputs = model_inputs(batch, torch.device("cpu"))
    variants = {rank: _variant(clip_folder, objective, rank, args.finetune_lr) for rank in ranks}

    def step(rank: int) -> float:
        model, optimizer = variants[rank]
        start = time.perf_counter()
        model(**inputs, return_loss=True).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clamp_logit_scale(model, 100.0)
        return time.perf_counter() - start

    for rank in ranks:  # warm-up, and the optimizer state exists after it
        step(rank)
    times = {rank: [] for rank in ranks}
    for _ in range(rounds):
        for rank in ranks:
            times[rank].append(step(rank))
    costs = {}
    base_parameters = sum(p.numel() for p in variants[0][0].parameters())  # the full model: every variant's base
    for rank, (model, optimizer) in variants.items():
        state = [t for values in optimizer.state.values() for t in values.values() if torch.is_tensor(t)]
        costs[rank] = {
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": base_parameters,
            "optimizer_mib": sum(t.numel() * t.element_size() for t in state) / 2**20,
            "step_ms": 1000 * common.median(times[rank]),
        }
    return costs


def lora_table(runs: list[dict], costs: dict, objectives: list[str], ranks: list[int]) -> str:
    """LoRA vs full fine-tuning per objective: accuracy (mean +- std), the same-seed difference to the full run,
    trainable parameters and their share, AdamW state and step time (`step_costs`)."""
    finals: dict[str, list[dict]] = {}
    for run in sorted(runs, key=lambda r: r["seed"]):
        finals.setdefault(run["method"], []).append(run["history"][-1])
    keys = ("zero_shot_top1_accuracy", "held_out_classes_top1", "linear_probe_top1", "image_to_text_R@1")
    rows = []
    for objective in objectives:
        full = finals[objective]
        for rank in [0, *ranks]:
            name = objective if rank == 0 else lora_name(objective, rank)
            if name not in finals:
                continue
            cost = costs[objective][rank]
            base_parameters = costs[objective][0]["total"]  # the full model's: the share is of the base
            difference = [
                "" if rank == 0 else percent_difference([f[k] for f in finals[name]], [f[k] for f in full])
                for k in ("zero_shot_top1_accuracy", "linear_probe_top1")
            ]
            rows.append(
                [
                    "full fine-tuning" if rank == 0 else f"LoRA r{rank}",
                    objective,
                    *[percent_spread([f[k] for f in finals[name]]) for k in keys],
                    *difference,
                    f"{cost['trainable']:,} ({100 * cost['trainable'] / base_parameters:.1f}%)",
                    f"{cost['optimizer_mib']:.2f}",
                    f"{cost['step_ms']:.0f}",
                ]
            )
    header = ["fine-tuning", "objective", *(METRICS[k] for k in keys), "zero-shot vs full", "probe vs full"]
    header += ["trainable parameters (share)", "AdamW state MiB", "step ms"]
    return markdown_table(header, rows)


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
    parser.add_argument(
        "--lora-objectives",
        nargs="*",
        choices=list(FINETUNE_OBJECTIVES),
        default=["continue clip", "unicl labels"],
        help="objectives fine-tuned with LoRA too (none: no LoRA rows)",
    )
    parser.add_argument("--lora-ranks", type=int, nargs="+", default=[8])
    parser.add_argument("--lora-lr", type=float, default=1e-3, help="LoRA's learning rate (not tuned here)")
    parser.add_argument("--timing-rounds", type=int, default=15, help="interleaved rounds of the step timing")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--output", type=Path, default=Path("outputs/finetune_from_clip"))
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--from-results", type=Path, help="print the tables of a saved results.json (no training)")
    args = parser.parse_args(argv)
    if REFERENCE not in args.objectives:
        args.objectives.insert(0, REFERENCE)  # the differences are taken against it
    if args.seeds is None:
        args.seeds = [0, 1] if args.smoke else [0, 1, 2]
    for name in args.lora_objectives:
        if name not in args.objectives:
            args.objectives.append(name)  # LoRA rows are compared with the full run of their objective
    if args.smoke:
        args.pretrain_steps, args.finetune_steps, args.batch_size = 4, 2, 8
        args.num_train, args.num_eval, args.width, args.layers, args.jobs = 48, 24, 32, 1, 1
        args.timing_rounds = 2
    sizes = Sizes()
    args.image_size, args.text_len = sizes.image_size, sizes.text_len
    return args


def report(results: dict) -> None:
    """Prints the tables of a run (`results.json`)."""
    settings, runs = results["settings"], results["runs"]
    pretrain, finetune, sizes = settings["pretrain"], settings["finetune"], settings["sizes"]
    print(
        f"\n### fine-tuning a pre-trained tiny CLIP on shapes ({pretrain['steps']} pre-training steps on captions, "
        f"then {finetune['steps']} steps at lr {finetune['learning_rate']:g} on UniCL's mix; width {sizes['width']}, "
        f"{sizes['layers']} layers, seeds {settings['seeds']}, shipped trainer; {results['wall_seconds'] / 60:.1f} "
        "min): mean +- std in %, differences in points [95% interval]\n"
    )
    print(f"machine: {results['machine']}\n")
    print(table([run for run in runs if not run.get("lora_rank")]))
    lora, timing = settings.get("lora") or {}, settings.get("timing")
    costs = {name: {int(rank): cost for rank, cost in c.items()} for name, c in results.get("step_costs", {}).items()}
    if costs:
        step = (
            f"batch {timing['batch_size']}, {timing['threads']} threads, median of {timing['rounds']} interleaved "
            "rounds"
            if timing
            else "median of interleaved rounds"
        )
        print(
            f"\n### LoRA vs full fine-tuning (rank {', '.join(map(str, lora['ranks']))} at lr "
            f"{lora['learning_rate']:g}, full at lr {finetune['learning_rate']:g}; step time: {step})\n"
        )
        print(lora_table(runs, costs, lora["objectives"], lora["ranks"]))


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.from_results:
        results = json.loads(args.from_results.read_text())
        report(results)
        return results
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
    lora_settings = {
        rank: dataclasses.replace(finetune, learning_rate=args.lora_lr, train_overrides={"lora_rank": rank})
        for rank in args.lora_ranks
    }
    jobs += [
        Job(
            seed,
            folders[seed],
            lora_settings[rank],
            **common_fields,
            name=lora_name(name, rank),
            objective=FINETUNE_OBJECTIVES[name],
            lora_rank=rank,
        )
        for name in args.lora_objectives
        for rank in args.lora_ranks
        for seed in args.seeds
    ]
    runs += run_jobs(run_job, jobs, args.jobs, args.threads)
    costs = {}
    timing = {"batch_size": args.batch_size, "threads": args.threads * args.jobs, "rounds": args.timing_rounds}
    if args.lora_objectives:
        print("timing one training step per variant (interleaved rounds)", flush=True)
        import torch

        torch.set_num_threads(timing["threads"])
        for name in args.lora_objectives:
            costs[name] = step_costs(
                folders[args.seeds[0]],
                FINETUNE_OBJECTIVES[name],
                [0, *args.lora_ranks],
                args.batch_size,
                args.timing_rounds,
                args,
            )
    results = {
        "study": "finetune-from-clip",
        "machine": common.describe_machine(),
        "wall_seconds": time.perf_counter() - start,
        "settings": {
            "pretrain": dataclasses.asdict(pretrain),
            "finetune": dataclasses.asdict(finetune),
            "sizes": dataclasses.asdict(sizes),
            "seeds": args.seeds,
            "lora": {"ranks": args.lora_ranks, "learning_rate": args.lora_lr, "objectives": args.lora_objectives},
            "timing": timing,
        },
        "runs": runs,
        "step_costs": {name: {str(rank): cost for rank, cost in c.items()} for name, c in costs.items()},
    }
    write_json(args.output / "results.json", results)
    report(results)
    return results


if __name__ == "__main__":
    main()
