"""The streaming data pipeline: sources, corrupt samples, the label vocabulary, exact stream positions (every kind of
damage is attacked in test_data_damage.py)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from hf_unified.tokenization import train_caption_tokenizer
from hf_unified.training import data as data_lib
from hf_unified.training.data import synthetic_data
from hf_unified.training.data.batch_augmentation import ImageCanvas

TO_TENSOR = data_lib.ImageFields(
    v2.Compose([v2.ToImage(), v2.Resize(16), v2.CenterCrop(16), v2.ToDtype(torch.float32, scale=True)])
)


def _member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _jpeg(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def shard_with_bad_samples(tmp_path) -> Path:
    """8 samples: 5 good, one image of random bytes, one truncated JPEG, one with an empty caption."""
    good = _jpeg((200, 10, 10))
    images = [good] * 5 + [b"\x00not an image at all" * 8, good[: len(good) // 2], good]
    captions = ["a red square."] * 7 + [""]
    with tarfile.open(tmp_path / "shard-00000.tar", "w") as tar:
        for i, (image, caption) in enumerate(zip(images, captions)):
            _member(tar, f"{i:04d}.jpg", image)
            _member(tar, f"{i:04d}.txt", caption.encode())
    return tmp_path


@pytest.fixture(scope="module")
def tokenizer():
    return train_caption_tokenizer(["a red square.", "a blue circle.", "a green ring."] * 5, vocab_size=300)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_corrupt_and_incomplete_samples_are_skipped_and_counted(shard_with_bad_samples, tokenizer, num_workers):
    spec = data_lib.SourceSpec(str(shard_with_bad_samples))
    assert spec.format == "webdataset"
    stream = data_lib.build_stream([spec], seed=0, rank=0, world_size=1, shuffle_buffer_size=0)
    train = data_lib.TrainStream(
        stream, data_lib.DecodeConfig(TO_TENSOR, with_labels=False), tokenizer, 16, batch_size=8, seed=0, rank=0
    )
    loader = torch.utils.data.DataLoader(train, batch_size=None, num_workers=num_workers)
    batch = next(iter(loader))
    assert batch["num_skipped"] == 3
    assert batch["skipped"] == {"corrupt_image": 2, "missing_text": 1} and batch["damaged_shards"] == {}
    assert batch["pixel_values"].shape == (5, 3, 16, 16)
    assert batch["texts"] == ["a red square."] * 5


def test_canvas_transform_gives_uint8_batches_with_their_seed_and_still_counts_damage(
    shard_with_bad_samples, tokenizer
):
    # The batched-views mode: workers only decode to a uint8 canvas; damaged samples are skipped as before.
    stream = data_lib.build_stream(
        [data_lib.SourceSpec(str(shard_with_bad_samples))], seed=0, rank=0, world_size=1, shuffle_buffer_size=0
    )
    decode = data_lib.DecodeConfig(ImageCanvas(24), with_labels=False)  # a method with views
    train = data_lib.TrainStream(stream, decode, tokenizer, 16, batch_size=8, seed=0, rank=0)
    batch = next(iter(train))
    assert batch["num_skipped"] == 3 and batch["skipped"] == {"corrupt_image": 2, "missing_text": 1}
    assert "pixel_values" not in batch
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (5, 3, 24, 24)
    assert batch["image_sizes"].tolist() == [[16, 16]] * 5 and batch["resized_image_sizes"].tolist() == [[16, 16]] * 5
    again = next(iter(data_lib.TrainStream(stream, decode, tokenizer, 16, batch_size=8, seed=0, rank=0)))
    other = next(iter(data_lib.TrainStream(stream, decode, tokenizer, 16, batch_size=8, seed=1, rank=0)))
    assert isinstance(batch["augmentation_seed"], int) and batch["augmentation_seed"] == again["augmentation_seed"]
    assert other["augmentation_seed"] != batch["augmentation_seed"]


def test_every_image_transform_gives_the_samples_image_fields(shard_with_bad_samples, tokenizer):
    """One output shape: a mapping of batch fields, whatever the transform (one view, views with their parameters, a
    canvas); a transform that returns a bare tensor is refused with the fix."""
    from hf_unified.training.data.augmentation import MultiViewAugmentation

    stream = data_lib.build_stream(
        [data_lib.SourceSpec(str(shard_with_bad_samples))], seed=0, rank=0, world_size=1, shuffle_buffer_size=0
    )
    views = data_lib.ImageFields(MultiViewAugmentation(num_views=2, size=16, preset="small"), data_lib.VIEW_FIELDS)
    for transform, shapes in [
        (TO_TENSOR, {"pixel_values": (5, 3, 16, 16)}),
        (views, {"pixel_values": (5, 2, 3, 16, 16), "augmentation_params": (5, 2, 11)}),
        (ImageCanvas(24), {"images": (5, 3, 24, 24), "image_sizes": (5, 2), "resized_image_sizes": (5, 2)}),
    ]:
        decode = data_lib.DecodeConfig(transform, with_labels=False)
        batch = next(iter(data_lib.TrainStream(stream, decode, tokenizer, 16, batch_size=8, seed=0, rank=0)))
        assert {name: tuple(batch[name].shape) for name in shapes} == shapes
        assert not {"pixel_values", "images"} - set(shapes) & set(batch)

    bare = data_lib.DecodeConfig(TO_TENSOR.transform, with_labels=False)
    with pytest.raises(
        TypeError, match=r"must return the sample's image fields as a mapping.*got a tensor.*ImageFields"
    ):
        next(iter(data_lib.TrainStream(stream, bare, tokenizer, 16, batch_size=8, seed=0, rank=0)))


def test_wrong_column_names_the_columns_it_has(shard_with_bad_samples):
    with pytest.raises(ValueError, match=r"no column 'caption' \(given as text_column\).*\['jpg', 'txt'"):
        data_lib.open_source(data_lib.SourceSpec(str(shard_with_bad_samples), text_column="caption"))
    with pytest.raises(ValueError, match="needs a text column, a label column or both"):
        data_lib.SourceSpec(str(shard_with_bad_samples), text_column=None)
    with pytest.raises(ValueError, match="no .tar or .parquet files match"):
        data_lib.SourceSpec(str(shard_with_bad_samples / "missing-*.tar"))


def test_label_vocabulary_whole_words_synonyms_and_ambiguity():
    vocabulary = data_lib.LabelVocabulary([["cat", "kitten"], ["red panda"], ["panda"], ["car"]])
    assert vocabulary("A Kitten sleeping on a sofa") == 0
    assert vocabulary("a red panda in a tree") == 1  # the longest name wins over "panda"
    assert vocabulary("a giant panda") == 2
    assert vocabulary("a cartoon of a scary caterpillar") is None  # "car"/"cat" only inside other words
    assert vocabulary("a cat next to a car") is None  # two classes: ambiguous, no label


def test_caption_mapping_and_class_prompts_in_decoding():
    config = data_lib.DecodeConfig(
        TO_TENSOR,
        class_names=[["circle"], ["square", "box"]],
        templates=("a {}.",),
        label_vocabulary=data_lib.LabelVocabulary([["circle"], ["square", "box"]]),
    )
    image = {"bytes": _jpeg((0, 0, 255)), "path": None}
    rng = __import__("random").Random(0)
    mapped = data_lib.decode_example({"image": image, "text": "a blue box on the left", "label": None}, config, rng)
    assert mapped["label"] == 1 and mapped["mapped"] and mapped["text"] == "a blue box on the left"
    labelled = data_lib.decode_example({"image": image, "text": None, "label": 0}, config, rng)
    assert labelled["text"] == "a circle." and labelled["label"] == 0 and not labelled["mapped"]
    out_of_range = data_lib.decode_example({"image": image, "text": "a box", "label": 7}, config, rng)
    assert out_of_range == data_lib.Skipped("label_out_of_range", "", None, "label 7, expected in [0, 2)")


def test_class_prompts_come_from_the_one_prompt_builder():
    """A labelled sample without a caption gets `prompts.class_prompt`'s text: UniCL's cleaning (commas dropped, '+'
    a space), a template then a synonym drawn from the batch's generator: the draws decoding made before it used
    the builder, so names without commas or '+' (the embedded shapes and digits) keep their prompts."""
    import random

    from hf_unified.prompts import class_prompt

    names, templates = ["red, panda", "lesser+panda"], ("a photo of a {}.", "{}.", "a {} in a tree.")
    config = data_lib.DecodeConfig(TO_TENSOR, class_names=[names, ["circle"]], templates=templates)
    image = {"bytes": _jpeg((0, 0, 255)), "path": None}
    texts = []
    for seed in range(40):
        text = data_lib.decode_example({"image": image, "text": None, "label": 0}, config, random.Random(seed))["text"]
        rng = random.Random(seed)
        drawn = rng.choice(templates).format(rng.choice(names))  # how decoding drew a prompt before the builder
        assert text == class_prompt(names, templates, random.Random(seed))
        assert text == drawn.replace(",", "").replace("+", " ")
        texts.append(text)
    assert {"a photo of a red panda.", "lesser panda.", "a lesser panda in a tree."} <= set(texts)
    for seed in range(10):  # a plain name: exactly the text of the draws before
        rng = random.Random(seed)
        before = rng.choice(templates).format(rng.choice(["circle"]))
        item = data_lib.decode_example({"image": image, "text": None, "label": 1}, config, random.Random(seed))
        assert item["text"] == before


def test_stream_batches_do_not_depend_on_workers_and_resume_exactly(tmp_path, tokenizer):
    shapes = synthetic_data.generate(tmp_path / "shapes", num_train=48, num_eval=4, num_train_shards=2, image_size=16)
    spec = data_lib.SourceSpec(f"{shapes}/train-*.tar")
    transform = data_lib.ImageFields(
        v2.Compose([v2.ToImage(), v2.RandomResizedCrop(16, scale=(0.3, 1.0)), v2.ToDtype(torch.float32, scale=True)])
    )

    def batches(num_workers: int, start: int, count: int) -> list[dict]:
        stream = data_lib.build_stream([spec], seed=3, rank=0, world_size=1, shuffle_buffer_size=10)
        train = data_lib.TrainStream(
            stream, data_lib.DecodeConfig(transform, with_labels=False), tokenizer, 16, batch_size=8, seed=3, rank=0
        )
        train.load_state_dict({"batches_consumed": start, "batch_size": 8, "rank": 0})
        iterator = iter(torch.utils.data.DataLoader(train, batch_size=None, num_workers=num_workers))
        return [next(iterator) for _ in range(count)]

    def assert_same(got: list[dict], expected: list[dict]) -> None:
        assert len(got) == len(expected)
        for batch, reference_batch in zip(got, expected):
            assert batch["texts"] == reference_batch["texts"]
            torch.testing.assert_close(batch["pixel_values"], reference_batch["pixel_values"], rtol=0, atol=0)

    reference = batches(0, 0, 8)  # 64 examples: crosses the end of the 48-example pass into a reshuffled one
    assert_same(batches(2, 0, 8), reference)  # two workers build alternate batches of the same stream
    assert_same(batches(1, 5, 3), reference[5:])  # resumed after 5 batches, in a worker, random crops included
    first_pass = [text for batch in reference[:6] for text in batch["texts"]]
    second_pass = [text for batch in reference[6:] for text in batch["texts"]]
    assert second_pass != first_pass[:16]  # set_epoch reshuffled the second pass


def test_a_workers_pass_does_not_see_another_workers_epoch(tmp_path, tokenizer, monkeypatch):
    # `datasets` keeps an IterableDataset's epoch in shared memory, so that a main process can set it for
    # persistent workers. Our workers each walk the passes themselves: one worker's new epoch, written while
    # another starts a pass, must not change the other's shuffle (a race CI met once with 2 workers).
    shapes = synthetic_data.generate(tmp_path / "shapes", num_train=24, num_eval=4, num_train_shards=2, image_size=16)
    spec = data_lib.SourceSpec(f"{shapes}/train-*.tar")

    def texts(train: data_lib.TrainStream) -> list[list[str]]:
        iterator = iter(train)
        return [next(iterator)["texts"] for _ in range(8)]  # 2 passes of 24 rows in batches of 6

    def train_stream() -> data_lib.TrainStream:
        stream = data_lib.build_stream([spec], seed=3, rank=0, world_size=1, shuffle_buffer_size=10)
        decode = data_lib.DecodeConfig(TO_TENSOR, with_labels=False)
        return data_lib.TrainStream(stream, decode, tokenizer, 16, batch_size=6, seed=3, rank=0)

    reference = texts(train_stream())
    train = train_stream()
    shared = train.lanes[0]
    prepare = type(shared)._prepare_ex_iterable_for_iteration

    def another_worker_writes_first(self, *args, **kwargs):
        shared.set_epoch(shared.epoch + 7)  # lands between this worker's set_epoch and its read of the epoch
        return prepare(self, *args, **kwargs)

    monkeypatch.setattr(type(shared), "_prepare_ex_iterable_for_iteration", another_worker_writes_first)
    assert texts(train) == reference


def test_rank_streams_partition_the_global_stream(tmp_path):
    shapes = synthetic_data.generate(tmp_path / "shapes", num_train=30, num_eval=4, num_train_shards=3, image_size=16)
    spec = data_lib.SourceSpec(f"{shapes}/train-*.tar")

    def keys(rank, world):
        return [
            ex["text"] + str(hash(ex["image"]["bytes"]))
            for ex in data_lib.build_stream([spec], 1, rank, world, shuffle_buffer_size=8)
        ]

    everything = keys(0, 1)
    assert sorted(keys(0, 2) + keys(1, 2)) == sorted(everything) and len(everything) == 30


def test_class_names_files(tmp_path):
    (tmp_path / "names.txt").write_text("tench, Tinca tinca\ngoldfish\n")
    (tmp_path / "names.json").write_text(json.dumps(["cat", ["dog", "puppy"]]))
    assert data_lib.load_class_names(str(tmp_path / "names.txt")) == [["tench", "Tinca tinca"], ["goldfish"]]
    assert data_lib.load_class_names(str(tmp_path / "names.json")) == [["cat"], ["dog", "puppy"]]


@pytest.mark.parametrize("input_shards, runs", [(1, 4), (10, None)])
def test_shuffle_input_shards_sets_how_many_shards_feed_the_buffer(tmp_path, input_shards, runs):
    shapes = synthetic_data.generate(tmp_path / "shapes", num_train=32, num_eval=4, num_train_shards=4, image_size=16)
    spec = data_lib.SourceSpec(f"{shapes}/train-*.tar")

    def shards_in_order(seed: int) -> list[str]:
        stream = data_lib.build_stream(
            [spec], seed=seed, rank=0, world_size=1, shuffle_buffer_size=1, shuffle_input_shards=input_shards
        )
        return [row["shard"] for row in stream]

    order = shards_in_order(0)
    assert sorted(set(order)) == sorted(str(p) for p in shapes.glob("train-*.tar")) and len(order) == 32
    # A buffer of one row passes the rows on in the order the shards feed it: one shard after another, or all four
    # interleaved.
    changes = sum(a != b for a, b in zip(order, order[1:])) + 1
    if runs is not None:
        assert changes == runs
    else:
        assert changes > 8
    assert shards_in_order(0) == order  # deterministic for a seed


@pytest.mark.parametrize(
    "field, message",
    [
        ("shuffle_input_shards", "shuffle_input_shards must be a number of shards >= 1, got 0"),
        ("stream_lanes", "stream_lanes must be a number of lanes >= 1, got 0"),
    ],
)
def test_stream_arguments_must_be_positive(field, message):
    from hf_unified.training.arguments import ConfigError, DataArguments

    with pytest.raises(ConfigError, match=message):
        DataArguments(**{field: 0})


def _lane_batches(spec, tokenizer, lanes: int, num_workers: int, start: int, count: int) -> list[dict]:
    stream = data_lib.build_lanes([spec], seed=3, rank=0, world_size=1, shuffle_buffer_size=6, lanes=lanes)
    transform = data_lib.ImageFields(
        v2.Compose([v2.ToImage(), v2.RandomResizedCrop(16, scale=(0.3, 1.0)), v2.ToDtype(torch.float32, scale=True)])
    )
    train = data_lib.TrainStream(
        stream, data_lib.DecodeConfig(transform, with_labels=False), tokenizer, 16, batch_size=4, seed=3, rank=0
    )
    train.load_state_dict({"batches_consumed": start, "batch_size": 4, "rank": 0, "lanes": lanes})
    iterator = iter(torch.utils.data.DataLoader(train, batch_size=None, num_workers=num_workers))
    return [next(iterator) for _ in range(count)]


def test_lanes_give_the_same_batches_with_any_worker_count_and_resume_exactly(tmp_path, tokenizer):
    shapes = synthetic_data.generate(tmp_path / "shapes", num_train=48, num_eval=4, num_train_shards=8, image_size=16)
    spec = data_lib.SourceSpec(f"{shapes}/train-*.tar")
    reference = _lane_batches(spec, tokenizer, lanes=4, num_workers=0, start=0, count=16)  # crosses a pass
    for num_workers, start in ((2, 0), (3, 0), (2, 5)):  # 2 divides the 4 lanes, 3 does not; a resume
        got = _lane_batches(spec, tokenizer, lanes=4, num_workers=num_workers, start=start, count=16 - start)
        for batch, expected in zip(got, reference[start:], strict=True):
            assert batch["texts"] == expected["texts"], (num_workers, start)
            torch.testing.assert_close(batch["pixel_values"], expected["pixel_values"], rtol=0, atol=0)
    one_lane = _lane_batches(spec, tokenizer, lanes=1, num_workers=0, start=0, count=16)
    assert [b["texts"] for b in one_lane] != [b["texts"] for b in reference]  # lanes decide which rows make a batch


def test_a_worker_reads_only_the_lanes_of_its_batches(tmp_path, tokenizer, monkeypatch):
    shapes = synthetic_data.generate(tmp_path / "shapes", num_train=32, num_eval=4, num_train_shards=4, image_size=16)
    spec = data_lib.SourceSpec(f"{shapes}/train-*.tar")
    read = []
    raw_rows = data_lib.TrainStream._raw_rows
    monkeypatch.setattr(
        data_lib.TrainStream, "_raw_rows", lambda self, lane: read.append(lane) or raw_rows(self, lane)
    )

    def lanes_read(lanes: int, worker: int, workers: int) -> list[int]:
        info = type("WorkerInfo", (), {"id": worker, "num_workers": workers})()
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
        stream = data_lib.build_lanes([spec], seed=0, rank=0, world_size=1, shuffle_buffer_size=4, lanes=lanes)
        decode = data_lib.DecodeConfig(TO_TENSOR, with_labels=False)
        batches = iter(data_lib.TrainStream(stream, decode, tokenizer, 16, batch_size=2, seed=0, rank=0))
        read.clear()
        [next(batches) for _ in range(4)]
        return sorted(read)

    assert lanes_read(lanes=4, worker=1, workers=2) == [1, 3]  # batches 1, 3, 5, 7: lanes 1 and 3 only
    assert lanes_read(lanes=4, worker=0, workers=4) == [0]
    assert lanes_read(lanes=4, worker=0, workers=3) == [0, 1, 2, 3]  # gcd(3, 4) = 1: every lane
    assert lanes_read(lanes=1, worker=0, workers=2) == [0]  # one lane: every worker reads the whole stream


def test_lanes_split_the_shards_and_need_enough_of_them(tmp_path):
    shapes = synthetic_data.generate(tmp_path / "shapes", num_train=32, num_eval=4, num_train_shards=4, image_size=16)
    spec = data_lib.SourceSpec(f"{shapes}/train-*.tar")
    lanes = data_lib.build_lanes([spec], seed=0, rank=0, world_size=1, shuffle_buffer_size=4, lanes=4)
    shards = [{row["shard"] for row in lane} for lane in lanes]
    assert all(len(s) == 1 for s in shards) and len(set.union(*shards)) == 4  # one shard each, all four
    by_rank = [
        {row["shard"] for lane in data_lib.build_lanes([spec], 0, rank, 2, 4, lanes=2) for row in lane}
        for rank in (0, 1)
    ]
    assert len(by_rank[0]) == len(by_rank[1]) == 2 and by_rank[0].isdisjoint(by_rank[1])  # 2 ranks x 2 lanes
    with pytest.raises(ValueError, match=r"4 shard\(s\), but stream_lanes 4 x world size 2 needs at least 8"):
        data_lib.build_lanes([spec], seed=0, rank=0, world_size=2, shuffle_buffer_size=4, lanes=4)
    train = data_lib.TrainStream(lanes, data_lib.DecodeConfig(TO_TENSOR), None, 16, batch_size=2, seed=0, rank=0)
    with pytest.raises(ValueError, match="had 1 lane"):
        train.load_state_dict({"batches_consumed": 3, "batch_size": 2, "rank": 0})  # a checkpoint of one lane
