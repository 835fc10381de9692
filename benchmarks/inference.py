"""Inference against transformers' `CLIPModel` on the same towers and weights: image and text embeddings/s, a
zero-shot evaluation over many images, and the zero-shot pipeline's overhead.

The hf-unified candidates start from one `CLIPModel` with `from_clip`, so every candidate runs identical towers
and weights (UniCL; UniCLIP with its augmentation-aware head at identity parameters). The zero-shot evaluation is
the package's own (`prompts.build_zero_shot_classifier` + `training.evaluation.zero_shot_accuracy` over batches of
embedded images), which accepts `CLIPModel` too, so the two rows differ only in the model.

Timing: candidates are interleaved round by round in one process (the order rotated every round) and each
measurement is the process CPU time of the work (`time.process_time`, all torch threads), which other jobs on
shared cores do not inflate the way they inflate wall time. Rates are per CPU-second; the tables give
min / median / max over rounds and the median of the per-round ratios to `CLIPModel`.

Usage:

    python benchmarks/inference.py                  # 64 px ViT 192 wide x 4, text 128 x 4, 10k zero-shot images
    python benchmarks/inference.py --smoke
"""

from __future__ import annotations

import argparse
import tempfile
import time

import common  # noqa: F401  (puts the repository on sys.path)
import torch
import torch.nn.functional as F
from common import describe_machine, markdown_table, median

CLIP_REFERENCE = "transformers CLIPModel"


def build_folder(args, folder: str) -> None:
    """A random `CLIPModel` with a processor, saved like a Hub CLIP folder."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from hf_unified.tokenization import train_caption_tokenizer

    tokenizer = train_caption_tokenizer([f"a photo of a {i}." for i in range(50)] * 4, vocab_size=400)
    towers = dict(intermediate_size=4 * args.width, num_hidden_layers=args.layers)
    config = CLIPConfig(
        vision_config=dict(
            hidden_size=args.width,
            num_attention_heads=args.width // 64,
            image_size=args.image_size,
            patch_size=args.patch_size,
            **towers,
        ),
        text_config=dict(
            hidden_size=args.text_width,
            num_attention_heads=args.text_width // 64,
            vocab_size=len(tokenizer),
            max_position_embeddings=args.text_len,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **towers,
        ),
        projection_dim=128,
    )
    torch.manual_seed(0)
    CLIPModel(config).eval().save_pretrained(folder)
    size = {"shortest_edge": args.image_size}
    CLIPImageProcessor(size=size, crop_size=args.image_size).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def candidates(folder: str) -> dict:
    from transformers import CLIPModel

    from hf_unified import UniCLIPModel, UniCLModel

    return {
        CLIP_REFERENCE: CLIPModel.from_pretrained(folder, attn_implementation="sdpa").eval(),
        "UniCL (from_clip)": UniCLModel.from_clip(folder, loading_kwargs={"attn_implementation": "sdpa"}).eval(),
        "UniCLIP (from_clip)": UniCLIPModel.from_clip(folder, loading_kwargs={"attn_implementation": "sdpa"}).eval(),
    }


def cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


@torch.no_grad()
def zero_shot(model, tokenizer, images: torch.Tensor, labels: torch.Tensor, classes: list[str], batch: int) -> float:
    from hf_unified.prompts import build_zero_shot_classifier
    from hf_unified.training.outputs.evaluation import zero_shot_accuracy

    classifier = build_zero_shot_classifier(model, tokenizer, classes, ["a photo of a {}.", "a {}."])
    embeds = [
        model.get_image_features(pixel_values=images[i : i + batch]).pooler_output
        for i in range(0, images.shape[0], batch)
    ]
    return zero_shot_accuracy(F.normalize(torch.cat(embeds), dim=-1), labels, classifier)["top1_accuracy"]


KINDS = ("image", "text", "zero_shot", "pipeline", "direct")
HEADERS = ("image embeds/s", "text embeds/s", "zero-shot images/s", "pipeline calls/s", "direct calls/s")


def direct_call(model, processor, image, prompts: list[str]) -> torch.Tensor:
    inputs = processor(text=prompts, images=[image], padding=True, return_tensors="pt")
    return model(**inputs).logits_per_image.softmax(dim=-1)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    from PIL import Image
    from transformers import AutoProcessor, AutoTokenizer, pipeline

    with tempfile.TemporaryDirectory() as folder:
        build_folder(args, folder)
        models = candidates(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
        text = tokenizer([f"a photo of a {i}." for i in range(args.batch_size)], padding=True, return_tensors="pt")
        eval_images = torch.randn(args.eval_images, 3, args.image_size, args.image_size, generator=generator)
        eval_labels = torch.randint(0, 10, (args.eval_images,), generator=generator)
        classes = [str(i) for i in range(10)]
        # The pipeline: one UniCL folder (custom code registered in-process) and the CLIPModel folder.
        unicl_folder = f"{folder}/unicl"
        models["UniCL (from_clip)"].save_pretrained(unicl_folder)
        from hf_unified import UniCLProcessor

        UniCLProcessor.from_pretrained_parts(folder).save_pretrained(unicl_folder)
        pipelines = {
            CLIP_REFERENCE: pipeline("zero-shot-image-classification", model=folder),
            "UniCL (from_clip)": pipeline("zero-shot-image-classification", model=unicl_folder),
        }
        photo = Image.new("RGB", (args.image_size + 16, args.image_size), (120, 60, 200))

        names = list(models)
        rates = {name: {kind: [] for kind in KINDS} for name in names}
        processors = {
            CLIP_REFERENCE: AutoProcessor.from_pretrained(folder),
            "UniCL (from_clip)": AutoProcessor.from_pretrained(unicl_folder),
        }
        labels = [f"class {i}" for i in range(5)]
        prompts = [f"This is a photo of {label}." for label in labels]

        def measure(name: str) -> None:
            model = models[name]
            work = {
                "image": (lambda: model.get_image_features(pixel_values=pixels), args.steps, args.batch_size),
                "text": (lambda: model.get_text_features(**text), args.steps, args.batch_size),
                "zero_shot": (
                    lambda: zero_shot(model, tokenizer, eval_images, eval_labels, classes, args.batch_size),
                    1,
                    args.eval_images,
                ),
            }
            if name in pipelines:
                work["pipeline"] = (lambda: pipelines[name](photo, candidate_labels=labels), args.pipeline_calls, 1)
                # The same work without the pipeline: preprocessing, one forward, softmax.
                work["direct"] = (
                    lambda: direct_call(model, processors[name], photo, prompts),
                    args.pipeline_calls,
                    1,
                )
            for kind, (fn, repeats, items) in work.items():
                seconds = cpu_seconds(lambda: [fn() for _ in range(repeats)])  # noqa: B023 (called right here)
                rates[name][kind].append(repeats * items / seconds)

        with torch.no_grad():
            for name in names:  # warm-up: lazy initialisation and allocator growth stay out of the rounds
                measure(name)
            rates = {name: {kind: [] for kind in KINDS} for name in names}
            for round_index in range(args.rounds):
                for name in names[round_index % len(names) :] + names[: round_index % len(names)]:
                    measure(name)
        return {"rates": rates, "names": names}


def table(results: dict) -> str:
    rates, names = results["rates"], results["names"]
    rows = []
    for name in names:
        row = [name]
        for kind in KINDS:
            values = rates[name][kind]
            if not values:
                row += ["-", "-"]
                continue
            reference = rates[CLIP_REFERENCE][kind]
            ratios = [v / r for v, r in zip(values, reference)]
            row += [f"{min(values):.0f} / {median(values):.0f} / {max(values):.0f}", f"{median(ratios):.2f}x"]
        rows.append(row)
    header = ["model"]
    for kind in HEADERS:
        header += [f"{kind} (min / median / max)", "vs CLIPModel"]
    overhead = [
        f"{name}: the pipeline runs at {median(rates[name]['pipeline']) / median(rates[name]['direct']):.2f}x "
        "the rate of the same preprocessing + forward + softmax called directly"
        for name in names
        if rates[name]["pipeline"]
    ]
    return markdown_table(header, rows) + "\n\n" + "\n".join(overhead)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed batches per candidate and round")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--text-width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--eval-images", type=int, default=10_000)
    parser.add_argument("--pipeline-calls", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.steps, args.batch_size, args.width, args.text_width = 2, 1, 8, 64, 64
        args.layers, args.eval_images, args.pipeline_calls = 1, 32, 2
    results = run(args)
    print(describe_machine())
    print(table(results))
    return results


if __name__ == "__main__":
    main()
