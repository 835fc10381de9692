"""Exact large-batch contrastive training on one CPU: peak memory and samples/s of an effective batch of 4096 trained
as 16 micro-batches of 256, against one batch of 4096.

One optimizer step's forward and backward passes (the optimizer update is the same in every mode and left out) of a
small UniCL model (CLIP towers, CLIP loss) on synthetic inputs, in four modes:

- `one batch`: the reference, all 4096 samples in one forward pass (where memory allows);
- `full_batch`: `hf_unified.training.engine.grad_cache.FullBatchStep` (GradCache): a no-grad pass over the 16
  micro-batches, the loss once over all 4096 embeddings, then each micro-batch re-run from its random state with its
  cached embedding gradients; the same loss and gradient as `one batch`;
- `accum_freq`: open_clip's `--accum-freq 16` (`open_clip_train/train.py`, re-implemented here on the same model): a
  no-grad pass, then each micro-batch re-run with its live embeddings spliced into the cached ones, the loss over all
  4096 computed and back-propagated once per micro-batch (16 loss evaluations, no random state restored);
- `micro_batch`: plain accumulation, each micro-batch contrasted only with itself (another loss: 16 losses of 256);
- `loss alone` (not a training mode): the full-batch loss's forward and backward on ready embeddings, the part of
  the `full_batch` and `accum_freq` figures that does not depend on the micro-batch.

Peak memory: Linux's resident-set high-water mark (`VmHWM`, reset before each step through `/proc/self/clear_refs`)
minus the resident set at the step's start, with large allocations served by mmap so that freed tensors leave the
resident set (see `loss_scaling.py`). The loss's logits are part of it: a full-batch loss in one process holds
`[4096, 4096]` matrices whatever the micro-batch (on `R` ranks each holds `[4096 / R, 4096]`), so the figure that
must follow the micro-batch is the towers' share: a mode's peak minus `loss alone`.

Rounds are interleaved (every mode once per round); the table gives min / median / max over rounds of each round's
median step. The gradient columns check each mode against `one batch` (same weights, same inputs, no dropout).

Usage:

    python benchmarks/large_batch.py                       # 16 x 256 against 1 x 4096, 3 rounds (minutes)
    python benchmarks/large_batch.py --smoke               # 4 x 16, seconds
"""

from __future__ import annotations

import argparse
import gc
import time

import common  # noqa: F401  (puts the repository on sys.path)
import torch
from common import (
    allocate_large_tensors_with_mmap,
    describe_machine,
    markdown_table,
    median,
    reset_high_water_mark,
    status_bytes,
)
from transformers import CLIPTextConfig, CLIPVisionConfig

from hf_unified import UniCLConfig, UniCLModel
from hf_unified.training.engine.grad_cache import FullBatchStep

MODES = ("one batch", "full_batch", "accum_freq", "micro_batch", "loss alone")


def build_model(width: int, layers: int, image_size: int, text_length: int) -> UniCLModel:
    torch.manual_seed(0)
    heads = max(1, width // 32)
    vision = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=8,
    )
    text = CLIPTextConfig(
        vocab_size=1000,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=text_length,
        bos_token_id=998,
        eos_token_id=999,
        pad_token_id=999,
    )
    return UniCLModel(UniCLConfig(vision_config=vision, text_config=text, projection_dim=width)).train()


def synthetic_micro_batches(count: int, size: int, image_size: int, text_length: int) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        input_ids = torch.randint(0, 998, (size, text_length), generator=generator)
        input_ids[:, -1] = 999
        batches.append(
            {
                "input_ids": input_ids,
                "attention_mask": torch.ones_like(input_ids),
                "pixel_values": torch.randn((size, 3, image_size, image_size), generator=generator),
            }
        )
    return batches


def one_batch_step(model, batches, accelerator) -> torch.Tensor:
    whole = {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}
    loss = model(**whole, return_loss=True).loss
    loss.backward()
    return loss.detach()


def accum_freq_step(model, batches, accelerator) -> torch.Tensor:
    """open_clip's `--accum-freq`: cached no-grad features, then per micro-batch a re-run whose live features are
    spliced into the cached ones and the whole loss computed and back-propagated."""
    with torch.no_grad():
        cached = [model(**batch) for batch in batches]
        views, texts = [o.image_view_embeds for o in cached], [o.text_embeds for o in cached]
    for index, batch in enumerate(batches):
        outputs = model(**batch)
        loss = model.contrastive_loss(
            torch.cat(views[:index] + [outputs.image_view_embeds] + views[index + 1 :]),
            torch.cat(texts[:index] + [outputs.text_embeds] + texts[index + 1 :]),
        )
        loss.backward()
    return loss.detach()


def micro_batch_step(model, batches, accelerator) -> torch.Tensor:
    total = torch.zeros(())
    for batch in batches:
        loss = model(**batch, return_loss=True).loss / len(batches)
        loss.backward()
        total += loss.detach()
    return total


def full_batch_step(model, batches, accelerator) -> torch.Tensor:
    """The trainer's `full_batch` step (`FullBatchStep`), its loss (it also returns the loss's terms)."""
    return FullBatchStep()(model, batches, accelerator)[0]


def embed_all(model, batches) -> dict:
    """Every sample's embeddings, without gradient (the input of `loss alone`)."""
    with torch.no_grad():
        outputs = [model(**batch) for batch in batches]
        return {
            "image_view_embeds": torch.cat([o.image_view_embeds for o in outputs]),
            "text_embeds": torch.cat([o.text_embeds for o in outputs]),
        }


def loss_alone_step(model, embeddings: dict, accelerator) -> torch.Tensor:
    """Not a training mode: the full-batch loss's forward and backward on ready embeddings of every sample, the
    part of the `full_batch` and `accum_freq` peaks that does not depend on the micro-batch."""
    views = embeddings["image_view_embeds"].clone().requires_grad_()
    texts = embeddings["text_embeds"].clone().requires_grad_()
    loss = model.contrastive_loss(views, texts)
    loss.backward()
    return loss.detach()


STEPS = {
    "one batch": one_batch_step,
    "full_batch": full_batch_step,
    "accum_freq": accum_freq_step,
    "micro_batch": micro_batch_step,
    "loss alone": loss_alone_step,
}


def run_step(mode: str, model, inputs, accelerator) -> dict:
    """One step of `mode` on `inputs` (its micro-batches): seconds, peak bytes above the start, the loss and the
    gradients."""
    model.zero_grad(set_to_none=True)
    gc.collect()
    have_high_water_mark = reset_high_water_mark()
    before = status_bytes("VmRSS")
    start = time.perf_counter()
    loss = STEPS[mode](model, inputs, accelerator)
    seconds = time.perf_counter() - start
    after = status_bytes("VmHWM")
    peak = after - before if have_high_water_mark and None not in (before, after) else float("nan")
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return {"seconds": seconds, "peak_bytes": peak, "loss": loss.item(), "grads": grads}


def compare_gradients(grads: dict, reference: dict) -> tuple[float, float]:
    """(largest relative error of a tower parameter's gradient, temperature gradient / the reference's)."""
    largest = max(g.abs().max().item() for g in reference.values())
    worst = 0.0
    for name, expected in reference.items():
        if name == "logit_scale":
            continue
        scale = max(expected.abs().max().item(), 1e-3 * largest)  # (rounding noise of vanishing gradients)
        worst = max(worst, (grads[name] - expected).abs().max().item() / scale)
    return worst, (grads["logit_scale"] / reference["logit_scale"]).item()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--micro-batches", type=int, default=16)
    parser.add_argument("--micro-batch-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=64, help="width of both towers and of the embedding")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks per tower")
    parser.add_argument("--image-size", type=int, default=32, help="(patch 8: 16 patches + CLS)")
    parser.add_argument("--text-length", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (every mode once per round)")
    parser.add_argument("--steps", type=int, default=1, help="measured steps per mode and round (after a warm-up)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the cores are shared)")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.micro_batches, args.micro_batch_size, args.width, args.rounds, args.steps = 4, 16, 32, 1, 1
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    allocate_large_tensors_with_mmap()
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = build_model(args.width, args.layers, args.image_size, args.text_length)
    batches = synthetic_micro_batches(args.micro_batches, args.micro_batch_size, args.image_size, args.text_length)
    effective = args.micro_batches * args.micro_batch_size
    parameters = sum(p.numel() for p in model.parameters())
    print(f"machine: {describe_machine()}")
    print(
        f"model: UniCL, CLIP towers {args.width} wide x {args.layers} blocks, {parameters / 1e6:.2f}M parameters; "
        f"effective batch {effective} = {args.micro_batches} x {args.micro_batch_size}",
        flush=True,
    )
    inputs = {mode: batches for mode in args.modes}
    if "loss alone" in inputs:
        inputs["loss alone"] = embed_all(model, batches)
    for mode in args.modes:  # warm-up (allocator, thread pools, lazy initialisation)
        run_step(mode, model, batches[:1] if mode == "one batch" else inputs[mode], accelerator)

    per_round: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    checks: dict[str, dict] = {}
    for round_index in range(args.rounds):
        for mode in args.modes:
            steps = [run_step(mode, model, inputs[mode], accelerator) for _ in range(args.steps)]
            per_round[mode].append(
                {
                    "seconds": median([s["seconds"] for s in steps]),
                    "peak_bytes": median([s["peak_bytes"] for s in steps]),
                    "loss": steps[-1]["loss"],
                }
            )
            checks[mode] = steps[-1]
            print(
                f"  round {round_index + 1}: {mode}: {per_round[mode][-1]['seconds']:.2f} s, "
                f"peak {per_round[mode][-1]['peak_bytes'] / 2**20:.0f} MiB",
                flush=True,
            )

    reference = checks.get("one batch")
    baseline = median([r["seconds"] for r in per_round["one batch"]]) if "one batch" in per_round else None
    results, rows = {}, []
    for mode in args.modes:
        rounds = per_round[mode]
        throughput = sorted(effective / r["seconds"] for r in rounds)
        peaks = sorted(r["peak_bytes"] / 2**20 for r in rounds)
        seconds = median([r["seconds"] for r in rounds])
        gradient_error, temperature_ratio = (
            compare_gradients(checks[mode]["grads"], reference["grads"])
            if reference and mode != "loss alone"
            else (float("nan"),) * 2
        )
        results[mode] = {
            "samples_per_second": throughput,
            "peak_mib": peaks,
            "seconds": seconds,
            "loss": rounds[-1]["loss"],
            "gradient_error": gradient_error,
            "temperature_gradient_ratio": temperature_ratio,
        }
        shape = {"one batch": f"1 x {effective}", "loss alone": f"{effective} embeddings"}.get(
            mode, f"{args.micro_batches} x {args.micro_batch_size}"
        )
        rows.append(
            [
                mode,
                shape,
                " / ".join(f"{p:.0f}" for p in (peaks[0], median(peaks), peaks[-1])),
                " / ".join(f"{t:.0f}" for t in (throughput[0], median(throughput), throughput[-1])),
                f"{seconds / baseline:.2f}" if baseline else "n/a",
                f"{rounds[-1]['loss']:.4f}",
                "n/a" if gradient_error != gradient_error else f"{gradient_error:.1e}",
                "n/a" if temperature_ratio != temperature_ratio else f"{temperature_ratio:.2f}",
            ]
        )
    print(
        f"\n### effective batch {effective} ({args.micro_batches} x {args.micro_batch_size}), one step's forward + "
        f"backward, {args.threads} thread(s), {args.rounds} interleaved rounds (min / median / max)"
    )
    print(
        markdown_table(
            [
                "mode",
                "batches",
                "peak MiB above start",
                "samples/s",
                "time vs one batch",
                "loss",
                "max rel. grad error vs one batch",
                "temperature grad / one batch's",
            ],
            rows,
        )
    )
    return results


if __name__ == "__main__":
    main()
