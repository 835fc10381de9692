"""A deterministic, procedurally generated image-caption-label set ("shapes") written as webdataset shards.

It is the default training data of `training/train.py`: it needs no download, trains a tiny dual encoder on a CPU in
minutes, and its held-out split measures compositional generalisation.

Each image is one coloured shape on a dark, slightly noisy background. Attributes:

- shape (the class label): circle, square, triangle, cross, diamond, ring (6 classes, chance = 1/6);
- colour: red, green, blue, yellow, purple, orange;
- size: small, large;
- position: top left, top right, bottom left, bottom right, center.

Captions combine the attributes with a few sentence patterns ("a small red circle in the top left.",
"there is a large blue ring at the center.", ...). Six (shape, colour) combinations never occur in the training split
(one colour per shape, see `HELD_OUT_COMBINATIONS`); the evaluation split holds them for half of its samples, so
zero-shot accuracy there measures whether shape and colour were learnt as separate concepts.

Files (img2dataset layout; `cls` is the shape id, `json` holds every attribute):

    <output>/train-00000.tar ... train-0000{n-1}.tar   {key}.jpg {key}.txt {key}.cls {key}.json
    <output>/eval-00000.tar
    <output>/classes.json                               ["circle", "square", ...]
    <output>/info.json                                  generation settings and counts

The folder is written whole or not at all (`files.StagedFolder`): generated aside, then published by a rename, so a
kill or a full disk mid-generation never leaves a partial set that a glob over `train-*.tar` would read. Generating
into an existing folder replaces the files a generation writes (`GENERATED_FILES`: also shards of an earlier, larger
generation) and keeps every other entry.

Command line: `python -m hf_unified.training.data.synthetic_data --output data/shapes`.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import math
import random
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ...files import StagedFolder, carry_over

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 220, 40),
    "purple": (150, 50, 200),
    "orange": (245, 140, 20),
}
SIZES = {"small": (0.18, 0.22), "large": (0.28, 0.33)}  # shape radius as a fraction of the image side
POSITIONS = {
    "top left": (0.34, 0.34),
    "top right": (0.66, 0.34),
    "bottom left": (0.34, 0.66),
    "bottom right": (0.66, 0.66),
    "center": (0.5, 0.5),
}
CAPTION_PATTERNS = (
    "a {size} {colour} {shape} in the {position}.",
    "a {colour} {shape} in the {position}.",
    "there is a {size} {colour} {shape} at the {position}.",
    "{size} {colour} {shape}, {position}.",
    "a {shape} that is {colour} and {size}, in the {position}.",
)
# Zero-shot prompts in the captions' own words (the training captions never say "photo").
SHAPES_TEMPLATES = (
    "a {}.",
    "a small {}.",
    "a large {}.",
    "a {} in the center.",
    "there is a {} in the top left.",
    "a {} in the bottom right.",
)
# (shape, colour) pairs absent from the training split: shape i is never seen in colour i.
HELD_OUT_COMBINATIONS = tuple(zip(SHAPES, COLOURS))
# What a generation writes into its folder (name patterns); a new generation replaces these and keeps the rest.
GENERATED_FILES = ("train-*.tar", "eval-*.tar", "classes.json", "info.json")


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.75 * r, cy), (cx, cy + r), (cx - 0.75 * r, cy)]
    raise ValueError(shape)


def render(shape: str, colour: str, size: str, position: str, image_size: int, rng: random.Random) -> Image.Image:
    """Draws one sample; `rng` jitters the radius, the centre, the background and the noise."""
    if shape not in SHAPES or colour not in COLOURS or size not in SIZES or position not in POSITIONS:
        raise ValueError(f"unknown attribute in {(shape, colour, size, position)}")
    background = np.full((image_size, image_size, 3), rng.randint(15, 60), dtype=np.int16)
    image = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    r = rng.uniform(*SIZES[size]) * image_size
    cx = (POSITIONS[position][0] + rng.uniform(-0.04, 0.04)) * image_size
    cy = (POSITIONS[position][1] + rng.uniform(-0.04, 0.04)) * image_size
    fill = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in COLOURS[colour])
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(r * 0.35)))
    elif shape == "square":
        s = r * 0.85
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "cross":
        w = r * 0.33
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r), fill=fill)
    pixels = np.asarray(image, dtype=np.int16)
    noise = np.random.default_rng(rng.getrandbits(32)).integers(-12, 13, size=pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


def sample_attributes(rng: random.Random, split: str) -> dict:
    """Draws (shape, colour, size, position) for a split: training never yields a held-out combination; the
    evaluation split yields one half of the time."""
    held_out = set(HELD_OUT_COMBINATIONS)
    if split == "eval" and rng.random() < 0.5:
        shape, colour = rng.choice(HELD_OUT_COMBINATIONS)
    else:
        while True:
            shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
            if (shape, colour) not in held_out:
                break
    return {
        "shape": shape,
        "colour": colour,
        "size": rng.choice(list(SIZES)),
        "position": rng.choice(list(POSITIONS)),
        "held_out_combination": (shape, colour) in held_out,
    }


def caption(attributes: dict, rng: random.Random) -> str:
    return rng.choice(CAPTION_PATTERNS).format(**attributes)


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0  # byte-identical shards on every run
    tar.addfile(info, io.BytesIO(payload))


def write_split(output: Path, split: str, num_samples: int, num_shards: int, image_size: int, seed: int) -> None:
    rng = random.Random(f"{seed}-{split}")
    per_shard = math.ceil(num_samples / num_shards)
    index = 0
    for shard in range(num_shards):
        with tarfile.open(output / f"{split}-{shard:05d}.tar", "w") as tar:
            for _ in range(min(per_shard, num_samples - index)):
                attributes = sample_attributes(rng, split)
                image = render(
                    attributes["shape"],
                    attributes["colour"],
                    attributes["size"],
                    attributes["position"],
                    image_size,
                    rng,
                )
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=95)
                key = f"{split}{index:07d}"
                _add_member(tar, f"{key}.jpg", buffer.getvalue())
                _add_member(tar, f"{key}.txt", caption(attributes, rng).encode())
                _add_member(tar, f"{key}.cls", str(SHAPES.index(attributes["shape"])).encode())
                _add_member(tar, f"{key}.json", json.dumps(attributes).encode())
                index += 1


def generate(
    output: str | Path,
    num_train: int = 4096,
    num_eval: int = 600,
    num_train_shards: int = 4,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Writes the shapes dataset to `output` (created if needed) and returns it.

    The same arguments always give byte-identical files. The set is generated in a staging folder beside `output`
    and published whole (module docstring): until then `output` is as it was; on an error (a full disk) nothing is
    left behind.
    """
    if num_train < num_train_shards or num_eval < 1 or num_train_shards < 1:
        raise ValueError(
            f"need num_train >= num_train_shards >= 1 and num_eval >= 1, got {num_train}, "
            f"{num_train_shards}, {num_eval}"
        )
    output = Path(output)
    with StagedFolder(output) as staging:
        write_split(staging, "train", num_train, num_train_shards, image_size, seed)
        write_split(staging, "eval", num_eval, 1, image_size, seed)
        (staging / "classes.json").write_text(json.dumps(list(SHAPES)))
        info = {
            "num_train": num_train,
            "num_eval": num_eval,
            "num_train_shards": num_train_shards,
            "image_size": image_size,
            "seed": seed,
            "classes": list(SHAPES),
            "held_out_combinations": [list(c) for c in HELD_OUT_COMBINATIONS],
            "zero_shot_chance": 1 / len(SHAPES),
        }
        (staging / "info.json").write_text(json.dumps(info, indent=2))
        carry_over(output, staging, keep=lambda entry: not _generated(entry.name))  # the user's other files
    return output


def _generated(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in GENERATED_FILES)


def is_complete(output: str | Path) -> bool:
    """Whether `output` holds a whole generated set: a readable `info.json` and every file it counts."""
    output = Path(output)
    try:
        info = json.loads((output / "info.json").read_text())
        shards = [f"train-{index:05d}.tar" for index in range(int(info["num_train_shards"]))]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all((output / name).is_file() for name in [*shards, "eval-00000.tar", "classes.json"])


def ensure_dataset(output: str | Path, **kwargs) -> Path:
    """Generates the dataset (`generate(output, **kwargs)`) unless `output` already holds a whole one
    (`is_complete`; a set cut by a kill before generation was atomic is generated again)."""
    output = Path(output)
    if not is_complete(output):
        generate(output, **kwargs)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="data/shapes")
    parser.add_argument("--num_train", type=int, default=4096)
    parser.add_argument("--num_eval", type=int, default=600)
    parser.add_argument("--num_train_shards", type=int, default=4)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = generate(args.output, args.num_train, args.num_eval, args.num_train_shards, args.image_size, args.seed)
    print(f"wrote {args.num_train} training and {args.num_eval} evaluation samples to {path}")


if __name__ == "__main__":
    main()

__all__ = [
    "COLOURS",
    "GENERATED_FILES",
    "HELD_OUT_COMBINATIONS",
    "POSITIONS",
    "SHAPES",
    "SHAPES_TEMPLATES",
    "SIZES",
    "caption",
    "ensure_dataset",
    "generate",
    "is_complete",
    "render",
    "sample_attributes",
]
