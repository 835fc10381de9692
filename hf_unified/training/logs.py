"""What a run writes as it goes: `training_log.jsonl` (one record per logged step) and progress on the console.

On a terminal the console shows a progress bar; anywhere else (a cluster job's log file, a pipe) it shows one plain
line every `logging_steps` steps instead of every bar refresh. After a resume the log keeps the records up to the
checkpoint's step and continues from there, so every step appears once. A line that cannot be read (the last one, cut
by a kill while it was written) is dropped and counted, never an error.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from tqdm.auto import tqdm

from ..files import write_file

LOG_NAME = "training_log.jsonl"


class TrainingLog:
    """`training_log.jsonl` of a run; only the main process writes."""

    def __init__(self, output_dir: Path, enabled: bool):
        self.path = Path(output_dir) / LOG_NAME
        self.enabled = enabled

    def append(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> int:
        """Drops the records of steps after `step` (a resumed run logs them again) and the lines that are not
        records (a torn last line); returns how many of the latter were dropped."""
        if not (self.enabled and self.path.exists()):
            return 0
        kept, unreadable = [], 0
        for line in self.path.read_bytes().decode("utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record_step = json.loads(line)["step"]
                keep = record_step <= step
            except (ValueError, TypeError, KeyError, IndexError):
                unreadable += 1
                continue
            if keep:
                kept.append(line)
        write_file(self.path, "".join(f"{line}\n" for line in kept))
        return unreadable


def _format(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format(item) for item in value) + "]"
    if isinstance(value, float):
        return f"{value:.3e}" if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.4f}"
    return str(value)


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: non-finite values are logged as null."""
    return value if math.isfinite(value) else None


def quiet_progress_bars() -> None:
    """Turns off the libraries' own bars (transformers' "Writing model shards", datasets', the Hub's): off a
    terminal every refresh of theirs would be one more line in the log."""
    import datasets
    import huggingface_hub
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()


class Progress:
    """A tqdm bar on a terminal, else one line per logged step (main process only)."""

    def __init__(self, total: int, initial: int, description: str, enabled: bool, bar: bool | None = None):
        self.enabled = enabled
        self.total = total
        self.bar = None
        if enabled and (sys.stderr.isatty() if bar is None else bar):
            self.bar = tqdm(total=total, initial=initial, desc=description, dynamic_ncols=True)

    def update(self, step: int, record: dict | None = None) -> None:
        """Advances one step; `record` (a logged step) goes to the bar's postfix or to one printed line."""
        if self.bar is not None:
            self.bar.update(1)
            if record is not None:
                self.bar.set_postfix(
                    {k: _format(v) for k, v in record.items() if k in ("loss", "lr", "samples_per_second")}
                )
        elif self.enabled and record is not None:
            fields = " | ".join(f"{k} {_format(v)}" for k, v in record.items() if k != "step")
            print(f"step {step}/{self.total} | {fields}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = ["LOG_NAME", "Progress", "TrainingLog", "finite_or_none", "quiet_progress_bars"]
