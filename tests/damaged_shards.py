"""Shards with every kind of damage a crawl holds, mixed with good samples, for the tests of the data stream and the
trainer (`write_damaged_shards`)."""

from __future__ import annotations

import io
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

from hf_unified.training.data import synthetic_data


def add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0  # byte-identical shards on every run
    tar.addfile(info, io.BytesIO(payload))


@dataclass
class DamagedShards:
    """What `write_damaged_shards` wrote, and what a stream must report when it reads the shards as
    `SourceSpec(path, image_column="jpg", text_column="txt", label_column="cls")` with `SHAPES` as class names.

    Attributes:
        paths: the shards, sorted (the stream's order without shuffling).
        good_texts: the captions of the samples that must train, in that order.
        skipped: damage kind -> samples that must be skipped in one pass.
        damaged_shards: shard path -> the kind of its damage (`unreadable_shard`, `truncated_shard`).
    """

    paths: list[str]
    good_texts: list[str]
    skipped: dict[str, int]
    damaged_shards: dict[str, str]

    @property
    def num_rows(self) -> int:
        """Samples (good and skipped) in one pass; damaged shards are not samples."""
        return len(self.good_texts) + sum(self.skipped.values())


def write_damaged_shards(output: str | Path, image_size: int = 16, seed: int = 0) -> DamagedShards:
    """Writes four shards with every kind of damage a crawl holds, mixed with good samples (24 samples a pass: 14
    good, 10 skipped), for tests of the data stream and the trainer:

    - `damaged-00000.tar`: 0 bytes (the first shard, where `datasets` infers the columns);
    - `damaged-00001.tar`: 7 good samples (one with a stray garbage `.npy` member, which nobody reads) and one of
      each: a non-integer `.cls`, `.cls` 99 and -1 (outside the 6 classes), a non-UTF-8 `.txt`, a blank `.txt`
      without `.cls`, a truncated JPEG, random bytes as `.jpg`, a garbage `.npy` in place of the `.jpg`, two `.txt`
      members, and a lone garbage `.npy` member of its own key;
    - `damaged-00002.tar`: 3 good samples, then cut in the middle of the 4th sample's image;
    - `damaged-00003.tar`: 4 good samples.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{seed}-damaged")
    good_texts: list[str] = []

    def good_sample(key: str, stray: bytes | None = None) -> list[tuple[str, bytes]]:
        attributes = synthetic_data.sample_attributes(rng, "train")
        image = synthetic_data.render(
            attributes["shape"], attributes["colour"], attributes["size"], attributes["position"], image_size, rng
        )
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        text = synthetic_data.caption(attributes, rng)
        good_texts.append(text)
        members = [(f"{key}.jpg", buffer.getvalue()), (f"{key}.txt", text.encode())]
        members += [(f"{key}.cls", str(synthetic_data.SHAPES.index(attributes["shape"])).encode())]
        return members + ([(f"{key}.npy", stray)] if stray is not None else [])

    def write(name: str, samples: list[list[tuple[str, bytes]]]) -> Path:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for members in samples:
                for member, payload in members:
                    add_member(tar, member, payload)
        (output / name).write_bytes(buffer.getvalue())
        return output / name

    jpeg = io.BytesIO()
    synthetic_data.render("circle", "red", "large", "center", image_size, rng).save(jpeg, format="JPEG")
    jpeg, garbage = jpeg.getvalue(), b"\x93NUMPY garbage, not an array"
    (output / "damaged-00000.tar").write_bytes(b"")
    mixed = [good_sample("s1-00"), good_sample("s1-01", stray=garbage)]
    mixed += [
        [("s1-02.jpg", jpeg), ("s1-02.txt", b"a large red circle."), ("s1-02.cls", b"three")],  # bad_label
        [("s1-03.jpg", jpeg), ("s1-03.txt", b"a large red circle."), ("s1-03.cls", b"99")],  # label_out_of_range
        [("s1-04.jpg", jpeg), ("s1-04.txt", b"a large red circle."), ("s1-04.cls", b"-1")],  # label_out_of_range
        [("s1-05.jpg", jpeg), ("s1-05.txt", b"\xff\xfe a red circle"), ("s1-05.cls", b"0")],  # bad_text_encoding
        [("s1-06.jpg", jpeg), ("s1-06.txt", b"  \n")],  # missing_text (blank caption, no label)
    ]
    mixed += [good_sample("s1-07"), good_sample("s1-08")]
    mixed += [
        [("s1-09.jpg", jpeg[: len(jpeg) // 2]), ("s1-09.txt", b"a large red circle.")],  # corrupt_image (truncated)
        [("s1-10.jpg", bytes(rng.getrandbits(8) for _ in range(300))), ("s1-10.txt", b"noise")],  # corrupt_image
        [("s1-11.npy", garbage), ("s1-11.txt", b"a large red circle."), ("s1-11.cls", b"0")],  # missing_image
        [("s1-12.jpg", jpeg), ("s1-12.txt", b"a red circle."), ("s1-12.txt", b"a circle.")],  # duplicate_member
        [("stray.npy", garbage)],  # unexpected_member
    ]
    mixed += [good_sample(f"s1-{index}") for index in range(13, 16)]
    write("damaged-00001.tar", mixed)
    truncated = write("damaged-00002.tar", [good_sample(f"s2-{index:02d}") for index in range(4)])
    good_texts.pop()  # the 4th sample of the truncated shard is cut off
    with tarfile.open(truncated) as tar:
        fourth_image = tar.getmember("s2-03.jpg")
    truncated.write_bytes(truncated.read_bytes()[: fourth_image.offset_data + fourth_image.size // 2])
    write("damaged-00003.tar", [good_sample(f"s3-{index:02d}") for index in range(4)])
    (output / "classes.json").write_text(json.dumps(list(synthetic_data.SHAPES)))
    return DamagedShards(
        paths=[str(output / f"damaged-{index:05d}.tar") for index in range(4)],
        good_texts=good_texts,
        skipped={
            "bad_label": 1,
            "label_out_of_range": 2,
            "bad_text_encoding": 1,
            "missing_text": 1,
            "corrupt_image": 2,
            "missing_image": 1,
            "duplicate_member": 1,
            "unexpected_member": 1,
        },
        damaged_shards={
            str(output / "damaged-00000.tar"): "unreadable_shard",
            str(output / "damaged-00002.tar"): "truncated_shard",
        },
    )
