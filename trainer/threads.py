"""How many torch threads and worker processes a fit gets, from the model's size and the machine's usable cores.

The fusion heads are small: one batch is a few million floating-point operations,
far less than the cost of waking a second thread, so intra-op threads only add
synchronisation (measured: 2 threads ran an epoch 3 to 9 times slower than 1).
Small heads therefore train with one torch thread, and the cores are used by
running folds (and ``mmfeat compare``'s heads) in parallel processes instead
(``trainer.folds``). A head whose batch costs more than ``SMALL_BATCH_FLOPS``
gets the cores a process has to itself.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
from torch import nn

from trainer.machine import usable_cores

logger = logging.getLogger(__name__)

SMALL_BATCH_FLOPS = 2e8
"""Training floating-point operations per batch (forward and backward) below which one thread is fastest."""


def batch_flops(model: nn.Module, batch_size: int, steps: int = 1) -> float:
    """About ``6 * parameters * batch_size`` (forward 2, backward 4 per weight and sample); the parameters of a
    ``FusionModel``'s sequence encoders (``model.sequences``) count ``steps`` times (each step goes through them).
    An upper bound, good enough to size threads."""
    total = sum(p.numel() for p in model.parameters())
    encoders = getattr(model, "projections", {})
    per_step = [encoders[m] for m in getattr(model, "sequences", ()) if m in encoders]
    if getattr(model, "mult", None) is not None:  # the cross-modal transformer runs over every step
        per_step.append(model.mult)
    sequence = sum(p.numel() for module in per_step for p in module.parameters())
    return 6.0 * batch_size * (total - sequence + sequence * max(1, steps))


def threads_for(model: nn.Module, batch_size: int, *, steps: int = 1, jobs: int = 1) -> int:
    """Torch threads for training ``model`` in one of ``jobs`` concurrent processes: 1 for a small head, else this
    process's share of the usable cores."""
    if batch_flops(model, batch_size, steps) < SMALL_BATCH_FLOPS:
        return 1
    return max(1, usable_cores() // max(1, jobs))


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``; the previous number is restored afterwards."""
    previous = torch.get_num_threads()
    if threads != previous:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def single_threaded_process() -> None:
    """For a worker process that trains small heads: one intra-op and (when still allowed) one inter-op thread."""
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # inter-op threads are fixed once any parallel work ran in this process
        logger.debug("torch inter-op threads already fixed at %d", torch.get_num_interop_threads())
