"""Damaged data never stops a run: every kind is skipped, counted by kind and named, through the training stream,
its DataLoader workers, evaluation, resumption and the tokenizer pre-pass; a mostly-damaged dataset stops early."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from damaged_shards import DamagedShards, write_damaged_shards
from datasets import IterableDataset
from PIL import Image
from torchvision.transforms import v2

from hf_unified.tokenization import train_caption_tokenizer
from hf_unified.training import data as data_lib
from hf_unified.training.data import synthetic_data
from hf_unified.training.data.sources import RAW_FEATURES, damaged_row

TO_TENSOR = data_lib.ImageFields(
    v2.Compose([v2.ToImage(), v2.Resize(16), v2.CenterCrop(16), v2.ToDtype(torch.float32, scale=True)])
)
CLASS_NAMES = [[name] for name in synthetic_data.SHAPES]
BATCH = 4  # divides the 24 samples of a pass over the damaged shards


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> DamagedShards:
    return write_damaged_shards(tmp_path_factory.mktemp("damaged"))


@pytest.fixture(scope="module")
def tokenizer():
    return train_caption_tokenizer(["a small red circle in the top left.", "a blue ring."] * 5, vocab_size=300)


def _spec(damaged, **kwargs) -> data_lib.SourceSpec:
    columns = {"image_column": "jpg", "text_column": "txt", "label_column": "cls", **kwargs}
    return data_lib.SourceSpec(str(damaged.paths[0]).replace("00000", "*"), **columns)


def _train_batches(spec, tokenizer, num_workers, count, start=0, shuffle_buffer_size=0, seed=0, transform=TO_TENSOR):
    stream = data_lib.build_stream([spec], seed=seed, rank=0, world_size=1, shuffle_buffer_size=shuffle_buffer_size)
    decode = data_lib.DecodeConfig(transform, class_names=CLASS_NAMES)
    train = data_lib.TrainStream(stream, decode, tokenizer, 16, batch_size=BATCH, seed=seed, rank=0)
    train.load_state_dict({"batches_consumed": start, "batch_size": BATCH, "rank": 0})
    iterator = iter(torch.utils.data.DataLoader(train, batch_size=None, num_workers=num_workers))
    return [next(iterator) for _ in range(count)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_kind_of_damage_is_skipped_counted_and_named(damaged, tokenizer, num_workers):
    batches = _train_batches(_spec(damaged), tokenizer, num_workers, count=damaged.num_rows // BATCH)
    health = data_lib.DataHealth()
    for batch in batches:
        health.update(batch)
        assert batch["num_skipped"] == sum(batch["skipped"].values())
        if "pixel_values" in batch:
            assert batch["pixel_values"].shape == (len(batch["texts"]), 3, 16, 16)
            assert all(0 <= label < len(CLASS_NAMES) for label in batch["labels"].tolist())
    assert [text for batch in batches for text in batch.get("texts", [])] == damaged.good_texts
    assert dict(health.skipped) == damaged.skipped
    assert {shard: reason.split(":")[0] for shard, reason in health.damaged_shards.items()} == damaged.damaged_shards
    assert "ReadError: empty file" in health.damaged_shards[damaged.paths[0]]
    assert "after 3 samples" in health.damaged_shards[damaged.paths[2]]
    assert health.as_dict()["samples_seen"] == damaged.num_rows == 24
    assert health.samples_used == len(damaged.good_texts) == 14


def test_damaged_stream_resumes_exactly_whatever_the_worker_count(damaged, tokenizer):
    crop = data_lib.ImageFields(
        v2.Compose([v2.ToImage(), v2.RandomResizedCrop(16, scale=(0.3, 1.0)), v2.ToDtype(torch.float32, scale=True)])
    )

    def batches(num_workers, start, count):
        spec = _spec(damaged)
        return _train_batches(
            spec, tokenizer, num_workers, count, start, shuffle_buffer_size=8, seed=5, transform=crop
        )

    def assert_same(got, expected):
        assert len(got) == len(expected)
        for batch, reference_batch in zip(got, expected):
            assert {k: v for k, v in batch.items() if k != "pixel_values" and not torch.is_tensor(v)} == {
                k: v for k, v in reference_batch.items() if k != "pixel_values" and not torch.is_tensor(v)
            }
            if "pixel_values" in reference_batch:
                torch.testing.assert_close(batch["pixel_values"], reference_batch["pixel_values"], rtol=0, atol=0)

    reference = batches(0, 0, 9)  # 36 samples: into the reshuffled second pass
    assert sum(batch["num_skipped"] for batch in reference) >= 10  # damage is really on the way
    assert_same(batches(2, 0, 9), reference)
    assert_same(batches(2, 4, 5), reference[4:])  # resumed mid-stream, damage and random crops included


def test_warnings_name_each_damaged_shard_once_and_are_rate_limited(damaged, tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_unified.training.data.health"):
        _train_batches(_spec(damaged), tokenizer, 0, count=2 * damaged.num_rows // BATCH)  # two passes
    messages = [record.getMessage() for record in caplog.records]
    for shard, kind in damaged.damaged_shards.items():
        assert sum(shard in message for message in messages) == 1, messages
        assert any(f"damaged shard {shard} ({kind}" in message for message in messages)
    # Two passes skip 2-4 samples of each kind: each kind is reported once (at its 1st occurrence), with its sample.
    assert len(messages) == len(damaged.damaged_shards) + len(damaged.skipped)
    assert any("skipped " + damaged.paths[1] + " sample 's1-02': bad_label" in message for message in messages)


def test_threshold_stops_a_mostly_damaged_dataset_not_a_mildly_damaged_one(damaged, tokenizer, tmp_path):
    health = data_lib.DataHealth()
    for batch in _train_batches(_spec(damaged), tokenizer, 0, count=damaged.num_rows // BATCH):
        health.update(batch)
    assert health.as_dict()["skipped_fraction"] == pytest.approx(10 / 24)
    health.check(max_skipped_fraction=0.5, min_samples=10)  # 42% damaged: allowed at 50%
    health.check(max_skipped_fraction=0.1, min_samples=25)  # not enough samples seen to judge yet
    with pytest.raises(data_lib.DataError, match=r"41.7% of the training samples were skipped.*corrupt_image 2"):
        health.check(max_skipped_fraction=0.25, min_samples=10)
    with pytest.raises(ValueError, match=r"max_skipped_fraction must be in \[0, 1\], got 10"):
        health.check(max_skipped_fraction=10, min_samples=10)

    # A wrong column (the JSON member read as the image) skips every sample: the check stops it after min_samples.
    shapes = synthetic_data.generate(tmp_path / "shapes", num_train=16, num_eval=2, num_train_shards=2, image_size=16)
    wrong = data_lib.SourceSpec(f"{shapes}/train-*.tar", image_column="json", text_column="txt")
    wrong_health = data_lib.DataHealth()
    with pytest.raises(data_lib.DataError, match=r"100.0% of the training samples.*corrupt_image 8"):
        for batch in _train_batches(wrong, tokenizer, 0, count=10):
            assert "pixel_values" not in batch
            wrong_health.update(batch)
            wrong_health.check(max_skipped_fraction=0.1, min_samples=8)
    assert wrong_health.samples_seen == 8

    # Clean data passes a zero threshold.
    clean_health = data_lib.DataHealth()
    for batch in _train_batches(data_lib.SourceSpec(f"{shapes}/train-*.tar"), tokenizer, 0, count=4):
        clean_health.update(batch)
    clean_health.check(max_skipped_fraction=0.0, min_samples=1)
    assert clean_health.samples_seen == 16 and not clean_health.skipped


def test_health_state_is_json_resumes_and_merges_ranks(damaged, tokenizer):
    rank_states = []
    for rank in range(2):  # 4 shards over 2 ranks: 2 whole shards each
        loader = data_lib.eval_dataloader(
            _spec(damaged), data_lib.DecodeConfig(TO_TENSOR, CLASS_NAMES), tokenizer, 16, 5, rank, 2
        )
        for _ in loader:
            pass
        rank_states.append(json.loads(json.dumps(loader.health.state_dict())))
    assert rank_states[0] != rank_states[1]
    total = data_lib.DataHealth.merge(rank_states, name="evaluation")
    assert dict(total.skipped) == damaged.skipped
    assert {shard: reason.split(":")[0] for shard, reason in total.damaged_shards.items()} == damaged.damaged_shards
    assert total.samples_used == len(damaged.good_texts)

    resumed = data_lib.DataHealth("evaluation")
    resumed.load_state_dict(rank_states[0])
    assert resumed.as_dict() == data_lib.DataHealth.merge(rank_states[:1]).as_dict()
    resumed.update({"texts": ["a"], "skipped": {"corrupt_image": 2}, "num_mapped": 1, "damaged_shards": {"x": "y"}})
    assert resumed.samples_seen == data_lib.DataHealth.merge(rank_states[:1]).samples_seen + 3
    assert resumed.damaged_shards["x"] == "y" and resumed.captions_mapped_to_labels == 1


@pytest.mark.parametrize("num_workers", [0, 2])
def test_evaluation_skips_damage_the_same_way_and_reports_it(damaged, tokenizer, num_workers):
    loader = data_lib.eval_dataloader(
        _spec(damaged), data_lib.DecodeConfig(TO_TENSOR, CLASS_NAMES), tokenizer, 16, 5, 0, 1, num_workers
    )
    texts = [text for batch in loader for text in batch.get("texts", [])]
    assert sorted(texts) == sorted(damaged.good_texts)
    assert dict(loader.health.skipped) == damaged.skipped
    assert set(loader.health.damaged_shards) == set(damaged.damaged_shards)


def test_tokenizer_prepass_gets_only_clean_texts(damaged):
    texts = list(data_lib.iter_texts([_spec(damaged)], limit=1000))
    assert set(damaged.good_texts) <= set(texts)
    assert all(isinstance(text, str) and text.strip() and "\ufffd" not in text for text in texts)
    assert len(texts) < damaged.num_rows
    assert list(data_lib.iter_texts([_spec(damaged)], limit=3)) == texts[:3]
    train_caption_tokenizer(texts, vocab_size=300)  # what the trainer does with them


def test_first_shard_damaged_columns_are_still_checked(damaged):
    with pytest.raises(
        ValueError, match=r"no column 'caption' \(given as text_column\).*\['cls', 'jpg', 'npy', 'txt'\]"
    ):
        data_lib.open_source(_spec(damaged, text_column="caption"))


def test_a_source_whose_every_shard_is_damaged_fails_clearly(tmp_path, tokenizer):
    for index in range(2):
        (tmp_path / f"bad-{index}.tar").write_bytes(b"" if index == 0 else b"not a tar archive at all" * 40)
    with pytest.raises(data_lib.DataError, match=r"none of its 2 webdataset files can be read: .*bad-0.tar.*bad-1"):
        data_lib.open_source(data_lib.SourceSpec(str(tmp_path)))

    # A stream that opened but holds no sample on this rank (only damaged shards) ends with a DataError, not a hang.
    stream = IterableDataset.from_generator(_only_damaged_shards, features=RAW_FEATURES)
    train = data_lib.TrainStream(stream, data_lib.DecodeConfig(TO_TENSOR), tokenizer, 16, BATCH, seed=0, rank=3)
    with pytest.raises(data_lib.DataError, match=r"no samples on rank 3: every shard read is damaged: gone.tar"):
        next(iter(train))


def _only_damaged_shards():
    yield damaged_row(None, "gone.tar", "unreadable_shard", "FileNotFoundError")


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 200, 0)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_parquet_missing_values_and_a_truncated_file(tmp_path, tokenizer):
    table = pa.table(
        {
            "image": [_jpeg(), None, _jpeg(), _jpeg(), b"garbage"],
            "caption": ["a green square.", "a lost image.", None, "a green box.", "noise"],
            "label": [1, 0, None, -4, 2],
        }
    )
    pq.write_table(table, tmp_path / "a.parquet")
    pq.write_table(table, tmp_path / "b.parquet")
    (tmp_path / "b.parquet").write_bytes((tmp_path / "b.parquet").read_bytes()[:200])  # cut: footer gone
    spec = data_lib.SourceSpec(str(tmp_path), image_column="image", text_column="caption", label_column="label")
    assert spec.format == "parquet"
    loader = data_lib.eval_dataloader(spec, data_lib.DecodeConfig(TO_TENSOR, CLASS_NAMES), tokenizer, 16, 8, 0, 1)
    batches = list(loader)
    assert [text for batch in batches for text in batch.get("texts", [])] == ["a green square."]
    assert dict(loader.health.skipped) == {
        "missing_image": 1,
        "missing_text": 1,
        "label_out_of_range": 1,
        "corrupt_image": 1,
    }
    assert list(loader.health.damaged_shards) == [str(tmp_path / "b.parquet")]
    assert loader.health.damaged_shards[str(tmp_path / "b.parquet")].startswith("unreadable_shard: ArrowInvalid")


def test_imagefolder_rows_are_checked_the_same_way(tmp_path, tokenizer):
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (folder / name).write_bytes(_jpeg())
    (folder / "c.jpg").write_bytes(_jpeg()[:100])  # truncated
    metadata = [("a.jpg", "a green square."), ("b.jpg", " "), ("c.jpg", "a cut image.")]
    (folder / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f, "text": t}) + "\n" for f, t in metadata)
    )
    spec = data_lib.SourceSpec(str(folder), image_column="image", text_column="text")
    assert spec.format == "imagefolder"
    loader = data_lib.eval_dataloader(spec, data_lib.DecodeConfig(TO_TENSOR), tokenizer, 16, 8, 0, 1)
    assert [text for batch in loader for text in batch.get("texts", [])] == ["a green square."]
    assert dict(loader.health.skipped) == {"missing_text": 1, "corrupt_image": 1}


def _good_shard(path, count: int, prefix: str) -> list[str]:
    """A tar of `count` samples (jpg, txt, cls); returns their captions."""
    texts = [f"a green square number {prefix}{index}." for index in range(count)]
    with tarfile.open(path, "w") as tar:
        for index, text in enumerate(texts):
            for extension, payload in (("jpg", _jpeg()), ("txt", text.encode()), ("cls", b"1")):
                info = tarfile.TarInfo(f"{prefix}{index:03d}.{extension}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return texts


def test_a_tar_cut_anywhere_is_named_and_counted(tmp_path, tokenizer):
    # `tarfile` takes a header cut short, a damaged header or a file that ends at a member boundary for the end of
    # the archive: without the end-of-archive check these shards read as shorter, healthy ones.
    full = tmp_path / "full.tar"
    _good_shard(full, 12, "x")
    data = full.read_bytes()
    with tarfile.open(full) as tar:
        boundary = tar.getmembers()[15].offset  # the header of sample 5's first member
    cuts = {
        "half-plus-777.tar": data[: len(data) // 2 + 777],  # the attack's recipe (here: in a member's padding)
        "at-a-boundary.tar": data[:boundary],
        "in-a-header.tar": data[: boundary + 100],
        "damaged-header.tar": data[:boundary] + b"\x01" * 512 + data[boundary + 512 :],
    }
    for name, payload in cuts.items():
        (tmp_path / name).write_bytes(payload)
    full.unlink()
    texts = _good_shard(tmp_path / "zz-good.tar", 3, "g")
    spec = data_lib.SourceSpec(str(tmp_path / "*.tar"), label_column="cls")
    loader = data_lib.eval_dataloader(spec, data_lib.DecodeConfig(TO_TENSOR, CLASS_NAMES), tokenizer, 16, 8, 0, 1)
    used = [text for batch in loader for text in batch.get("texts", [])]
    assert set(texts) <= set(used)
    assert {
        Path(shard).name: reason.split(":")[0] for shard, reason in loader.health.damaged_shards.items()
    } == dict.fromkeys(cuts, "truncated_shard")
    for shard, reason in loader.health.damaged_shards.items():
        if not shard.endswith("half-plus-777.tar"):  # these three, tarfile alone reads as whole shards
            assert "without its end-of-archive block" in reason and "after 5 samples" in reason, reason
    assert "truncated_shard" in data_lib.DataHealth.merge([loader.health.state_dict()]).summary()


def test_the_training_stream_names_an_empty_and_a_cut_shard_on_every_pass(tmp_path, tokenizer):
    """The attack's training route: a list holding a 0-byte shard and a shard that `tarfile` reads as a shorter,
    healthy one (cut at a member boundary), read for more than a pass. Before the fix only the 0-byte shard was
    named; what the cut shard held past the cut was lost without a count."""
    _good_shard(tmp_path / "full.tar", 12, "x")
    data = (tmp_path / "full.tar").read_bytes()
    with tarfile.open(tmp_path / "full.tar") as tar:
        boundary = tar.getmembers()[15].offset  # the header of sample 5's first member
    (tmp_path / "full.tar").unlink()
    (tmp_path / "a-empty.tar").write_bytes(b"")
    (tmp_path / "b-cut.tar").write_bytes(data[:boundary])
    texts = _good_shard(tmp_path / "c-good.tar", 3, "g")
    spec = data_lib.SourceSpec(str(tmp_path / "*.tar"), label_column="cls")
    batches = _train_batches(spec, tokenizer, 0, count=5)  # 8 samples a pass: two and a half passes
    named = {}
    for batch in batches:
        named.update({Path(shard).name: reason.split(":")[0] for shard, reason in batch["damaged_shards"].items()})
    assert named == {"a-empty.tar": "unreadable_shard", "b-cut.tar": "truncated_shard"}
    used = [text for batch in batches for text in batch["texts"]]
    assert len(used) == 5 * BATCH and set(texts) <= set(used)


@pytest.mark.timeout(120)
def test_a_fifo_named_tar_is_named_never_waited_on(tmp_path, tokenizer):
    texts = _good_shard(tmp_path / "b-good.tar", 3, "g")
    os.mkfifo(tmp_path / "a-fifo.tar")  # first: where the columns are read, too
    spec = data_lib.SourceSpec(str(tmp_path / "*.tar"), label_column="cls")
    loader = data_lib.eval_dataloader(spec, data_lib.DecodeConfig(TO_TENSOR, CLASS_NAMES), tokenizer, 16, 8, 0, 1)
    assert [text for batch in loader for text in batch.get("texts", [])] == texts
    reason = loader.health.damaged_shards[str(tmp_path / "a-fifo.tar")]
    assert reason.startswith("unreadable_shard: NotARegularFile:") and "is a FIFO, not a regular file" in reason


def test_a_20_mb_caption_is_skipped_before_tokenising(tmp_path, tokenizer):
    texts = _good_shard(tmp_path / "a.tar", 3, "g")
    with tarfile.open(tmp_path / "b.tar", "w") as tar:
        for extension, payload in (("jpg", _jpeg()), ("txt", b"a square " * 2_300_000)):  # 20.7 MB
            info = tarfile.TarInfo(f"huge.{extension}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    spec = data_lib.SourceSpec(str(tmp_path / "*.tar"))
    batch = _train_batches(spec, tokenizer, 0, count=1)[0]  # 4 samples: the 3 good ones and the caption
    assert batch["texts"] == texts
    assert batch["skipped"] == {"oversized_caption": 1}
    prepass = list(data_lib.iter_texts([spec], limit=10))  # the tokenizer pre-pass never sees it either
    assert prepass == texts
    with pytest.raises(ValueError, match="max_caption_chars must be a positive integer, got 0"):
        data_lib.SourceSpec(str(tmp_path / "*.tar"), max_caption_chars=0)
    short = data_lib.SourceSpec(str(tmp_path / "*.tar"), max_caption_chars=20)  # a setting: every caption is longer
    assert list(data_lib.iter_texts([short], limit=10)) == []
