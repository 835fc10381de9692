"""Training and inference throughput of hf_unified's models against transformers' CLIPModel and open_clip.

Every candidate is built at identical widths (default: ViT 192 wide / 4 layers / patch 16 at 64 px, text 128 wide /
4 layers, 32 tokens, vocabulary 49408, 128-d embeddings, QuickGELU everywhere) and measured interleaved in one
process: each round runs every candidate once in a rotated order. Rates are given as min / median / max over
rounds; ratios are taken against transformers' `CLIPModel` (SDPA) within each round, then their median (min-max) is
reported, so a slow-down of the shared machine during one round hits every candidate alike. On CPU the clock is
this process's CPU time (`time.process_time`, 1 torch thread by default), which other jobs on shared cores do not
inflate the way they inflate wall time; on CUDA it is the wall clock after synchronising.

Measured:

- training step: forward, contrastive loss, backward and `torch.optim.AdamW.step` (samples/s, one sample = one
  image-text pair; UniCLIP encodes `num_views` augmented views per image, as it trains);
- inference: image embeddings under `torch.inference_mode` (images/s);
- FLOPs of both (`torch.utils.flop_counter`: matmuls, convolutions, attention), the speed ratio they predict against
  `CLIPModel` and the share of that prediction the measurement reaches ("measured / predicted").

Groups:

- `towers` (the main table): CLIPModel, open_clip CLIP, UniCL with CLIPVisionConfig + CLIPTextConfig towers,
  UniCL with labels (UniCL loss), UniCLIP (2 views, and 1 view).
- `equal-width` (MS-CLIP shares weights between modalities, so both towers need one width, default 192): CLIPModel,
  UniCL, MS-CLIP "shared", MS-CLIP "separate" and the released MS-CLIP-S layout (conv stem, parallel branch).
- `patch-dropout` (FLIP): each model type (UniCL with CLIP towers, UniCLIP with 2 views, MS-CLIP-S at the equal
  width) at patch dropout 0, 0.5 and 0.75, on an image-heavy step (`--patch-dropout-image-size`, default 160 px: 100
  patches of 16); training samples/s and memory, each against the same model at 0. Memory: on CUDA the step's peak
  allocated memory; on CPU (no allocator statistics) the activations the step saves for its backward pass (bytes of
  the distinct tensors autograd keeps, parameters excluded: the part of the peak that patch dropout shrinks).

Usage:

    python benchmarks/throughput.py                      # CPU, 1 thread, both groups, prints markdown tables
    python benchmarks/throughput.py --smoke              # seconds: tiny sizes, 1 round (CI)
    python benchmarks/throughput.py --device cuda --image-size 224 --patch-size 32 --vision-width 768 \
        --vision-layers 12 --text-width 512 --text-layers 12 --batch-size 256 --compile   # ViT-B/32, bf16, MFU

On CUDA the step runs under bf16 autocast with fused AdamW, optionally `torch.compile`d (FLOPs are counted on the
eager step), and the model FLOPs utilisation is `FLOPs per step * steps/s / --peak-tflops`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
import torch
import torch.nn.functional as F
from common import add_size_arguments, describe_machine, markdown_table, median, msclip_s_layout

EOS_TOKEN_ID = 49407
CLIP_REFERENCE = "transformers CLIPModel (sdpa)"  # the denominator of every ratio, always measured
# The same CLIPModel built again after every other candidate, also always measured: the model built first ran about
# 2% faster than the same model built later in one process (memory placement, most likely), so candidates are read
# against this row as well as against the reference.
CLIP_CONTROL = "transformers CLIPModel (sdpa), built last (control)"


@dataclass
class Sizes:
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    text_width: int
    text_layers: int
    text_len: int
    vocab_size: int
    projection_dim: int
    batch_size: int

    def heads(self, width: int) -> int:
        return max(1, width // 64)

    @classmethod
    def from_args(cls, args) -> Sizes:
        """The sizes `common.add_size_arguments` parsed (a parser without `--vocab-size` gets CLIP's 49408)."""
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{name: getattr(args, name, 49408 if name == "vocab_size" else None) for name in names})

    def equal_width(self, width: int) -> Sizes:
        """The `equal-width` group's sizes: both towers `width` wide with the vision tower's depth (MS-CLIP's
        one stack needs one width)."""
        return dataclasses.replace(self, vision_width=width, text_width=width, text_layers=self.vision_layers)


@dataclass
class Candidate:
    """One model under test: `train_step()` runs one optimizer step, `infer()` one batch of image embeddings."""

    name: str
    model: torch.nn.Module
    train_step: Callable[[], None]
    infer: Callable[[], None]
    samples_per_step: int
    eager_step: Callable[[], None]  # `train_step` without torch.compile (FLOPs are counted on it)


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def make_batch(sizes: Sizes, device: str, seed: int = 0) -> dict:
    """Random images, token ids with an end-of-text token at a random length (the rest padded), random labels."""
    generator = torch.Generator().manual_seed(seed)
    b, n = sizes.batch_size, sizes.text_len
    pixel_values = torch.randn(b, 3, sizes.image_size, sizes.image_size, generator=generator)
    # Ordinary tokens stay below the end-of-text id, so open_clip's argmax pooling and HF's eos pooling agree.
    vocab_top = min(sizes.vocab_size - 1, EOS_TOKEN_ID)
    input_ids = torch.randint(1, vocab_top, (b, n), generator=generator)
    lengths = torch.randint(n // 2, n + 1, (b,), generator=generator)
    positions = torch.arange(n)[None, :]
    eos_id = min(EOS_TOKEN_ID, sizes.vocab_size - 1)
    input_ids = torch.where(positions == lengths[:, None] - 1, eos_id, input_ids)
    input_ids = torch.where(positions >= lengths[:, None], 0, input_ids)
    attention_mask = (positions < lengths[:, None]).long()
    labels = torch.randint(0, max(2, b // 4), (b,), generator=generator)  # a few items share each class
    labels[: b // 2] = -1  # half image-text pairs, half image-label data, as UniCL mixes them
    batch = {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def clip_text_kwargs(sizes: Sizes) -> dict:
    """`CLIPTextConfig` fields of the text tower at `sizes` (QuickGELU, heads of 64 channels)."""
    return dict(
        vocab_size=sizes.vocab_size,
        hidden_size=sizes.text_width,
        intermediate_size=4 * sizes.text_width,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.heads(sizes.text_width),
        max_position_embeddings=sizes.text_len,
        hidden_act="quick_gelu",
    )


def clip_vision_kwargs(sizes: Sizes) -> dict:
    """`CLIPVisionConfig` fields of the image tower at `sizes`."""
    return dict(
        hidden_size=sizes.vision_width,
        intermediate_size=4 * sizes.vision_width,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.heads(sizes.vision_width),
        image_size=sizes.image_size,
        patch_size=sizes.patch_size,
        hidden_act="quick_gelu",
    )


def open_clip_model_config(sizes: Sizes) -> dict:
    """open_clip's model config (the JSON of `open_clip/model_configs/`) of the same towers: one source of the
    identical dims for `build_open_clip` here and for open_clip's own trainer in `end_to_end.py`."""
    return {
        "embed_dim": sizes.projection_dim,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": sizes.image_size,
            "layers": sizes.vision_layers,
            "width": sizes.vision_width,
            "head_width": sizes.vision_width // sizes.heads(sizes.vision_width),
            "patch_size": sizes.patch_size,
        },
        "text_cfg": {
            "context_length": sizes.text_len,
            "vocab_size": sizes.vocab_size,
            "width": sizes.text_width,
            "heads": sizes.heads(sizes.text_width),
            "layers": sizes.text_layers,
        },
    }


def _clip_text_config(sizes: Sizes):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        **clip_text_kwargs(sizes),
        bos_token_id=min(49406, sizes.vocab_size - 2),
        eos_token_id=min(EOS_TOKEN_ID, sizes.vocab_size - 1),
        pad_token_id=0,
    )


def _clip_vision_config(sizes: Sizes):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(**clip_vision_kwargs(sizes))


# ----------------------------------------------------------------------------------------------------------------
# Model builders: each returns (model, loss_fn(model, batch) -> loss, image_fn(model, pixel_values)) or raises
# ModuleNotFoundError/ImportError when the implementation is not available.


def build_hf_clip(sizes: Sizes):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=_clip_text_config(sizes).to_dict(),
        vision_config=_clip_vision_config(sizes).to_dict(),
        projection_dim=sizes.projection_dim,
    )
    model = CLIPModel(config)
    model.set_attn_implementation("sdpa")

    def loss_fn(m, batch):
        return m(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            return_loss=True,
        ).loss

    return model, loss_fn, lambda m, pixels: m.get_image_features(pixel_values=pixels)


def build_open_clip(sizes: Sizes):
    import open_clip
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    config = open_clip_model_config(sizes)
    model = open_clip.model.CLIP(
        embed_dim=config["embed_dim"],
        vision_cfg=CLIPVisionCfg(**config["vision_cfg"]),
        text_cfg=CLIPTextCfg(**config["text_cfg"]),
        quick_gelu=config["quick_gelu"],
    )
    criterion = ClipLoss()

    def loss_fn(m, batch):
        image_features, text_features, logit_scale = m(batch["pixel_values"], batch["input_ids"])
        return criterion(image_features, text_features, logit_scale)

    return model, loss_fn, lambda m, pixels: m.encode_image(pixels)


def build_unicl(sizes: Sizes, with_labels: bool = False, equal_width: bool = False, **config_fields):
    from hf_unified.configuration_unicl import UniCLConfig
    from hf_unified.modeling_unicl import UniCLModel

    config = UniCLConfig(
        vision_config=_clip_vision_config(sizes),
        text_config=_clip_text_config(sizes),
        projection_dim=sizes.projection_dim,
        logit_scale_init_value=2.6592,
        **config_fields,
    )
    model = UniCLModel(config)
    model.set_attn_implementation("sdpa")

    def loss_fn(m, batch):
        extra = {"labels": batch["labels"]} if with_labels else {"return_loss": True}
        return m(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            **extra,
        ).loss

    return model, loss_fn, lambda m, pixels: m.get_image_features(pixel_values=pixels)


def build_uniclip(sizes: Sizes, num_views: int = 2, **config_fields):
    modeling = importlib.import_module("hf_unified.modeling_uniclip")
    configuration = importlib.import_module("hf_unified.configuration_uniclip")
    augmentation = importlib.import_module("hf_unified.training.data.augmentation")

    config = configuration.UniCLIPConfig(
        vision_config=_clip_vision_config(sizes),
        text_config=_clip_text_config(sizes),
        projection_dim=sizes.projection_dim,
        num_views=num_views,
        **config_fields,
    )
    model = modeling.UniCLIPModel(config)
    model.set_attn_implementation("sdpa")
    identity = torch.tensor(augmentation.IDENTITY_PARAMS)

    def loss_fn(m, batch):
        pixels = batch["pixel_values"]
        b = pixels.shape[0]
        if num_views > 1:
            # The views a MultiViewAugmentation would produce; the data pipeline's cost is measured elsewhere.
            views = torch.stack([pixels] + [pixels.flip(-1)] * (num_views - 1), dim=1)
            params = identity.to(pixels.device) + 0.1 * torch.arange(num_views, device=pixels.device)[:, None]
            params = params[None].expand(b, num_views, -1).contiguous()
        else:
            views, params = pixels, None
        return m(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=views,
            augmentation_params=params,
            return_loss=True,
        ).loss

    return model, loss_fn, lambda m, pixels: m.get_image_features(pixel_values=pixels)


def build_msclip(sizes: Sizes, preset: str, **config_fields):
    modeling = importlib.import_module("hf_unified.modeling_msclip")
    configuration = importlib.import_module("hf_unified.configuration_msclip")
    if sizes.vision_width != sizes.text_width:
        raise ValueError("MS-CLIP needs one width for both modalities")
    width = sizes.vision_width
    overrides = dict(
        vocab_size=sizes.vocab_size,
        max_position_embeddings=sizes.text_len,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=sizes.vision_layers,
        vision_num_attention_heads=sizes.heads(width),
        text_num_attention_heads=sizes.heads(width),
        image_size=sizes.image_size,
        patch_size=sizes.patch_size,
        projection_dim=sizes.projection_dim,
        layer_norm_eps=1e-5,
        eos_token_id=min(EOS_TOKEN_ID, sizes.vocab_size - 1),
        bos_token_id=min(49406, sizes.vocab_size - 2),
    )
    if preset == "ms-clip-s":
        overrides.update(msclip_s_layout(width, sizes.vision_layers, sizes.image_size, sizes.patch_size))
    config = configuration.MSCLIPConfig.from_preset(preset, **overrides, **config_fields)
    model = modeling.MSCLIPModel(config)
    model.set_attn_implementation("sdpa")

    def loss_fn(m, batch):
        return m(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            return_loss=True,
        ).loss

    return model, loss_fn, lambda m, pixels: m.get_image_features(pixel_values=pixels)


def _image_output(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# ----------------------------------------------------------------------------------------------------------------
# Measurement


def make_candidate(name: str, built, batch: dict, device: str, args) -> Candidate:
    model, loss_fn, image_fn = built
    model.to(device).train()
    # torch's default AdamW kernel unless --fused-adamw (the fused kernel exists on CPU too); fused on CUDA.
    fused = True if args.fused_adamw or device.startswith("cuda") else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=fused)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()

    def step_with(compute_loss) -> Callable[[], None]:
        def train_step() -> None:
            with autocast:
                loss = compute_loss(model, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return train_step

    def infer() -> None:
        model.eval()
        with torch.inference_mode(), autocast:
            F.normalize(_image_output(image_fn(model, batch["pixel_values"])), dim=-1)
        model.train()

    eager_step = step_with(loss_fn)
    train_step = step_with(torch.compile(loss_fn, backend=args.compile_backend)) if args.compile else eager_step
    return Candidate(name, model, train_step, infer, batch["pixel_values"].shape[0], eager_step)


def candidates_for(group: str, sizes: Sizes) -> list[tuple[str, Callable]]:
    if group == "towers":
        return [
            (CLIP_REFERENCE, lambda: build_hf_clip(sizes)),
            ("open_clip CLIP", lambda: build_open_clip(sizes)),
            ("UniCL, CLIP towers (CLIP loss)", lambda: build_unicl(sizes)),
            ("UniCL, CLIP towers (UniCL loss, labels)", lambda: build_unicl(sizes, with_labels=True)),
            ("UniCLIP, 1 view", lambda: build_uniclip(sizes, num_views=1)),
            ("UniCLIP, 2 views (as trained)", lambda: build_uniclip(sizes, num_views=2)),
            (CLIP_CONTROL, lambda: build_hf_clip(sizes)),
        ]
    return [
        (CLIP_REFERENCE, lambda: build_hf_clip(sizes)),
        ("UniCL, CLIP towers (CLIP loss)", lambda: build_unicl(sizes)),
        ("MS-CLIP shared (attn+MLP)", lambda: build_msclip(sizes, "shared")),
        ("MS-CLIP separate", lambda: build_msclip(sizes, "separate")),
        ("MS-CLIP-S layout (stem + branch)", lambda: build_msclip(sizes, "ms-clip-s")),
        (CLIP_CONTROL, lambda: build_hf_clip(sizes)),
    ]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], None], steps: int, device: str, clock: Callable[[], float]) -> float:
    """Seconds per call over `steps` calls, read on `clock` (wall or this process's CPU time)."""
    synchronize(device)
    start = clock()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (clock() - start) / steps


def count_flops(fn: Callable[[], None]) -> float:
    """FLOPs of one call counted by torch's FlopCounterMode (matmuls, convolutions and attention; element-wise work
    is not counted, as in the usual MFU definition). Run eagerly: compiled graphs bypass the counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def run_group(group: str, sizes: Sizes, args) -> list[dict]:
    device = args.device
    batch = make_batch(sizes, device)
    candidates: list[Candidate] = []
    for name, build in candidates_for(group, sizes):
        always = name in (CLIP_REFERENCE, CLIP_CONTROL)
        if args.models and not always and not any(word.lower() in name.lower() for word in args.models):
            continue
        try:
            torch.manual_seed(0)
            candidates.append(make_candidate(name, build(), batch, device, args))
        except (ImportError, AttributeError) as error:
            print(f"[skip] {name}: not available in this tree ({type(error).__name__}: {error})")
    if not candidates:
        return []
    flops = {c.name: (count_flops(c.eager_step), count_flops(c.infer)) for c in candidates}
    for candidate in candidates:  # warm-up: allocator, oneDNN/cuDNN plans, compilation
        for _ in range(args.warmup):
            candidate.train_step()
            candidate.infer()

    clock = time.perf_counter if args.clock == "wall" else time.process_time
    train_times: dict[str, list[float]] = {c.name: [] for c in candidates}
    infer_times: dict[str, list[float]] = {c.name: [] for c in candidates}
    for round_index in range(args.rounds):
        shift = round_index % len(candidates)
        for candidate in candidates[shift:] + candidates[:shift]:  # rotate so no model always runs first
            train_times[candidate.name].append(timed(candidate.train_step, args.steps, device, clock))
            infer_times[candidate.name].append(timed(candidate.infer, args.steps, device, clock))
        print(
            f"  [{group}] round {round_index + 1}/{args.rounds}: "
            + ", ".join(f"{c.name} {c.samples_per_step / train_times[c.name][-1]:.0f}/s" for c in candidates),
            flush=True,
        )

    reference = candidates[0].name
    results = []
    for candidate in candidates:
        name = candidate.name
        row = {"name": name, "params_m": sum(p.numel() for p in candidate.model.parameters()) / 1e6}
        for kind, times, flop_index in (("train", train_times, 0), ("infer", infer_times, 1)):
            rates = [candidate.samples_per_step / t for t in times[name]]
            ratios = [ref / own for ref, own in zip(times[reference], times[name])]
            row[kind] = {
                "rates": rates,
                "ratios": ratios,
                "ratio": median(ratios),
                "gflops": flops[name][flop_index] / 1e9,
                # The speed ratio the FLOPs alone predict, and how much of it the measurement reaches.
                "flops_predicted": flops[reference][flop_index] / flops[name][flop_index],
            }
            row[kind]["of_predicted"] = row[kind]["ratio"] / row[kind]["flops_predicted"]
        # Backwards-compatible summary fields (medians).
        row["train_samples_per_s"] = median(row["train"]["rates"])
        row["train_ratio"] = row["train"]["ratio"]
        row["infer_images_per_s"] = median(row["infer"]["rates"])
        row["infer_ratio"] = row["infer"]["ratio"]
        if device.startswith("cuda"):
            achieved = flops[name][0] / median(train_times[name])
            row["tflops"] = achieved / 1e12
            row["mfu"] = achieved / (args.peak_tflops * 1e12) if args.peak_tflops else float("nan")
        results.append(row)
    return results


# ----------------------------------------------------------------------------------------------------------------
# Patch dropout (FLIP): each model type against itself without it

PATCH_DROPOUT_SHARES = (0.0, 0.5, 0.75)


def patch_dropout_models(sizes: Sizes, args) -> list[tuple[str, Callable[[float], tuple]]]:
    """(model type, builder taking the patch-dropout share) of the patch-dropout group."""
    equal = sizes.equal_width(args.equal_width)
    return [
        ("UniCL, CLIP towers", lambda p: build_unicl(sizes, patch_dropout=p)),
        ("UniCLIP, 2 views", lambda p: build_uniclip(sizes, num_views=2, patch_dropout=p)),
        (f"MS-CLIP-S layout ({args.equal_width} wide)", lambda p: build_msclip(equal, "ms-clip-s", patch_dropout=p)),
    ]


def step_memory_bytes(candidate: Candidate, device: str) -> int:
    """The memory of one training step: on CUDA its peak allocated bytes; on CPU the bytes of the distinct tensors
    autograd saves for the backward pass, parameters excluded (the activations)."""
    if device.startswith("cuda"):
        synchronize(device)
        torch.cuda.reset_peak_memory_stats()
        candidate.eager_step()
        synchronize(device)
        return torch.cuda.max_memory_allocated()
    parameters = {p.untyped_storage().data_ptr() for p in candidate.model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        candidate.eager_step()
    return sum(saved.values())


def run_patch_dropout(sizes: Sizes, args) -> list[dict]:
    """Every model type at each share of `PATCH_DROPOUT_SHARES`, interleaved in rounds as the other groups are;
    rates and memory are read against the same model type at 0 within each round."""
    device, batch = args.device, make_batch(sizes, args.device)
    entries = []
    for model_name, build in patch_dropout_models(sizes, args):
        if args.models and not any(word.lower() in model_name.lower() for word in args.models):
            continue
        for share in PATCH_DROPOUT_SHARES:
            torch.manual_seed(0)
            candidate = make_candidate(f"{model_name}, p={share}", build(share), batch, device, args)
            entries.append({"model": model_name, "patch_dropout": share, "candidate": candidate})
    if not entries:  # --models left none of them
        return []
    for entry in entries:
        for _ in range(args.warmup):
            entry["candidate"].train_step()
        entry["memory_bytes"] = step_memory_bytes(entry["candidate"], device)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    for entry in entries:
        entry["times"] = []
    for round_index in range(args.rounds):
        shift = round_index % len(entries)
        for entry in entries[shift:] + entries[:shift]:
            entry["times"].append(timed(entry["candidate"].train_step, args.steps, device, clock))
        print(f"  [patch-dropout] round {round_index + 1}/{args.rounds} done", flush=True)
    results = []
    for entry in entries:
        base = next(e for e in entries if e["model"] == entry["model"] and e["patch_dropout"] == 0.0)
        samples = entry["candidate"].samples_per_step
        results.append(
            {
                "model": entry["model"],
                "patch_dropout": entry["patch_dropout"],
                "rates": [samples / t for t in entry["times"]],
                "ratios": [own_base / own for own_base, own in zip(base["times"], entry["times"])],
                "memory_mib": entry["memory_bytes"] / 2**20,
                "memory_ratio": entry["memory_bytes"] / base["memory_bytes"],
            }
        )
    return results


def print_patch_dropout(sizes: Sizes, results: list[dict], args) -> None:
    unit = "per CPU-s" if args.clock == "cpu" else "per s"
    memory = "peak memory (MiB)" if args.device.startswith("cuda") else "activations saved for backward (MiB)"
    patches = (sizes.image_size // sizes.patch_size) ** 2
    print(
        f"\n**patch-dropout: ViT {sizes.vision_width}w/{sizes.vision_layers}L patch {sizes.patch_size} at "
        f"{sizes.image_size}px ({patches} patches), text {sizes.text_width}w/{sizes.text_layers}L x {sizes.text_len} "
        f"tokens, MS-CLIP {args.equal_width} wide, batch {sizes.batch_size}, {args.device}, {args.rounds} "
        f"interleaved rounds x {args.steps} steps; speed-up: median (min-max) of per-round ratios to the same "
        "model at 0**\n"
    )
    header = ["model", "patch dropout", f"training samples {unit}", "speed-up vs 0", memory, "memory vs 0"]
    rows = [
        [
            r["model"],
            f"{r['patch_dropout']:g}",
            _spread(r["rates"]),
            f"{median(r['ratios']):.2f}x ({min(r['ratios']):.2f}-{max(r['ratios']):.2f})",
            f"{r['memory_mib']:.1f}",
            f"{r['memory_ratio']:.2f}x",
        ]
        for r in results
    ]
    print(markdown_table(header, rows) + "\n")


def _spread(values: list[float]) -> str:
    return f"{min(values):.1f} / {median(values):.1f} / {max(values):.1f}"


def print_results(group: str, sizes: Sizes, results: list[dict], args) -> None:
    unit = "per CPU-s" if args.clock == "cpu" else "per s"
    compiled = ", torch.compile" if args.compile else ""
    print(
        f"\n**{group}: ViT {sizes.vision_width}w/{sizes.vision_layers}L patch {sizes.patch_size} at "
        f"{sizes.image_size}px, text {sizes.text_width}w/{sizes.text_layers}L x {sizes.text_len} tokens, "
        f"batch {sizes.batch_size}, {args.device}{compiled}, {args.rounds} interleaved rounds x {args.steps} steps, "
        f"rates {unit}; min / median / max over rounds, ratios: median (min-max) of per-round ratios**\n"
    )
    for kind, what in (("train", "training samples"), ("infer", "inference images")):
        header = [
            "model",
            "params (M)",
            "GFLOP/step" if kind == "train" else "GFLOP/batch",
            f"{what} {unit}",
            "vs CLIPModel",
            "FLOPs predict",
            "measured / predicted",
        ]
        rows = []
        for r in results:
            k = r[kind]
            rows.append(
                [
                    r["name"],
                    f"{r['params_m']:.2f}",
                    f"{k['gflops']:.2f}",
                    _spread(k["rates"]),
                    f"{k['ratio']:.2f}x ({min(k['ratios']):.2f}-{max(k['ratios']):.2f})",
                    f"{k['flops_predicted']:.2f}x",
                    f"{100 * k['of_predicted']:.0f}%",
                ]
            )
        if kind == "train" and args.device.startswith("cuda"):
            header += ["TFLOP/s", "MFU"]
            for row, r in zip(rows, results):
                row += [f"{r['tflops']:.1f}", f"{100 * r['mfu']:.1f}%"]
        print(markdown_table(header, rows) + "\n")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads on CPU")
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default=None,
        help="time steps on this process's CPU time (default on CPU: other jobs on shared cores do not inflate it) "
        "or on the wall clock (default on CUDA, after synchronising)",
    )
    parser.add_argument(
        "--groups",
        nargs="+",
        default=["towers", "equal-width", "patch-dropout"],
        choices=["towers", "equal-width", "patch-dropout"],
    )
    parser.add_argument(
        "--patch-dropout-image-size", type=int, default=160, help="image size of the patch-dropout group (image-heavy)"
    )
    add_size_arguments(parser)
    parser.add_argument("--equal-width", type=int, default=192, help="both towers' width in the equal-width group")
    parser.add_argument("--vocab-size", type=int, default=49408)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per candidate per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True) for every candidate")
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward + loss")
    parser.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend (aot_eager: graph capture only, fast)"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s of the device for MFU (H100 SXM: 989)"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="only candidates whose name contains one of these words (CLIPModel and its control always run)",
    )
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks that everything runs")
    args = parser.parse_args(argv)
    if args.clock is None:
        args.clock = "wall" if args.device.startswith("cuda") else "cpu"
    if args.smoke:
        args.image_size, args.patch_size, args.vision_width, args.vision_layers = 32, 16, 64, 2
        args.text_width, args.text_layers, args.text_len, args.vocab_size = 64, 1, 8, 1000
        args.equal_width, args.projection_dim, args.batch_size = 64, 32, 4
        args.patch_dropout_image_size = 64
        args.rounds, args.steps, args.warmup = 1, 1, 1
    if args.device.startswith("cuda"):
        if args.peak_tflops is None and torch.cuda.is_available():
            name = torch.cuda.get_device_name()
            args.peak_tflops = 989.0 if "H100" in name or "H200" in name else 312.0 if "A100" in name else None
    return args


def main(argv=None) -> dict[str, list[dict]]:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    print(f"machine: {describe_machine(args.device)}")
    base = Sizes.from_args(args)
    all_results = {}
    for group in args.groups:
        if group == "patch-dropout":
            sizes = dataclasses.replace(base, image_size=args.patch_dropout_image_size)
            all_results[group] = run_patch_dropout(sizes, args)
            if all_results[group]:
                print_patch_dropout(sizes, all_results[group], args)
            continue
        sizes = base.equal_width(args.equal_width) if group == "equal-width" else base
        results = run_group(group, sizes, args)
        print_results(group, sizes, results, args)
        all_results[group] = results
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": describe_machine(args.device), **all_results}, indent=2))
    return all_results


if __name__ == "__main__":
    main()
