"""The training stream (exactly resumable) and the evaluation loader: raw rows cut into batches, decoded in
DataLoader workers (`decoding.py`), collated.

Exact resumption. `datasets`' own `IterableDataset.load_state_dict` drops the shuffle buffer's contents and, without
torchdata's `StatefulDataLoader`, cannot see the workers' positions. The stream here is therefore a pure function
of `(seed, rank, position)`: it is re-created with the same seed and fast-forwarded (`skip`, on undecoded bytes)
past what was consumed, and every random choice of decoding/augmentation is seeded by the batch index. So a resumed
run sees exactly the batches an uninterrupted run would have seen, with any shuffle buffer and any worker count.
`TrainStream.state_dict()` is what the checkpoints store. The price: a worker reads (but does not decode) the rows
of the batches other workers build, to know where its own begin. With one stream every worker reads the rank's
whole raw stream, so raw reads grow with the worker count; split into lanes over disjoint shards (`build_lanes`,
the trainer's `stream_lanes`; batch `b` from lane `b % lanes`) a worker reads only the lanes of its batches, 1 / W
of the stream when the lanes are a multiple of the W workers. Decoding and augmentation, the costly part, are
split between the workers either way. Damage is part of the raw stream (a damaged sample or shard is a row with
`damage` set, found the same way by every worker), so this holds on damaged data too.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
from functools import partial

import torch
from datasets import IterableDataset
from datasets.distributed import split_dataset_by_node

from .decoding import DecodeConfig, collate, decode_example
from .health import SHARD_DAMAGE, DamageLog, DataError, DataHealth
from .sources import SourceSpec, open_source


class TrainStream(torch.utils.data.IterableDataset):
    """Endless per-rank stream of collated training batches, exactly resumable.

    Args:
        stream: this rank's `datasets.IterableDataset` of raw rows (`build_stream`), or a list of `K` lanes
            (`build_lanes`: disjoint shards, each shuffled on its own); each pass over a stream calls
            `set_epoch(pass)` on the iterator's own copy of it, which reshuffles it.
        decode: `DecodeConfig`.
        tokenizer, max_length: text tokenisation in the workers.
        batch_size: raw samples per batch (skipped ones leave the batch smaller; rows naming a damaged shard are
            not samples and take no place).
        seed, rank: seed the per-batch randomness (prompt choice, augmentation).

    Batch `b` of this rank is built from the `b // K`-th group of `batch_size` samples of lane `b % K`, with random
    draws seeded by `b`: the same rows and draws however the lanes are split over workers, and after a resume;
    `state_dict()` / `load_state_dict()` record how many batches were consumed. DataLoader worker `w` of `W` builds
    batches `w, w + W, ...` (counted from the resume point), so it reads the lanes `k` with `k = w (mod gcd(W, K))`:
    with one lane every worker reads the whole raw stream (and decodes only its batches); with `K` a multiple of
    `W` each worker reads `1 / W` of it, so raw reading no longer bounds the pipeline.

    Raises (from the iterator):
        DataError: a whole pass over a lane gave no sample (every shard damaged, or no rows on this rank).
    """

    def __init__(
        self,
        stream: IterableDataset | Sequence[IterableDataset],
        decode: DecodeConfig,
        tokenizer,
        max_length: int,
        batch_size: int,
        seed: int,
        rank: int,
    ):
        super().__init__()
        self.lanes = list(stream) if isinstance(stream, Sequence) else [stream]
        if not self.lanes:
            raise ValueError("TrainStream needs at least one stream of raw rows")
        self.decode, self.tokenizer, self.max_length = decode, tokenizer, max_length
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.batches_consumed = 0
        self.damage_log = DamageLog()

    def state_dict(self) -> dict:
        return {
            "batches_consumed": self.batches_consumed,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "lanes": len(self.lanes),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["batch_size"] != self.batch_size:
            raise ValueError(
                f"the checkpoint's data stream used batch_size {state['batch_size']}, now {self.batch_size}"
            )
        if state.get("lanes", 1) != len(self.lanes):
            raise ValueError(
                f"the checkpoint's data stream had {state.get('lanes', 1)} lane(s) (stream_lanes), now "
                f"{len(self.lanes)}: resume with the stream_lanes it was trained with, since lanes decide which rows "
                "make each batch"
            )
        self.batches_consumed = int(state["batches_consumed"])

    def _raw_rows(self, lane: int):
        # This iterator's own copy of the lane: `datasets` keeps the epoch in shared memory (for a main process
        # steering persistent workers), and our workers walk their passes each on its own, so one worker's
        # `set_epoch` could otherwise land in another's pass as it starts.
        stream, epoch = copy.deepcopy(self.lanes[lane]), 0
        while True:
            stream.set_epoch(epoch)  # a new shuffle of shards and buffer on every pass
            samples, damaged_shards = 0, {}
            # `iter(batch_size=...)` rather than `for x in stream`: inside a DataLoader worker the latter would hand
            # this worker only some of the shards, and batch b must not depend on the number of workers.
            for batch in stream.iter(batch_size=self.batch_size):
                columns = list(batch)
                for index in range(len(batch[columns[0]])):
                    row = {column: batch[column][index] for column in columns}
                    if row["damage"] in SHARD_DAMAGE:
                        damaged_shards[row["shard"]] = f"{row['damage']}: {row['detail']}"
                    else:
                        samples += 1
                    yield row
            if samples == 0:
                shards = "; ".join(f"{shard} ({reason})" for shard, reason in list(damaged_shards.items())[:5])
                where = f"rank {self.rank}" + (f", lane {lane} of {len(self.lanes)}" if len(self.lanes) > 1 else "")
                raise DataError(
                    f"the training sources gave no samples on {where}"
                    + (f": every shard read is damaged: {shards}" if shards else "")
                )
            epoch += 1

    def _groups(self, lane: int):
        """The lane's raw rows cut into batches: `batch_size` samples each (rows naming a damaged shard ride
        along with the samples they came between)."""
        raw = self._raw_rows(lane)
        while True:
            rows, samples = [], 0
            while samples < self.batch_size:
                rows.append(next(raw))
                samples += rows[-1]["damage"] not in SHARD_DAMAGE
            yield rows

    def __iter__(self):
        # The DataLoader returns its workers' batches round robin, i.e. in order. Every worker reads (without
        # decoding) the groups of its lanes that other workers build, to know where its own begin.
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        start, lanes = self.batches_consumed, len(self.lanes)
        step = math.gcd(workers, lanes)
        groups = {lane: self._groups(lane) for lane in range(lanes) if (lane - start - worker) % step == 0}
        groups_read = dict.fromkeys(groups, 0)
        batch_index = start + worker
        while True:
            lane, group = batch_index % lanes, batch_index // lanes
            while groups_read[lane] < group:
                next(groups[lane])
                groups_read[lane] += 1
            rows = next(groups[lane])
            groups_read[lane] += 1
            rng = random.Random(f"{self.seed}-{self.rank}-{batch_index}")
            augmentation_seed = rng.getrandbits(63)
            torch.manual_seed(augmentation_seed)  # per-image augmentation draws from torch's global generator
            items = [decode_example(row, self.decode, rng) for row in rows]
            batch = collate(items, self.tokenizer, self.max_length, self.decode.with_labels, self.damage_log)
            # Batched augmentation in the training step seeds itself with this (`BatchMultiViewAugmentation`).
            batch["augmentation_seed"] = augmentation_seed
            yield batch
            batch_index += workers


class _RawExamples(torch.utils.data.IterableDataset):
    """Evaluation: this rank's rows once, in order; decoded in the workers (split by `datasets`)."""

    def __init__(self, stream: IterableDataset, decode: DecodeConfig):
        super().__init__()
        self.stream, self.decode = stream, decode

    def __iter__(self):
        rng = random.Random(0)
        for example in self.stream:
            yield decode_example(example, self.decode, rng)


class EvalDataLoader(torch.utils.data.DataLoader):
    """A `DataLoader` whose `health` (`DataHealth`) sums the batches iterated so far (what evaluation skipped)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.health = DataHealth("evaluation")

    def __iter__(self):
        for batch in super().__iter__():
            self.health.update(batch)
            yield batch


def eval_dataloader(
    spec: SourceSpec,
    decode: DecodeConfig,
    tokenizer,
    max_length: int,
    batch_size: int,
    rank: int,
    world_size: int,
    num_workers: int = 0,
) -> EvalDataLoader:
    """The evaluation split for this rank (`split_dataset_by_node`, no shuffling), decoded once; damage is skipped
    and counted as in training, in `loader.health`."""
    stream = split_dataset_by_node(open_source(spec), rank=rank, world_size=world_size)
    workers = min(num_workers, stream.num_shards)
    return EvalDataLoader(
        _RawExamples(stream, decode),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=partial(
            collate, tokenizer=tokenizer, max_length=max_length, with_labels=True, damage_log=DamageLog()
        ),
    )


__all__ = ["EvalDataLoader", "TrainStream", "eval_dataloader"]
