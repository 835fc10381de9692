"""What damaged data is, and how the stream counts, reports and bounds it.

Damage is never raised: a source reader (`sources.py`) or a DataLoader worker (`decoding.decode_example`) turns it into
a `Skipped` record of one of the kinds below, `data.collate` counts the records of a batch (`batch["skipped"]`,
`batch["damaged_shards"]`) and logs them through a `DamageLog`, and the trainer sums the batches in a `DataHealth`,
which stops a run whose skipped share says the dataset is wrong rather than damaged.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# Kinds of damage to one sample: it is skipped, and counted under its kind.
SAMPLE_DAMAGE = {
    "corrupt_image": "the image does not decode (truncated, not an image, unreadable file, an unconvertible mode)",
    "oversized_image": "the image's header declares more pixels than max_image_pixels, or a longer side more than "
    "max_aspect_ratio times its shorter side (refused before decoding or resizing)",
    "missing_image": "the sample has no value for the image column",
    "missing_text": "no caption (absent or empty) and no class label to build a prompt from",
    "missing_label": "a source without captions has no class label for the sample",
    "bad_text_encoding": "the caption is not UTF-8 text",
    "oversized_caption": "the caption is longer than max_caption_chars characters (refused before tokenising)",
    "bad_label": "the class label is not an integer",
    "label_out_of_range": "the class label is negative or not below the number of class names",
    "unexpected_member": "a tar member (or group of members) with none of the source's columns",
    "duplicate_member": "a tar sample holding two members with the same extension",
}
# Kinds of damage to a whole shard: it is read up to where it broke, named in `damaged_shards`, and the stream
# carries on with the next shard. A shard is not a sample, so these are not counted in `skipped`.
SHARD_DAMAGE = {
    "unreadable_shard": "the shard cannot be opened, or broke before its first sample (empty, not a tar/parquet, not "
    "a regular file: a FIFO or a device is never opened, since reading one can block forever)",
    "truncated_shard": "the shard broke after some samples (truncated, corrupt, or a tar without its end-of-archive "
    "blocks: cut at a member boundary)",
}


class DataError(ValueError):
    """The data cannot train a model: every shard is damaged, or too large a share of the samples is skipped."""


@dataclass(frozen=True)
class Skipped:
    """A raw example that gives no sample: its damage `kind` (`SAMPLE_DAMAGE` or `SHARD_DAMAGE`), the shard it came
    from, the sample's key within that shard (None for a shard or a keyless source) and what exactly was wrong."""

    kind: str
    shard: str
    key: str | None
    detail: str

    def where(self) -> str:
        return f"{self.shard} sample {self.key!r}" if self.key is not None else self.shard


class DamageLog:
    """Rate-limited warnings for `Skipped` records, one instance per stream and process (a DataLoader worker gets
    its own copy): each damaged shard is named once, and a kind of sample damage is logged at its 1st, 10th, 100th,
    ... occurrence, with the sample and the running count, so a crawl with many bad samples writes a few lines."""

    def __init__(self):
        self._shards_named: set[str] = set()
        self._counts: Counter = Counter()

    def report(self, skipped: Skipped) -> None:
        if skipped.kind in SHARD_DAMAGE:
            if skipped.shard not in self._shards_named:
                self._shards_named.add(skipped.shard)
                logger.warning(
                    "damaged shard %s (%s: %s): skipped from where it broke, carrying on with the next shard",
                    skipped.shard,
                    skipped.kind,
                    skipped.detail,
                )
            return
        self._counts[skipped.kind] += 1
        count = self._counts[skipped.kind]
        if count == 10 ** (len(str(count)) - 1):  # 1, 10, 100, ...
            logger.warning(
                "skipped %s: %s (%s); %d sample(s) skipped as %s by this process so far (next report at %d)",
                skipped.where(),
                skipped.kind,
                skipped.detail,
                count,
                skipped.kind,
                count * 10,
            )


class DataHealth:
    """Running totals of what a data stream gave and skipped, summed from collated batches (`data.collate`).

    Use in a trainer, one per rank:

        health = DataHealth("training")
        for batch in loader:
            health.update(batch)  # every batch, also those that lost all their samples
            totals = DataHealth.merge(accelerate.utils.gather_object([health.state_dict()]))  # every N steps
            totals.check(max_skipped_fraction=0.1, min_samples=1000)  # all ranks decide alike on the totals
        checkpoint["data_health"] = health.state_dict()  # JSON; `load_state_dict` on resume keeps the counts

    Args:
        name: what the counts describe, in messages ("training", "evaluation").
    """

    def __init__(self, name: str = "training"):
        self.name = name
        self.samples_used = 0
        self.captions_mapped_to_labels = 0
        self.skipped: Counter = Counter()
        self.damaged_shards: dict[str, str] = {}

    @property
    def samples_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def samples_seen(self) -> int:
        return self.samples_used + self.samples_skipped

    def update(self, batch: Mapping) -> None:
        """Adds one collated batch (its `texts`, `skipped`, `num_mapped` and `damaged_shards`)."""
        self.samples_used += len(batch.get("texts", ()))
        self.captions_mapped_to_labels += batch.get("num_mapped", 0)
        self.skipped.update(batch.get("skipped", {}))
        for shard, reason in batch.get("damaged_shards", {}).items():
            self.damaged_shards.setdefault(shard, reason)

    def state_dict(self) -> dict:
        """The counts as JSON-serialisable values (what `load_state_dict` and `merge` read)."""
        return {
            "samples_used": self.samples_used,
            "captions_mapped_to_labels": self.captions_mapped_to_labels,
            "skipped": dict(sorted(self.skipped.items())),
            "damaged_shards": dict(self.damaged_shards),
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.samples_used = int(state["samples_used"])
        self.captions_mapped_to_labels = int(state["captions_mapped_to_labels"])
        self.skipped = Counter({str(kind): int(count) for kind, count in state["skipped"].items()})
        self.damaged_shards = dict(state["damaged_shards"])

    def as_dict(self) -> dict:
        """The counts and the skipped share, for logs and `eval_results.json`."""
        seen = self.samples_seen
        return {
            "samples_seen": seen,
            **self.state_dict(),
            "samples_skipped": self.samples_skipped,
            "skipped_fraction": self.samples_skipped / seen if seen else 0.0,
        }

    @classmethod
    def merge(cls, states: Iterable[Mapping], name: str = "training") -> DataHealth:
        """The totals of several ranks' `state_dict()`s (for example every rank's, from `gather_object`)."""
        total = cls(name)
        for state in states:
            part = cls(name)
            part.load_state_dict(state)
            total.samples_used += part.samples_used
            total.captions_mapped_to_labels += part.captions_mapped_to_labels
            total.skipped.update(part.skipped)
            for shard, reason in part.damaged_shards.items():
                total.damaged_shards.setdefault(shard, reason)
        return total

    def summary(self) -> str:
        """One line: samples seen and skipped, by kind, and the damaged shards (the first few named)."""
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.skipped.items())) or "none"
        line = f"{self.name} data: {self.samples_seen} samples seen, {self.samples_skipped} skipped ({kinds})"
        if self.damaged_shards:
            named = "; ".join(f"{shard} ({reason})" for shard, reason in list(self.damaged_shards.items())[:3])
            more = f" and {len(self.damaged_shards) - 3} more" if len(self.damaged_shards) > 3 else ""
            line += f"; {len(self.damaged_shards)} damaged shard(s): {named}{more}"
        return line

    def check(self, max_skipped_fraction: float, min_samples: int) -> None:
        """Raises `DataError` once at least `min_samples` samples were seen and more than `max_skipped_fraction` of
        them were skipped: a wrong column, class list or dataset must not train on nothing.

        Raises:
            ValueError: `max_skipped_fraction` is not in [0, 1] or `min_samples` is negative.
            DataError: the skipped share passed the threshold.
        """
        if not 0.0 <= max_skipped_fraction <= 1.0:
            raise ValueError(f"max_skipped_fraction must be in [0, 1], got {max_skipped_fraction!r}")
        if min_samples < 0:
            raise ValueError(f"min_samples must be >= 0, got {min_samples!r}")
        seen = self.samples_seen
        if seen == 0 or seen < min_samples or self.samples_skipped <= max_skipped_fraction * seen:
            return
        raise DataError(
            f"{self.samples_skipped / seen:.1%} of the {self.name} samples were skipped as damaged, more than "
            f"max_skipped_fraction={max_skipped_fraction} allows. {self.summary()}. Check that the source paths and "
            "image_column / text_column / label_column (and the class names file) match the data, or raise "
            "max_skipped_fraction if this much damage is expected."
        )


__all__ = ["SAMPLE_DAMAGE", "SHARD_DAMAGE", "DamageLog", "DataError", "DataHealth", "Skipped"]
