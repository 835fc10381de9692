"""Training and inference throughput of hf_unified's models against transformers' CLIPModel and open_clip.

Every candidate is built at identical widths (default: ViT 192 wide / 4 layers / patch 16 at 64 px, text 128 wide /
4 layers, 32 tokens, vocabulary 49408, 128-d embeddings, QuickGELU everywhere) and measured interleaved in one
process: each round runs every candidate once in a rotated order, and a candidate's figure is the median over
rounds. Ratios are taken against transformers' `CLIPModel` (SDPA) within each round, then the median is reported,
so a slow-down of the shared machine during one round hits every candidate alike.

Measured:

- training step: forward, contrastive loss, backward and `torch.optim.AdamW.step` (samples/s, one sample = one
  image-text pair; UniCLIP encodes `num_views` augmented views per image, as it trains);
- inference: image embeddings under `torch.inference_mode` (images/s).

Groups:

- `towers` (the main table): CLIPModel, open_clip CLIP, UniCL with CLIPVisionConfig + CLIPTextConfig towers,
  UniCL with labels (UniCL loss), UniCLIP (2 views, and 1 view).
- `equal-width` (MS-CLIP shares weights between modalities, so both towers need one width, default 192): CLIPModel,
  UniCL, MS-CLIP "shared", MS-CLIP "separate" and the released MS-CLIP-S layout (conv stem, parallel branch).

Usage:

    python benchmarks/throughput.py                      # CPU, 2 threads, both groups, prints markdown tables
    python benchmarks/throughput.py --smoke              # seconds: tiny sizes, 1 round (CI)
    python benchmarks/throughput.py --device cuda --image-size 224 --patch-size 32 --vision-width 768 \
        --vision-layers 12 --text-width 512 --text-layers 12 --batch-size 256 --compile   # ViT-B/32, bf16, MFU

On CUDA the step runs under bf16 autocast, optionally `torch.compile`d, and the model FLOPs utilisation is
`FLOPs per step (torch.utils.flop_counter) * steps/s / --peak-tflops`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import common  # noqa: F401  (puts the repository on sys.path)
import torch
import torch.nn.functional as F
from common import describe_machine, markdown_table, median, msclip_s_layout

EOS_TOKEN_ID = 49407
CLIP_REFERENCE = "transformers CLIPModel (sdpa)"  # the denominator of every ratio, always measured


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


@dataclass
class Candidate:
    """One model under test: `train_step()` runs one optimiser step, `infer()` one batch of image embeddings."""

    name: str
    model: torch.nn.Module
    train_step: Callable[[], None]
    infer: Callable[[], None]
    samples_per_step: int


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


def _clip_text_config(sizes: Sizes, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=sizes.vocab_size,
        hidden_size=sizes.text_width,
        intermediate_size=4 * sizes.text_width,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.heads(sizes.text_width),
        max_position_embeddings=sizes.text_len,
        hidden_act="quick_gelu",
        bos_token_id=min(49406, sizes.vocab_size - 2),
        eos_token_id=min(EOS_TOKEN_ID, sizes.vocab_size - 1),
        pad_token_id=0,
        **extra,
    )


def _clip_vision_config(sizes: Sizes, **extra):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=sizes.vision_width,
        intermediate_size=4 * sizes.vision_width,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=sizes.heads(sizes.vision_width),
        image_size=sizes.image_size,
        patch_size=sizes.patch_size,
        hidden_act="quick_gelu",
        **extra,
    )


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

    model = open_clip.model.CLIP(
        embed_dim=sizes.projection_dim,
        vision_cfg=CLIPVisionCfg(
            layers=sizes.vision_layers,
            width=sizes.vision_width,
            head_width=sizes.vision_width // sizes.heads(sizes.vision_width),
            patch_size=sizes.patch_size,
            image_size=sizes.image_size,
        ),
        text_cfg=CLIPTextCfg(
            context_length=sizes.text_len,
            vocab_size=sizes.vocab_size,
            width=sizes.text_width,
            heads=sizes.heads(sizes.text_width),
            layers=sizes.text_layers,
        ),
        quick_gelu=True,
    )
    criterion = ClipLoss()

    def loss_fn(m, batch):
        image_features, text_features, logit_scale = m(batch["pixel_values"], batch["input_ids"])
        return criterion(image_features, text_features, logit_scale)

    return model, loss_fn, lambda m, pixels: m.encode_image(pixels)


def build_unicl(sizes: Sizes, with_labels: bool = False, equal_width: bool = False):
    from hf_unified.configuration_unicl import UniCLConfig
    from hf_unified.modeling_unicl import UniCLModel

    config = UniCLConfig(
        vision_config=_clip_vision_config(sizes),
        text_config=_clip_text_config(sizes),
        projection_dim=sizes.projection_dim,
        logit_scale_init_value=2.6592,
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


def build_uniclip(sizes: Sizes, num_views: int = 2):
    modeling = importlib.import_module("hf_unified.modeling_uniclip")
    configuration = importlib.import_module("hf_unified.configuration_uniclip")
    augmentation = importlib.import_module("hf_unified.training.augmentation")

    config = configuration.UniCLIPConfig(
        vision_config=_clip_vision_config(sizes),
        text_config=_clip_text_config(sizes),
        projection_dim=sizes.projection_dim,
        num_views=num_views,
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


def build_msclip(sizes: Sizes, preset: str):
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
    config = configuration.MSCLIPConfig.from_preset(preset, **overrides)
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
    # torch's default AdamW (foreach) unless --fused-adamw; the fused kernel also exists on CPU (torch >= 2.4).
    fused = True if args.fused_adamw or device.startswith("cuda") else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=fused)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()
    compute_loss = torch.compile(loss_fn) if args.compile else loss_fn

    def train_step() -> None:
        with autocast:
            loss = compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer() -> None:
        model.eval()
        with torch.inference_mode(), autocast:
            F.normalize(_image_output(image_fn(model, batch["pixel_values"])), dim=-1)
        model.train()

    return Candidate(name, model, train_step, infer, batch["pixel_values"].shape[0])


def candidates_for(group: str, sizes: Sizes) -> list[tuple[str, Callable]]:
    if group == "towers":
        return [
            (CLIP_REFERENCE, lambda: build_hf_clip(sizes)),
            ("open_clip CLIP", lambda: build_open_clip(sizes)),
            ("UniCL, CLIP towers (CLIP loss)", lambda: build_unicl(sizes)),
            ("UniCL, CLIP towers (UniCL loss, labels)", lambda: build_unicl(sizes, with_labels=True)),
            ("UniCLIP, 1 view", lambda: build_uniclip(sizes, num_views=1)),
            ("UniCLIP, 2 views (as trained)", lambda: build_uniclip(sizes, num_views=2)),
        ]
    return [
        (CLIP_REFERENCE, lambda: build_hf_clip(sizes)),
        ("UniCL, CLIP towers (CLIP loss)", lambda: build_unicl(sizes)),
        ("MS-CLIP shared (attn+MLP)", lambda: build_msclip(sizes, "shared")),
        ("MS-CLIP separate", lambda: build_msclip(sizes, "separate")),
        ("MS-CLIP-S layout (stem + branch)", lambda: build_msclip(sizes, "ms-clip-s")),
    ]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], None], steps: int, device: str) -> float:
    """Seconds per call over `steps` calls."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def flops_per_step(candidate: Candidate) -> float:
    """FLOPs of one training step (forward + backward) counted by torch's FlopCounterMode (matmuls, convolutions
    and attention; element-wise work is not counted, as in the usual MFU definition)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        candidate.train_step()
    return float(counter.get_total_flops())


def run_group(group: str, sizes: Sizes, args) -> list[dict]:
    device = args.device
    batch = make_batch(sizes, device)
    candidates: list[Candidate] = []
    for name, build in candidates_for(group, sizes):
        if args.models and name != CLIP_REFERENCE and not any(word.lower() in name.lower() for word in args.models):
            continue
        try:
            torch.manual_seed(0)
            candidates.append(make_candidate(name, build(), batch, device, args))
        except (ImportError, AttributeError) as error:
            print(f"[skip] {name}: not available in this tree ({type(error).__name__}: {error})")
    if not candidates:
        return []
    for candidate in candidates:  # warm-up: allocator, oneDNN/cuDNN plans, compilation
        for _ in range(args.warmup):
            candidate.train_step()
            candidate.infer()
    flops = {c.name: flops_per_step(c) for c in candidates} if args.mfu else {}

    train_times: dict[str, list[float]] = {c.name: [] for c in candidates}
    infer_times: dict[str, list[float]] = {c.name: [] for c in candidates}
    for round_index in range(args.rounds):
        shift = round_index % len(candidates)
        for candidate in candidates[shift:] + candidates[:shift]:  # rotate so no model always runs first
            train_times[candidate.name].append(timed(candidate.train_step, args.steps, device))
            infer_times[candidate.name].append(timed(candidate.infer, args.steps, device))
        print(
            f"  [{group}] round {round_index + 1}/{args.rounds}: "
            + ", ".join(f"{c.name} {c.samples_per_step / train_times[c.name][-1]:.0f}/s" for c in candidates),
            flush=True,
        )

    reference = candidates[0].name
    results = []
    for candidate in candidates:
        name = candidate.name
        train_ratios = [ref / own for ref, own in zip(train_times[reference], train_times[name])]
        infer_ratios = [ref / own for ref, own in zip(infer_times[reference], infer_times[name])]
        row = {
            "name": name,
            "params_m": sum(p.numel() for p in candidate.model.parameters()) / 1e6,
            "train_samples_per_s": candidate.samples_per_step / median(train_times[name]),
            "train_ratio": median(train_ratios),
            "infer_images_per_s": candidate.samples_per_step / median(infer_times[name]),
            "infer_ratio": median(infer_ratios),
        }
        if flops:
            achieved = flops[name] / median(train_times[name])
            row["tflops"] = achieved / 1e12
            row["mfu"] = achieved / (args.peak_tflops * 1e12) if args.peak_tflops else float("nan")
        results.append(row)
    return results


def print_results(group: str, sizes: Sizes, results: list[dict], args) -> None:
    header = ["model", "params (M)", "train samples/s", "train vs CLIPModel", "infer images/s", "infer vs CLIPModel"]
    rows = [
        [
            r["name"],
            f"{r['params_m']:.2f}",
            f"{r['train_samples_per_s']:.1f}",
            f"{r['train_ratio']:.2f}x",
            f"{r['infer_images_per_s']:.1f}",
            f"{r['infer_ratio']:.2f}x",
        ]
        for r in results
    ]
    if args.mfu:
        header += ["TFLOP/s", "MFU"]
        for row, r in zip(rows, results):
            row += [f"{r['tflops']:.2f}", f"{100 * r['mfu']:.1f}%"]
    print(
        f"\n### {group}: ViT {sizes.vision_width}w/{sizes.vision_layers}L patch {sizes.patch_size} at "
        f"{sizes.image_size}px, text {sizes.text_width}w/{sizes.text_layers}L x {sizes.text_len} tokens, "
        f"batch {sizes.batch_size}, {args.rounds} interleaved rounds x {args.steps} steps (median)"
    )
    print(markdown_table(header, rows))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on CPU")
    parser.add_argument("--groups", nargs="+", default=["towers", "equal-width"], choices=["towers", "equal-width"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--vision-width", type=int, default=192)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--text-width", type=int, default=128)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--equal-width", type=int, default=192, help="both towers' width in the equal-width group")
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--vocab-size", type=int, default=49408)
    parser.add_argument("--projection-dim", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per candidate per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True) for every candidate")
    parser.add_argument("--compile", action="store_true", help="torch.compile the forward + loss")
    parser.add_argument("--mfu", action="store_true", help="count FLOPs (default on CUDA)")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s of the device for MFU (H100 SXM: 989)"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="only candidates whose name contains one of these words (CLIPModel is always run)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks that everything runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.image_size, args.patch_size, args.vision_width, args.vision_layers = 32, 16, 64, 2
        args.text_width, args.text_layers, args.text_len, args.vocab_size = 64, 1, 8, 1000
        args.equal_width, args.projection_dim, args.batch_size = 64, 32, 4
        args.rounds, args.steps, args.warmup = 1, 1, 1
    if args.device.startswith("cuda"):
        args.mfu = True
        if args.peak_tflops is None and torch.cuda.is_available():
            name = torch.cuda.get_device_name()
            args.peak_tflops = 989.0 if "H100" in name or "H200" in name else 312.0 if "A100" in name else None
    return args


def main(argv=None) -> dict[str, list[dict]]:
    args = parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    print(f"machine: {describe_machine(args.device)}")
    base = Sizes(
        args.image_size,
        args.patch_size,
        args.vision_width,
        args.vision_layers,
        args.text_width,
        args.text_layers,
        args.text_len,
        args.vocab_size,
        args.projection_dim,
        args.batch_size,
    )
    all_results = {}
    for group in args.groups:
        sizes = base
        if group == "equal-width":
            sizes = Sizes(
                **{
                    **base.__dict__,
                    "vision_width": args.equal_width,
                    "text_width": args.equal_width,
                    "text_layers": args.vision_layers,
                }
            )
        results = run_group(group, sizes, args)
        print_results(group, sizes, results, args)
        all_results[group] = results
    return all_results


if __name__ == "__main__":
    main()
