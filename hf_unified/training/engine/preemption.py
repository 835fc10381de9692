"""Stopping when the scheduler asks: SIGTERM or SIGUSR1 -> a checkpoint at the next step boundary, then an exit with
`REQUEUE_EXIT_CODE`, on which `training/slurm/*.sbatch` requeues the job (which resumes from that checkpoint).

A cluster sends SIGTERM before it preempts or kills a job, and SLURM sends the signal of `--signal` (SIGUSR1 in our
sbatch script) some minutes before the time limit. The trainer installs `StopRequest` for both while it trains: the
handler only notes the signal; the loop checks it after each optimizer step, on every rank at once (`agreed`: one
rank's signal stops all of them at the same step), writes a checkpoint there and raises `RunStopped`. The resumed run
ends bit-identical to an uninterrupted one, since checkpoints hold the exact state at a step boundary.

DataLoader workers ignore both signals (`ignore_stop_signals`): a scheduler signals every process of the job, and a
worker killed by it would end the run before its checkpoint; the main process shuts its workers down itself.
Ctrl-C (SIGINT) is not a stop request: it ends the run at once, and `training/cli.py` says so in one line; a worker
whose batch was being handed over at that moment stays quiet about the broken hand-over (`quiet_broken_handovers`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

import torch

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# sysexits.h's EX_TEMPFAIL, "temporary failure; the user is invited to retry": the job is to be requeued.
REQUEUE_EXIT_CODE = getattr(os, "EX_TEMPFAIL", 75)


class RunStopped(RuntimeError):
    """The run stopped at a step boundary on a stop signal, checkpointed; the message says where and how to resume."""

    def __init__(self, signal_name: str, step: int, max_steps: int, checkpoint):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        super().__init__(
            f"{signal_name} received: stopped at step {step} of {max_steps}, checkpoint {checkpoint} written; resume "
            "with --resume_from_checkpoint latest"
        )


class StopRequest:
    """Notes the first stop signal received while `catching()` is active."""

    def __init__(self):
        self.signal_name: str | None = None

    def _note(self, signum, frame) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    @contextmanager
    def catching(self):
        """Installs the handler for `STOP_SIGNALS` (only the main thread can), and puts the previous ones back."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {number: signal.signal(number, self._note) for number in STOP_SIGNALS}
        try:
            yield self
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def agreed(self, accelerator) -> str | None:
        """The stop signal any rank received, the same answer on every rank (a collective when there are several)."""
        if accelerator.num_processes == 1:
            return self.signal_name
        code = next((i + 1 for i, s in enumerate(STOP_SIGNALS) if s.name == self.signal_name), 0)
        received = int(accelerator.gather(torch.tensor([code], device=accelerator.device)).max())
        return STOP_SIGNALS[received - 1].name if received else None


def ignore_stop_signals(worker_id: int) -> None:
    """`worker_init_fn` of the training DataLoader: the workers leave stop signals to the main process, and say
    nothing of a batch hand-over that the main process broke off (`quiet_broken_handovers`)."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    sys.excepthook = quiet_broken_handovers(sys.excepthook)


def quiet_broken_handovers(excepthook):
    """`excepthook` except for a connection error raised in multiprocessing's resource sharer.

    A worker hands a batch's tensors to the main process as file descriptors, served by the resource sharer's thread,
    which reports any error through `sys.excepthook`. When Ctrl-C interrupts the main process while it fetches them,
    the worker's thread meets a closed connection and would print a traceback under the run's one-line message (seen
    on a busy machine); the main process has already said what happened, so that error alone is dropped."""

    def hook(kind, value, traceback) -> None:
        frames, handover = traceback, False
        while frames is not None and not handover:
            handover = frames.tb_frame.f_code.co_filename.endswith(
                os.path.join("multiprocessing", "resource_sharer.py")
            )
            frames = frames.tb_next
        if handover and issubclass(kind, (OSError, EOFError)):
            return
        excepthook(kind, value, traceback)

    return hook


__all__ = [
    "REQUEUE_EXIT_CODE",
    "RunStopped",
    "STOP_SIGNALS",
    "StopRequest",
    "ignore_stop_signals",
    "quiet_broken_handovers",
]
