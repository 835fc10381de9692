"""End to end: `training/train.py` against open_clip's own trainer (`open_clip_train`) on the same shards.

Both trainers run as a user runs them, one process each (plus their DataLoader workers), on the same webdataset
shards (`hf_unified.training.data.synthetic_data`: 64 px JPEG + caption pairs), at the same model dims (the towers of
`throughput.py`: ViT 192 wide x 4 layers, patch 16, text 128 wide x 4 layers, 32 positions, the CLIP BPE
vocabulary of 49408 tokens, 128-d embeddings, QuickGELU; open_clip gets them as a model config JSON, ours as a UniCL
config with transformers' CLIP towers and CLIP's loss), the same batch, precision (fp32 on CPU), data workers,
learning-rate schedule (warmup + cosine), AdamW hyper-parameters, no gradient clipping and no evaluation. The
optimizer is each trainer's best available: ours `AdamW(fused=True)`; `open_clip_train` builds `torch.optim.AdamW`
with torch's default kernel and has no flag for another (a variant patches `fused=True` in, to see what that part
is worth).

Measured per run, interleaved (round r runs every variant once, the order rotated each round):

- **samples/s from each trainer's own log** over the steady part: the log windows after `--warmup-steps`
  (ours: `training_log.jsonl`, whose `samples_per_second` covers the steps since the previous record; open_clip:
  the `Batch (t)` average of its `out.log` lines, which covers the steps since its previous line), as total samples
  over total seconds of those windows;
- **samples per CPU-second** over the same steps: CPU time of the trainer process (all threads) and its workers;
- **where a step's time goes** in the trainer's main process, main-thread CPU and wall milliseconds per step: waiting
  for the next batch, moving it + forward + loss, backward, gradient norm / clipping, the optimizer step, and
  everything else in the loop (logging, schedule, temperature clamp, `zero_grad`). The marks come from hooks both
  trainers run through (`DataLoader` iteration, `Tensor.backward`, `clip_grad_norm_`, torch's global optimizer
  step hooks), installed by the launcher below; they cost microseconds a step. On a GPU they time kernel launches,
  not kernels: read that table on CPUs only;
- the process tree's whole-run wall and CPU seconds (start-up and saving included).

Ratios are per round against open_clip as shipped, then the median (min-max) over rounds; the load average of the
machine during the runs is printed with the tables.

Usage:

    python benchmarks/end_to_end.py                        # 5 rounds x 80 steps, batch 32, 1 worker, 1 thread
    python benchmarks/end_to_end.py --variants ours ours-foreach open_clip open_clip-fused open_clip-short-context
    python benchmarks/end_to_end.py --smoke                # tiny sizes, 1 round: checks both trainers run
    python benchmarks/end_to_end.py --device cuda --image-size 224 --patch-size 32 --vision-width 768 \\
        --vision-layers 12 --text-width 512 --text-layers 12 --text-len 77 --projection-dim 512 \\
        --batch-size 256 --workers 8 --threads 16          # ViT-B/32, bf16 (written for CUDA, not yet run)
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
from common import REPO_ROOT, add_size_arguments, describe_machine, markdown_table, median

BENCHMARKS = Path(__file__).resolve().parent
EVENTS_ENV = "HF_UNIFIED_STEP_EVENTS"  # where a trainer process launched here writes its step marks
OPTIMIZER_FIELD = "adam_implementation"  # TrainArguments' AdamW kernel field
REFERENCE = "open_clip"


# ----------------------------------------------------------------------------------------------------------------
# Inside a trainer process: step marks


class StepMarks:
    """Marks of one trainer process's steps: `(event, wall s, main-thread CPU s, process-tree CPU s)` tuples.

    A step starts when the loop asks its DataLoader for the next batch (`data`); then come `backward`, the gradient
    norm (`norm`, when the trainer computes one) and the `optimizer` step, each with a start and an end mark.
    """

    REFRESH_CHILDREN = 20  # marks between two scans for child processes (a scan reads every /proc entry)

    def __init__(self, path: str):
        import psutil

        self.path, self.pid, self.events = path, os.getpid(), []
        self._process, self._children, self._calls = psutil.Process(), [], 0

    def tree_cpu(self) -> float:
        """CPU seconds of this process (all threads) and of its live children (the DataLoader workers)."""
        if self._calls % self.REFRESH_CHILDREN == 0:
            self._children = self._process.children(recursive=True)
        self._calls += 1
        total = time.process_time()
        for child in self._children:
            try:
                times = child.cpu_times()
            except Exception:  # noqa: BLE001 - a worker that just exited
                continue
            total += times.user + times.system
        return total

    def mark(self, event: str) -> None:
        tree = self.tree_cpu() if event == "data_start" else None
        self.events.append((event, time.perf_counter(), time.thread_time(), tree))

    def timed(self, name: str, function):
        def wrapper(*args, **kwargs):
            self.mark(f"{name}_start")
            try:
                return function(*args, **kwargs)
            finally:
                self.mark(f"{name}_end")

        return wrapper

    def write(self) -> None:
        if os.getpid() == self.pid:  # forked DataLoader workers inherit the hooks, not the file
            Path(self.path).write_text(json.dumps(self.events))


def install_step_marks(path: str) -> StepMarks:
    """Hooks the points every PyTorch training loop passes through; writes the marks to `path` at exit."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    marks = StepMarks(path)
    _BaseDataLoaderIter.__next__ = marks.timed("data", _BaseDataLoaderIter.__next__)
    torch.Tensor.backward = marks.timed("backward", torch.Tensor.backward)
    torch.nn.utils.clip_grad_norm_ = marks.timed("norm", torch.nn.utils.clip_grad_norm_)
    torch.nn.utils.get_total_norm = marks.timed("norm", torch.nn.utils.get_total_norm)  # not called by the above
    register_optimizer_step_pre_hook(lambda *_: marks.mark("optimizer_start"))
    register_optimizer_step_post_hook(lambda *_: marks.mark("optimizer_end"))
    atexit.register(marks.write)
    return marks


def _patch_open_clip(fused_adamw: bool) -> None:
    """What the open_clip launcher changes in its process (nothing that touches the model or the step):

    - webdataset >= 0.2.96 ends every shard with an empty `eof_value` sample that open_clip_train 3.x's
      `group_by_keys_nothrow` cannot read (KeyError 'fname'; webdataset#384, open_clip#935); their fix,
      `eof_value=None`, is applied when the installed webdataset has the argument;
    - `fused_adamw`: the `torch.optim.AdamW` that open_clip_train builds uses the fused kernel.
    """
    import functools
    import inspect

    import open_clip_train.data
    import torch
    from webdataset.tariterators import tar_file_expander

    if "eof_value" in inspect.signature(tar_file_expander).parameters:
        open_clip_train.data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)
    if fused_adamw:

        class FusedAdamW(torch.optim.AdamW):
            def __init__(self, params, **kwargs):
                super().__init__(params, **{**kwargs, "fused": True})

        torch.optim.AdamW = FusedAdamW


def _patch_gradient_norm() -> None:
    """The proposed change to the trainer's step, measured here: without clipping (`max_grad_norm: 0`, which the
    trainer passes to `clip_grad_norm_` as an infinite bound) only the norm is computed
    (`torch.nn.utils.get_total_norm`), not also a multiplication of every gradient by 1."""
    import math

    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    clip = Accelerator.clip_grad_norm_

    def clip_grad_norm_(self, parameters, max_norm, norm_type=2):
        if max_norm != math.inf or self.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            return clip(self, parameters, max_norm, norm_type)
        grads = [p.grad for p in parameters if p.grad is not None]
        return torch.nn.utils.get_total_norm(grads, norm_type)  # looked up here: the step marks see it

    Accelerator.clip_grad_norm_ = clip_grad_norm_


def run_trainer(argv: list[str]) -> None:
    """The launcher (`end_to_end.py --run-trainer KIND ...`): step marks, then the trainer's own entry point.

    KIND `ours[+norm]`: `training/train.py ARGS`, run as `__main__` (`+norm`: `_patch_gradient_norm`). KIND
    `open_clip[+fused]`: `MODEL_CONFIG_DIR ARGS`, which registers the model config folder
    (`open_clip.add_model_config`) and runs `open_clip_train.main`.
    """
    kind, *args = argv
    if os.environ.get(EVENTS_ENV):
        install_step_marks(os.environ[EVENTS_ENV])
    if kind.startswith("ours"):
        import runpy

        if kind == "ours+norm":
            _patch_gradient_norm()

        sys.argv = [str(REPO_ROOT / "training" / "train.py"), *args]
        runpy.run_path(sys.argv[0], run_name="__main__")
        return
    import open_clip
    from open_clip_train.main import main as open_clip_main

    _patch_open_clip(fused_adamw=kind == "open_clip+fused")
    config_dir, *args = args
    open_clip.add_model_config(config_dir)
    open_clip_main(args)


# ----------------------------------------------------------------------------------------------------------------
# The runs


@dataclass
class Variant:
    """One trainer setting under test."""

    key: str
    name: str
    trainer: str  # "ours" | "open_clip"
    adam: str = "fused"  # ours: the `adam_implementation`; open_clip: "default" or "fused" (patched)
    short_context: bool = False  # open_clip: context length = the longest caption of the shards
    norm_only: bool = False  # ours: the gradient norm without the clipping pass (`_patch_gradient_norm`)


VARIANTS = {
    variant.key: variant
    for variant in (
        Variant("ours", "train.py (UniCL, CLIP towers, AdamW fused)", "ours"),
        Variant("ours-foreach", "train.py (UniCL, CLIP towers, AdamW foreach)", "ours", adam="foreach"),
        Variant("ours-norm", "train.py, AdamW fused, norm without clipping pass (patched in)", "ours", norm_only=True),
        Variant(REFERENCE, "open_clip_train (as shipped: torch's default AdamW)", "open_clip", adam="default"),
        Variant("open_clip-fused", "open_clip_train + AdamW fused (patched in)", "open_clip"),
        Variant(
            "open_clip-short-context",
            "open_clip_train, context = longest caption",
            "open_clip",
            adam="default",
            short_context=True,
        ),
    )
}


@dataclass
class Setup:
    """What every run shares: shards, tokenizer, model configs (written once into the work folder)."""

    work: Path
    sizes: object  # throughput.Sizes
    shards: list[Path]
    tokenizer: Path
    longest_caption: int
    args: argparse.Namespace
    open_clip_models: dict[int, str] = field(default_factory=dict)  # context length -> registered model name


def longest_caption_tokens(shards: list[Path], tokenizer) -> int:
    """Tokens of the longest caption (start and end tokens included) in the shards."""
    longest = 0
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".txt"):
                    text = tar.extractfile(member).read().decode()
                    longest = max(longest, len(tokenizer(text)["input_ids"]))
    return longest


def prepare(args) -> Setup:
    """Shards, the CLIP BPE tokenizer folder and both trainers' model configs in `args.work_dir`."""
    import throughput

    from hf_unified.tokenization import clip_tokenizer_from_bpe_gz
    from hf_unified.training.data import synthetic_data

    work = Path(args.work_dir).resolve()
    sizes = throughput.Sizes.from_args(args)  # CLIP's 49408-token vocabulary
    # Enough samples that no worker's share runs out within a run (open_clip reads each shard once an epoch).
    num_shards = max(4, args.workers)
    num_samples = max(1024, int(1.25 * args.steps * args.batch_size))
    shard_dir = work / f"shards-{num_samples}x{args.image_size}px-{num_shards}"
    synthetic_data.ensure_dataset(
        shard_dir, num_train=num_samples, num_eval=1, num_train_shards=num_shards, image_size=args.image_size
    )
    shards = sorted(shard_dir.glob("train-*.tar"))
    tokenizer_dir = work / f"clip-bpe-{args.text_len}"
    tokenizer = clip_tokenizer_from_bpe_gz(model_max_length=args.text_len)
    tokenizer.save_pretrained(tokenizer_dir)
    setup = Setup(work, sizes, shards, tokenizer_dir, longest_caption_tokens(shards, tokenizer), args)
    config_dir = work / "open_clip_models"
    config_dir.mkdir(parents=True, exist_ok=True)
    short = any(VARIANTS[key].short_context for key in args.variants)
    for context in {args.text_len, min(args.text_len, setup.longest_caption) if short else args.text_len}:
        config = throughput.open_clip_model_config(sizes)
        config["text_cfg"]["context_length"] = context
        vision = f"{args.vision_width}x{args.vision_layers}-p{args.patch_size}-{args.image_size}px"
        name = f"e2e-{vision}-text{args.text_width}x{args.text_layers}-ctx{context}"
        (config_dir / f"{name}.json").write_text(json.dumps(config, indent=2))
        setup.open_clip_models[context] = name
    return setup


def ours_config(setup: Setup, variant: Variant) -> dict:
    """`training/train.py`'s YAML for this run: the same towers, data, schedule and optimizer settings."""
    import throughput

    args, sizes = setup.args, setup.sizes
    text = {"model_type": "clip_text_model", **throughput.clip_text_kwargs(sizes)}
    return {
        "model_type": "unicl",
        "model_config": {
            "projection_dim": sizes.projection_dim,
            "logit_scale_init_value": 2.6592,  # ln(1 / 0.07), open_clip's init
            "use_labels": False,  # CLIP's loss, as open_clip trains
            "vision_config": {"model_type": "clip_vision_model", **throughput.clip_vision_kwargs(sizes)},
            "text_config": text,  # token ids come from the tokenizer
        },
        "tokenizer_name_or_path": str(setup.tokenizer),
        "max_text_length": sizes.text_len,
        "train_data": [str(setup.shards[0].parent / "train-*.tar")],
        "text_column": ["txt"],
        "label_column": ["none"],
        "eval_data": "",
        "class_names_file": None,
        "do_eval": False,
        "image_size": sizes.image_size,
        "resize_ratio": 1.0,
        "crop_scale_min": 0.9,  # open_clip's training RandomResizedCrop scale (0.9, 1.0); no flip in either
        "shuffle_buffer_size": 1000,  # open_clip: a 5000-sample buffer that starts once 1000 are in
        "num_workers": args.workers,
        "per_device_train_batch_size": sizes.batch_size,
        "max_steps": args.steps,
        "learning_rate": 5.0e-4,
        "warmup_steps": args.warmup_steps,
        "weight_decay": 0.1,
        "adam_beta1": 0.9,
        "adam_beta2": 0.98,
        "adam_epsilon": 1.0e-6,
        OPTIMIZER_FIELD: variant.adam,
        "max_grad_norm": 0,  # open_clip clips only with --grad-clip-norm
        "mixed_precision": "bf16" if args.device.startswith("cuda") else "no",
        "use_cpu": not args.device.startswith("cuda"),
        "torch_compile": args.compile,
        "logging_steps": args.log_every,
        "save_steps": 0,
        "disable_tqdm": True,
        "seed": 0,
    }


def open_clip_arguments(setup: Setup, variant: Variant, run_dir: Path) -> list[str]:
    args, sizes = setup.args, setup.sizes
    context = min(args.text_len, setup.longest_caption) if variant.short_context else args.text_len
    first, last = (re.search(r"(\d+)\.tar$", shard.name).group(1) for shard in (setup.shards[0], setup.shards[-1]))
    arguments = [
        "--train-data", str(setup.shards[0].parent / f"train-{{{first}..{last}}}.tar"),
        "--dataset-type", "webdataset",
        "--train-num-samples", str(args.steps * sizes.batch_size),
        "--batch-size", str(sizes.batch_size),
        "--epochs", "1",
        "--workers", str(args.workers),
        "--precision", "amp_bf16" if args.device.startswith("cuda") else "fp32",
        "--device", args.device,
        "--model", setup.open_clip_models[context],
        "--lr", "5e-4", "--warmup", str(args.warmup_steps), "--wd", "0.1",
        "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6",
        "--save-frequency", "0", "--zeroshot-frequency", "0", "--val-frequency", "0",
        "--log-every-n-steps", str(args.log_every),
        "--logs", str(run_dir), "--name", "open_clip", "--report-to", "", "--seed", "0",
    ]  # fmt: skip
    return arguments + (["--torchcompile"] if args.compile else [])


def command(setup: Setup, variant: Variant, run_dir: Path) -> list[str]:
    launcher = [sys.executable, str(Path(__file__).resolve()), "--run-trainer"]
    if variant.trainer == "ours":
        config = run_dir / "config.json"  # JSON is YAML: train.py reads it with --config
        config.write_text(json.dumps(ours_config(setup, variant), indent=2))
        kind = "ours+norm" if variant.norm_only else "ours"
        return launcher + [kind, "--config", str(config), "--output_dir", str(run_dir / "output")]
    kind = "open_clip+fused" if variant.adam == "fused" else "open_clip"
    return launcher + [kind, str(setup.work / "open_clip_models"), *open_clip_arguments(setup, variant, run_dir)]


@dataclass
class Window:
    """One log record's span: the steps after `first_step - 1` up to `last_step`, and their seconds."""

    first_step: int
    last_step: int
    seconds: float


def ours_windows(run_dir: Path, batch_size: int) -> list[Window]:
    """`training_log.jsonl`: each record's `samples_per_second` covers the steps since the previous record that had
    one (a skipped step's record has none and does not restart the trainer's window)."""
    windows, previous = [], 0
    for line in (run_dir / "output" / "training_log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("samples_per_second"):
            samples = batch_size * (record["step"] - previous)
            windows.append(Window(previous + 1, record["step"], samples / record["samples_per_second"]))
            previous = record["step"]
    return windows


OPEN_CLIP_LINE = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/\d+ .*?Batch \(t\): ([0-9.]+)")


def open_clip_windows(run_dir: Path, batch_size: int) -> list[Window]:
    """`out.log`: each `Train Epoch` line gives the samples seen and `Batch (t)`, the mean step time since the
    previous line (open_clip resets its meters after every line)."""
    windows, previous = [], 0
    for match in OPEN_CLIP_LINE.finditer((run_dir / "open_clip" / "out.log").read_text()):
        step = int(match.group(1)) // batch_size
        windows.append(Window(previous + 1, step, (step - previous) * float(match.group(2))))
        previous = step
    return windows


def steady_rate(windows: list[Window], batch_size: int, warmup_steps: int) -> float:
    """Samples over seconds of the windows that start after the first `warmup_steps` steps."""
    steady = [w for w in windows if w.first_step > warmup_steps]
    if not steady:
        raise ValueError(f"no log window starts after step {warmup_steps}: raise --steps or lower --warmup-steps")
    samples = sum(batch_size * (w.last_step - w.first_step + 1) for w in steady)
    return samples / sum(w.seconds for w in steady)


STEP_PARTS = ("data wait", "inputs + forward + loss", "backward", "gradient norm", "optimizer step", "rest of loop")


def step_parts(events: list, warmup_steps: int) -> dict:
    """Per steady step, mean main-thread CPU and wall ms of each part (`STEP_PARTS`, and the whole `step`), and the
    process tree's CPU seconds over the steady steps (`tree_cpu_s`, with their number, `steps`).

    A step spans one `data_start` mark to the next; the steps before `warmup_steps` and the last (unclosed) one are
    left out. "inputs + forward + loss" runs from the batch's arrival to the first `backward_start`.
    """
    starts = [i for i, event in enumerate(events) if event[0] == "data_start"]
    steps = list(zip(starts[warmup_steps:-1], starts[warmup_steps + 1 :]))
    if not steps:
        raise ValueError(f"the trainer marked {len(starts)} steps, none steady after step {warmup_steps}")
    totals = {part: [0.0, 0.0] for part in (*STEP_PARTS, "step")}
    names = {"data": "data wait", "backward": "backward", "norm": "gradient norm", "optimizer": "optimizer step"}
    for begin, end in steps:
        parts = {part: [0.0, 0.0] for part in STEP_PARTS}
        opened, forward_start = {}, None
        for event, wall, cpu, _tree in events[begin:end]:
            name, _, phase = event.rpartition("_")
            if phase == "start":
                opened[name] = (wall, cpu)
                if name == "backward" and forward_start is not None:
                    parts["inputs + forward + loss"] = [wall - forward_start[0], cpu - forward_start[1]]
                    forward_start = None
            elif name in opened:
                part = parts[names[name]]
                part[0] += wall - opened[name][0]
                part[1] += cpu - opened[name][1]
                if name == "data" and parts["inputs + forward + loss"] == [0.0, 0.0]:
                    forward_start = (wall, cpu)
        whole = [events[end][1] - events[begin][1], events[end][2] - events[begin][2]]
        parts["rest of loop"] = [whole[i] - sum(part[i] for part in parts.values()) for i in (0, 1)]
        parts["step"] = whole
        for part, (wall, cpu) in parts.items():
            totals[part][0] += wall
            totals[part][1] += cpu
    result = {
        part: {"wall_ms": 1e3 * w / len(steps), "cpu_ms": 1e3 * c / len(steps)} for part, (w, c) in totals.items()
    }
    result["tree_cpu_s"] = events[steps[-1][1]][3] - events[steps[0][0]][3]
    result["steps"] = len(steps)
    return result


def run_once(setup: Setup, variant: Variant, run_dir: Path) -> dict:
    """Runs one trainer to its end; returns its steady figures, step parts and whole-run times."""
    args = setup.args
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    environment = {
        **os.environ,
        EVENTS_ENV: str(run_dir / "step_marks.json"),
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if not args.device.startswith("cuda"):
        environment["CUDA_VISIBLE_DEVICES"] = ""
    load_before = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with (run_dir / "console.log").open("w") as console:
        completed = subprocess.run(
            command(setup, variant, run_dir),
            env=environment,
            cwd=run_dir,
            stdout=console,
            stderr=subprocess.STDOUT,
            timeout=args.run_timeout,
        )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        tail = "\n".join((run_dir / "console.log").read_text().splitlines()[-25:])
        raise RuntimeError(f"{variant.name} exited with status {completed.returncode}; its last lines:\n{tail}")
    windows = (ours_windows if variant.trainer == "ours" else open_clip_windows)(run_dir, setup.sizes.batch_size)
    parts = step_parts(json.loads((run_dir / "step_marks.json").read_text()), args.warmup_steps)
    return {
        "samples_per_s": steady_rate(windows, setup.sizes.batch_size, args.warmup_steps),
        "samples_per_cpu_s": parts["steps"] * setup.sizes.batch_size / parts["tree_cpu_s"],
        "parts": parts,
        "run_wall_s": wall,
        "run_cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "load": (load_before, os.getloadavg()[0]),
    }


def parameter_counts(setup: Setup) -> dict[str, float]:
    """Millions of parameters of the model each trainer builds (both from the configs written for the runs)."""
    import open_clip
    from transformers import AutoModel

    from hf_unified import UniCLConfig

    counts = {}
    open_clip.add_model_config(setup.work / "open_clip_models")
    for context, name in setup.open_clip_models.items():
        model = open_clip.create_model(name, device="cpu")
        counts[context] = sum(p.numel() for p in model.parameters()) / 1e6
    config = ours_config(setup, VARIANTS["ours"])["model_config"]
    model = AutoModel.from_config(UniCLConfig(**config))
    ours = sum(p.numel() for p in model.parameters()) / 1e6
    return {"ours": ours, **{f"open_clip_ctx{c}": n for c, n in counts.items()}}


def run(args) -> dict:
    setup = prepare(args)
    variants = [VARIANTS[key] for key in args.variants]
    results = {variant.key: [] for variant in variants}
    loads = []
    for round_index in range(args.rounds):
        shift = round_index % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            run_dir = setup.work / "runs" / f"round{round_index}-{variant.key}"
            result = run_once(setup, variant, run_dir)
            results[variant.key].append(result)
            loads += result["load"]
            print(
                f"  round {round_index + 1}/{args.rounds} {variant.name}: {result['samples_per_s']:.1f} samples/s, "
                f"{result['samples_per_cpu_s']:.1f} per CPU-s, load {result['load'][0]:.1f}-{result['load'][1]:.1f}",
                flush=True,
            )
    return {
        "results": results,
        "variants": variants,
        "params": parameter_counts(setup),
        "loads": loads,
        "setup": setup,
    }


# ----------------------------------------------------------------------------------------------------------------
# Tables


def _spread(values: list[float], digits: int = 1) -> str:
    return f"{min(values):.{digits}f} / {median(values):.{digits}f} / {max(values):.{digits}f}"


def _ratio(values: list[float], reference: list[float]) -> str:
    ratios = [v / r for v, r in zip(values, reference)]
    return f"{median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def tables(outcome: dict) -> str:
    setup, results, variants = outcome["setup"], outcome["results"], outcome["variants"]
    args, sizes = setup.args, setup.sizes
    reference = results.get(REFERENCE)
    header = [
        "trainer",
        "params (M)",
        "samples/s, its log (min / median / max)",
        "vs open_clip",
        "samples per CPU-s (min / median / max)",
        "vs open_clip",
        "run wall s",
        "run CPU s",
    ]
    rows = []
    short = min(args.text_len, setup.longest_caption)
    for variant in variants:
        runs = results[variant.key]
        rate, per_cpu = [r["samples_per_s"] for r in runs], [r["samples_per_cpu_s"] for r in runs]
        params = outcome["params"][
            "ours"
            if variant.trainer == "ours"
            else f"open_clip_ctx{short if variant.short_context else args.text_len}"
        ]
        rows.append(
            [
                variant.name + (f" ({short} tokens)" if variant.short_context else ""),
                f"{params:.2f}",
                _spread(rate),
                _ratio(rate, [r["samples_per_s"] for r in reference]) if reference else "-",
                _spread(per_cpu),
                _ratio(per_cpu, [r["samples_per_cpu_s"] for r in reference]) if reference else "-",
                f"{median([r['run_wall_s'] for r in runs]):.0f}",
                f"{median([r['run_cpu_s'] for r in runs]):.0f}",
            ]
        )
    loads = outcome["loads"]
    title = (
        f"**end to end: ViT {sizes.vision_width}w/{sizes.vision_layers}L patch {sizes.patch_size} at "
        f"{sizes.image_size}px, text {sizes.text_width}w/{sizes.text_layers}L x {sizes.text_len} positions, batch "
        f"{sizes.batch_size}, {args.steps} steps (steady: after step {args.warmup_steps}), {args.workers} data "
        f"worker(s), {args.threads} torch thread(s), {args.device}; {args.rounds} interleaved rounds; load average "
        f"{min(loads):.1f}-{max(loads):.1f}**"
    )
    parts_header = ["part of a step (main process)"] + [v.name for v in variants]
    parts_rows = []
    for part in (*STEP_PARTS, "step"):
        row = [part if part != "step" else "whole step"]
        for variant in variants:
            runs = results[variant.key]
            cpu = median([r["parts"][part]["cpu_ms"] for r in runs])
            wall = median([r["parts"][part]["wall_ms"] for r in runs])
            row.append(f"{cpu:.1f} / {wall:.1f}")
        parts_rows.append(row)
    notes = (
        f"Captions: the longest is {setup.longest_caption} tokens. train.py pads each batch to its longest caption; "
        f"open_clip pads every caption to its context length ({args.text_len})."
    )
    return (
        f"{title}\n\n{markdown_table(header, rows)}\n\n{notes}\n\n"
        f"**where a steady step goes: main-thread CPU ms / wall ms per step (median over rounds)**\n\n"
        f"{markdown_table(parts_header, parts_rows)}"
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["ours", REFERENCE], choices=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps per run")
    parser.add_argument("--warmup-steps", type=int, default=10, help="steps left out of the steady figures")
    parser.add_argument("--log-every", type=int, default=10, help="both trainers log every N steps")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of each trainer")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each trainer")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="train.py --torch_compile, open_clip --torchcompile")
    add_size_arguments(parser, text_len_help="text positions (open_clip's context length)")
    parser.add_argument("--work-dir", default="outputs/end_to_end", help="shards, configs and run folders")
    parser.add_argument("--run-timeout", type=float, default=1800, help="seconds before a run is stopped")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks that both trainers run")
    args = parser.parse_args(argv)
    if args.smoke:
        args.image_size, args.patch_size, args.vision_width, args.vision_layers = 32, 16, 64, 1
        args.text_width, args.text_layers, args.text_len, args.projection_dim = 64, 1, 16, 32
        args.batch_size, args.steps, args.warmup_steps, args.log_every, args.rounds = 8, 6, 2, 2, 1
    if args.steps <= args.warmup_steps + args.log_every:
        parser.error(f"--steps ({args.steps}) must exceed --warmup-steps + --log-every for a steady window")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    print(f"machine: {describe_machine(args.device)} (each trainer: OMP_NUM_THREADS={args.threads})", flush=True)
    outcome = run(args)
    print("\n" + tables(outcome))
    if args.json:
        serialisable = {"results": outcome["results"], "params": outcome["params"], "loads": outcome["loads"]}
        Path(args.json).write_text(json.dumps(serialisable, indent=2))
    return outcome


if __name__ == "__main__":
    if sys.argv[1:2] == ["--run-trainer"]:
        run_trainer(sys.argv[2:])
    else:
        main()
