"""Training and evaluation sources as `datasets` streams that survive damaged files.

A *source* is one streamed dataset: local webdataset shards (img2dataset layout), parquet files, an imagefolder
with a metadata file, or a Hub dataset id. Whatever its layout, it streams rows of `RAW_FEATURES`: the undecoded
image, the caption, the integer label, where the row came from, and the damage found while reading it, if any.
Sources are mixed with `interleave_datasets(probabilities=...)` (UniCL's balanced image-label / image-text mix is two
sources at 0.5 each), shuffled with a buffer and split per rank with `split_dataset_by_node` (`build_stream`).

Local shards (`.tar`, `.parquet`) are read here, one shard at a time, by an `IterableDataset.from_generator` whose
shard list `datasets` splits over ranks and workers and reorders on every epoch. Each shard is read under one guard:
when it cannot be opened or ends early, the rows read so far stand, one *shard row* (`damage` = `unreadable_shard` or
`truncated_shard`) names it, and the stream carries on with the next shard; a tar must end with its end-of-archive
block (`tarfile` takes a cut at a member boundary for the end), and a path that is not a regular file (a FIFO named
`x.tar`) is named without being read. Damage to one sample (a caption that is not UTF-8 or longer than
`max_caption_chars`, a label that is not an integer, a stray member, a missing value) becomes a row with `damage` set
and its values left empty; images are decoded later, in the DataLoader workers (`data.decode_example`).

Why not `load_dataset("webdataset")` (measured with datasets 5.2): its builder decodes members inside its generator
(`int` on `.cls`, UTF-8 on `.txt`, numpy on `.npy`, even for members nobody reads), and an exception in that
generator ends the whole stream, which is what a 0-byte or truncated tar also does through `tarfile`; and it infers
the features from the first five samples of the first shard, so a damaged first shard fails `load_dataset` itself.
Hub and imagefolder sources still go through `load_dataset` (with their rows checked the same way here): a file
that fails inside `datasets`' own generator there ends the stream with `datasets`' error.
"""

from __future__ import annotations

import bz2
import contextlib
import glob
import gzip
import lzma
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import pyarrow.parquet as pq
from datasets import Features, IterableDataset, Value, interleave_datasets, load_dataset
from datasets import Image as ImageFeature
from datasets.distributed import split_dataset_by_node
from datasets.packaged_modules.webdataset.webdataset import base_plus_ext

from .health import DataError

FORMATS = ("webdataset", "parquet", "imagefolder", "hub")
# One row of every source. `image` is undecoded: bytes, or the path of a local file.
RAW_FEATURES = Features(
    {
        "image": {"bytes": Value("binary"), "path": Value("string")},
        "text": Value("string"),  # None when absent or blank
        "label": Value("int64"),  # None when absent
        "key": Value("string"),  # the sample's key (tar) or row number (parquet) within its shard, for messages
        "shard": Value("string"),  # the file (or source) the row came from
        "damage": Value("string"),  # a kind of `health.SAMPLE_DAMAGE` / `SHARD_DAMAGE`, or None
        "detail": Value("string"),  # what exactly was wrong
    }
)
# Longest caption kept (characters), checked before anything tokenises it: a 20 MB caption costs 74 s in the
# training tokenizer and 36 s and 2.1 GB in the tokenizer pre-pass. 10,000 characters is about 2,000 words, over
# a hundred times what a 77-token text tower reads, and long-caption sets (dense captions) stay well below it.
MAX_CAPTION_CHARS = 10_000
_COLUMN_SCAN_SAMPLES = 5  # samples whose members name a tar source's columns (as `datasets`' webdataset builder)
_INT64 = 2**63


@dataclass
class SourceSpec:
    """One training or evaluation source.

    Args:
        path: a directory or glob of `.tar` shards, of `.parquet` files, an imagefolder directory, or a Hub id.
        image_column: the image column (`"jpg"` for img2dataset shards, `"image"` for imagefolder).
        text_column: caption column, or None.
        label_column: integer class column, or None. A sample without a caption gets a prompt built from its class
            name (UniCL's image-label data); a sample with a caption and no label is an image-text pair.
        probability: sampling weight when several sources are mixed.
        format: one of `FORMATS`, or None to detect it from `path`.
        split: split name for Hub and imagefolder datasets.
        max_caption_chars: a longer caption (in characters) makes its sample damage (`oversized_caption`), so that
            neither training, evaluation nor the tokenizer pre-pass tokenises it; default `MAX_CAPTION_CHARS`
            (10,000).
    """

    path: str
    image_column: str = "jpg"
    text_column: str | None = "txt"
    label_column: str | None = None
    probability: float = 1.0
    format: str | None = None
    split: str = "train"
    name: str = field(default="")
    max_caption_chars: int = MAX_CAPTION_CHARS

    def __post_init__(self):
        self.text_column = self.text_column or None
        self.label_column = self.label_column or None
        if self.text_column is None and self.label_column is None:
            raise ValueError(f"source {self.path!r} needs a text column, a label column or both")
        if self.format is None:
            self.format = detect_format(self.path)
        if self.format not in FORMATS:
            raise ValueError(f"source {self.path!r}: format must be one of {FORMATS}, got {self.format!r}")
        self.name = self.name or self.path
        if not (isinstance(self.max_caption_chars, int) and self.max_caption_chars > 0):
            raise ValueError(
                f"source {self.path!r}: max_caption_chars must be a positive integer, got {self.max_caption_chars!r}"
            )

    @property
    def columns(self) -> dict[str, str]:
        """The columns the source reads, by role."""
        roles = {"image_column": self.image_column, "text_column": self.text_column, "label_column": self.label_column}
        return {role: column for role, column in roles.items() if column is not None}


def _files(path: str, suffixes: Sequence[str]) -> list[str]:
    pattern = os.path.join(path, "*") if os.path.isdir(path) else path
    return sorted(f for f in glob.glob(pattern) if f.endswith(tuple(suffixes)))


def detect_format(path: str) -> str:
    """`webdataset` for `.tar` files or a folder of them, `parquet` likewise, `imagefolder` for another local
    folder, `hub` for anything that does not exist locally."""
    if _files(path, (".tar",)):
        return "webdataset"
    if _files(path, (".parquet",)):
        return "parquet"
    if os.path.isdir(path):
        return "imagefolder"
    if any(ch in path for ch in "*?[") or path.startswith((".", "/")):
        raise ValueError(f"no .tar or .parquet files match {path!r}")
    return "hub"


def _integer(value) -> int:
    """A label cell (int, float, or the bytes/str of a `.cls` member) as an int64; ValueError otherwise."""
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    number = int(value)  # int(b" 3\n") == 3; int(b"cat") raises
    if not -_INT64 <= number < _INT64:
        raise ValueError(value)
    return number


def damaged_row(key: str | None, shard: str, kind: str, detail: str) -> dict:
    """A row that holds no sample, only what was wrong: a damaged sample (`key` set) or a damaged shard."""
    return {"image": None, "text": None, "label": None, "key": key, "shard": shard, "damage": kind, "detail": detail}


def raw_row(spec: SourceSpec, image, text, label, key: str | None, shard: str) -> dict:
    """One sample's cells as a `RAW_FEATURES` row, or a `damaged_row` naming the first damage found (never raised).

    A sample needs an image and something to pair it with: a caption (of at most `spec.max_caption_chars`
    characters), or a class label to build a prompt from.
    """
    if image is None:
        return damaged_row(key, shard, "missing_image", f"no {spec.image_column!r} value")
    if isinstance(image, dict):
        image = {"bytes": image.get("bytes"), "path": image.get("path")}
    elif isinstance(image, (bytes, bytearray)):
        image = {"bytes": bytes(image), "path": None}
    elif isinstance(image, str):
        image = {"bytes": None, "path": image}
    else:
        detail = f"{spec.image_column!r} holds a {type(image).__name__}, not an image"
        return damaged_row(key, shard, "corrupt_image", detail)
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as error:
            return damaged_row(key, shard, "bad_text_encoding", str(error))
    elif text is not None and not isinstance(text, str):
        detail = f"{spec.text_column!r} holds a {type(text).__name__}, not text"
        return damaged_row(key, shard, "bad_text_encoding", detail)
    text = text if text and text.strip() else None
    if text is not None and len(text) > spec.max_caption_chars:
        detail = f"{len(text):,} characters, more than max_caption_chars={spec.max_caption_chars:,}"
        return damaged_row(key, shard, "oversized_caption", detail)
    if label is not None:
        try:
            label = _integer(label)
        except (ValueError, TypeError):
            return damaged_row(key, shard, "bad_label", f"{spec.label_column!r} is {label!r}, not an integer")
    if text is None and label is None:
        kind, column = ("missing_text", spec.text_column) if spec.text_column else ("missing_label", spec.label_column)
        return damaged_row(key, shard, kind, f"no {column!r} value (absent or blank)")
    return {"image": image, "text": text, "label": label, "key": key, "shard": shard, "damage": None, "detail": None}


class NotARegularFile(OSError):
    """A shard path that names a FIFO, a device, a socket or a directory: never read (a FIFO blocks forever)."""


def open_shard(path: str) -> BinaryIO:
    """A local shard opened for binary reading, refusing anything but a regular file.

    The file is opened non-blocking and checked before a byte is read: opening or reading a FIFO named `x.tar`
    blocks until a writer appears, which would hang the whole stream.

    Raises:
        NotARegularFile: `path` is a FIFO, a device, a socket or a directory.
        OSError: it cannot be opened.
    """
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode) else "a device or socket"
            raise NotARegularFile(f"{path} is {kind}, not a regular file: not read")
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


class _LastRead:
    """A binary file's `read`, `seek` and `tell`, keeping the bytes of the last read: after `tarfile` takes the end
    of an archive, they are the block it read there (`_tar_members`)."""

    def __init__(self, file: BinaryIO):
        self.file, self.last = file, b""

    def read(self, size: int = -1) -> bytes:
        self.last = self.file.read(size)
        return self.last

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()


# Compressed tars named `.tar` are read too (as `tarfile.open(mode="r:*")` would), decompressed as a stream.
_DECOMPRESSORS = {b"\x1f\x8b": gzip.GzipFile, b"BZh": bz2.BZ2File, b"\xfd7zXZ\x00": lzma.LZMAFile}


def _tar_members(path: str) -> Iterator[tuple[str, bytes]]:
    """(name, payload) of the regular, non-hidden members of a local tar shard, in order.

    `tarfile` takes a header cut short, an invalid header after the first member and a file that ends at a member
    boundary all for the end of the archive; so the archive must end with its end-of-archive block (zeros), or the
    data past that point is lost without a word.

    Raises:
        NotARegularFile: the path is a FIFO, a device, ...
        tarfile.ReadError: the archive is not a tar, breaks inside a member, or ends without its end-of-archive block.
    """
    with open_shard(path) as raw:
        magic = raw.read(6)
        raw.seek(0)
        decompress = next((opener for prefix, opener in _DECOMPRESSORS.items() if magic.startswith(prefix)), None)
        with decompress(fileobj=raw) if decompress else contextlib.nullcontext(raw) as file:
            reader = _LastRead(file)
            with tarfile.open(fileobj=reader, mode="r:") as tar:
                while (info := tar.next()) is not None:
                    tar.members.clear()  # no index of the shard's members is kept
                    if info.isreg() and not os.path.basename(info.name).startswith((".", "__")):
                        yield info.name, tar.extractfile(info).read()  # a member cut short raises here
                if not reader.last or reader.last.strip(b"\0"):
                    raise tarfile.ReadError(
                        f"the archive ends at byte {tar.offset} without its end-of-archive block (cut at a member "
                        "boundary or inside a header, or a header is damaged: what followed is lost)"
                    )


def _tar_samples(path: str) -> Iterator[tuple[str, dict[str, list[bytes]]]]:
    """(key, {extension: [payloads]}) of consecutive members sharing a key (webdataset's grouping). When the archive
    breaks, the sample being read is yielded with the members read completely, then the error is raised."""
    key, members = None, {}
    try:
        for name, payload in _tar_members(path):
            member_key, extension = base_plus_ext(name)
            if member_key is None:  # a member without an extension: a stray file, a sample of its own
                member_key, extension = name, ""
            if member_key != key:
                if members:
                    yield key, members
                key, members = member_key, {}
            members.setdefault(extension, []).append(payload)
    except Exception:
        if members:
            yield key, members
        raise
    if members:
        yield key, members


def _tar_rows(path: str, spec: SourceSpec) -> Iterator[dict]:
    columns = list(spec.columns.values())
    for key, members in _tar_samples(path):
        duplicated = sorted(extension for extension, payloads in members.items() if len(payloads) > 1)
        if not any(column in members for column in columns):
            detail = f"members {sorted(members)}, none of the source's columns {columns}"
            yield damaged_row(key, path, "unexpected_member", detail)
        elif duplicated:
            yield damaged_row(key, path, "duplicate_member", f"several {duplicated} members")
        else:
            cell = {column: members[column][0] for column in columns if column in members}
            image, text, label = (cell.get(spec.image_column), cell.get(spec.text_column), cell.get(spec.label_column))
            yield raw_row(spec, image, text, label, key, path)


def _parquet_rows(path: str, spec: SourceSpec) -> Iterator[dict]:
    columns = spec.columns
    index = 0
    with open_shard(path) as file:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=256, columns=list(columns.values())):
            for cells in batch.to_pylist():
                values = {role: cells[column] for role, column in columns.items()}
                image, text, label = (values.get(role) for role in ("image_column", "text_column", "label_column"))
                yield raw_row(spec, image, text, label, f"row {index}", path)
                index += 1


_SHARD_READERS = {"webdataset": _tar_rows, "parquet": _parquet_rows}


def read_shards(shards: list[str], spec: SourceSpec) -> Iterator[dict]:
    """The rows of `shards` in order, each shard read under one guard: a shard that cannot be opened or breaks is
    kept up to where it broke, named by one `damaged_row`, and reading goes on with the next shard.

    This is the generator of `IterableDataset.from_generator(gen_kwargs={"shards": [...]})`, so `datasets` shards
    the list over ranks and DataLoader workers and reorders it on every epoch.
    """
    read = _SHARD_READERS[spec.format]
    for shard in shards:
        rows = 0
        try:
            for row in read(shard, spec):
                rows += 1
                yield row
        except Exception as error:  # noqa: BLE001 - a shard that fails to read is damage: named, never fatal
            detail = f"{type(error).__name__}: {error}"
            if rows:
                yield damaged_row(None, shard, "truncated_shard", f"{detail} after {rows} samples")
            else:
                yield damaged_row(None, shard, "unreadable_shard", detail)


def _local_columns(spec: SourceSpec, files: list[str]) -> list[str]:
    """The columns of a local source: the schema of its first readable parquet file, or the member extensions of
    the first samples of its first readable shards (damaged shards are passed over, as the stream will)."""
    errors = []
    seen, samples = set(), 0
    for path in files:
        try:
            if spec.format == "parquet":
                with open_shard(path) as file:
                    return list(pq.read_schema(file).names)
            for _, members in _tar_samples(path):
                seen.update(members)
                samples += 1
                if samples >= _COLUMN_SCAN_SAMPLES:
                    return sorted(seen)
        except Exception as error:  # noqa: BLE001 - a damaged shard here is named by the stream later
            errors.append(f"{path} ({type(error).__name__}: {error})")
    if seen:
        return sorted(seen)
    raise DataError(
        f"source {spec.name!r}: none of its {len(files)} {spec.format} files can be read: " + "; ".join(errors[:5])
    )


def open_source(spec: SourceSpec) -> IterableDataset:
    """Streams one source as `RAW_FEATURES` rows, checking its column names first.

    Raises:
        ValueError: the source lacks a named column (the message lists the columns it has).
        DataError: none of the source's local files can be read.
    """
    if spec.format in _SHARD_READERS:
        files = _files(spec.path, (".tar",) if spec.format == "webdataset" else (".parquet",))
        if not files:
            raise ValueError(f"source {spec.name!r}: no {spec.format} files match {spec.path!r}")
        columns, dataset = _local_columns(spec, files), None
    else:
        if spec.format == "imagefolder":
            dataset = load_dataset("imagefolder", data_dir=spec.path, split=spec.split, streaming=True)
        else:
            dataset = load_dataset(spec.path, split=spec.split, streaming=True)
        columns = list(dataset.features) if dataset.features is not None else list(next(iter(dataset.take(1))))
    for role, column in spec.columns.items():
        if column not in columns:
            raise ValueError(
                f"source {spec.name!r} has no column {column!r} (given as {role}); its columns are {columns}"
            )
    if dataset is None:
        return IterableDataset.from_generator(
            read_shards, features=RAW_FEATURES, gen_kwargs={"shards": files, "spec": spec}
        )
    if dataset.features is not None and isinstance(dataset.features[spec.image_column], ImageFeature):
        dataset = dataset.cast_column(spec.image_column, ImageFeature(decode=False))

    def standardise(example: dict) -> dict:
        cells = {role: example[column] for role, column in spec.columns.items()}
        image, text, label = (cells.get(role) for role in ("image_column", "text_column", "label_column"))
        return raw_row(spec, image, text, label, example.get("__key__"), example.get("__url__") or spec.name)

    return dataset.map(standardise, remove_columns=columns, features=RAW_FEATURES)


def build_stream(
    specs: Sequence[SourceSpec],
    seed: int,
    rank: int,
    world_size: int,
    shuffle_buffer_size: int,
    shuffle_input_shards: int = 10,
) -> IterableDataset:
    """Mixed (by `probability`), shuffled, per-rank stream of `RAW_FEATURES` rows.

    The shuffle reorders the shards on every pass and draws rows from a `shuffle_buffer_size` buffer that up to
    `shuffle_input_shards` shards feed at once (`datasets`' `max_buffer_input_shards`). Several input shards mix
    more shards into each batch, but `datasets` reads them through a thread per shard and one hand-over per row:
    on a CPU core that took 200 us a row against 120 us with one shard at a time (benchmarks/data_pipeline.py,
    "raw stream"), and with one stream lane every DataLoader worker reads the rank's whole raw stream
    (`data.TrainStream`).
    """
    stream = _mix_and_shuffle(
        [open_source(spec) for spec in specs], specs, seed, shuffle_buffer_size, shuffle_input_shards
    )
    return split_dataset_by_node(stream, rank=rank, world_size=world_size)


# Lane k shuffles with seed + k * this (a prime far above any seed one would pick by hand).
_LANE_SEED_STRIDE = 1_000_003


def build_lanes(
    specs: Sequence[SourceSpec],
    seed: int,
    rank: int,
    world_size: int,
    shuffle_buffer_size: int,
    shuffle_input_shards: int = 10,
    lanes: int = 1,
) -> list[IterableDataset]:
    """This rank's stream as `lanes` independent streams over disjoint shards (`data.TrainStream` builds batch `b`
    from lane `b % lanes`), so that DataLoader workers can split the raw reading between them.

    One lane is `build_stream`. With more, every source needs at least `lanes * world_size` shards: lane `k` of rank
    `r` gets the source shards `i` with `i % (lanes * world_size) == r * lanes + k`, mixed with the other sources'
    and shuffled on its own (seeded by `seed` and `k`).

    Raises:
        ValueError: a source has fewer shards than `lanes * world_size`.
    """
    if lanes == 1:
        return [build_stream(specs, seed, rank, world_size, shuffle_buffer_size, shuffle_input_shards)]
    parts = lanes * world_size
    datasets = [open_source(spec) for spec in specs]
    for spec, dataset in zip(specs, datasets):
        if dataset.num_shards < parts:
            raise ValueError(
                f"source {spec.name!r} has {dataset.num_shards} shard(s), but stream_lanes {lanes} x world size "
                f"{world_size} needs at least {parts}: split it into more shards or use fewer lanes (1 always works)"
            )
    return [
        _mix_and_shuffle(
            [dataset.shard(num_shards=parts, index=rank * lanes + lane, contiguous=False) for dataset in datasets],
            specs,
            seed + _LANE_SEED_STRIDE * lane,
            shuffle_buffer_size,
            shuffle_input_shards,
        )
        for lane in range(lanes)
    ]


def _mix_and_shuffle(
    datasets: list[IterableDataset], specs: Sequence[SourceSpec], seed: int, buffer_size: int, input_shards: int
) -> IterableDataset:
    if len(datasets) > 1:
        total = sum(spec.probability for spec in specs)
        if total <= 0 or any(spec.probability < 0 for spec in specs):
            raise ValueError(
                f"source probabilities must be >= 0 with a positive sum, got {[s.probability for s in specs]}"
            )
        stream = interleave_datasets(
            datasets,
            probabilities=[spec.probability / total for spec in specs],
            seed=seed,
            stopping_strategy="all_exhausted",
        )
    else:
        stream = datasets[0]
    if buffer_size > 0:
        stream = stream.shuffle(seed=seed, buffer_size=buffer_size, max_buffer_input_shards=input_shards)
    return stream


def iter_texts(specs: Sequence[SourceSpec], limit: int, seed: int = 0) -> Iterator[str]:
    """Up to `limit` clean captions of the whole, unsplit and unshuffled stream (the same for every world size),
    for training a tokenizer: damaged rows and shards are passed over (images are not decoded)."""
    count = 0
    if limit <= 0:
        return
    for row in build_stream(specs, seed, rank=0, world_size=1, shuffle_buffer_size=0):
        if row["damage"] is None and row["text"] is not None:
            yield row["text"]
            count += 1
            if count >= limit:
                return


__all__ = [
    "FORMATS",
    "MAX_CAPTION_CHARS",
    "NotARegularFile",
    "RAW_FEATURES",
    "SourceSpec",
    "build_lanes",
    "build_stream",
    "damaged_row",
    "detect_format",
    "iter_texts",
    "open_shard",
    "open_source",
    "raw_row",
    "read_shards",
]
