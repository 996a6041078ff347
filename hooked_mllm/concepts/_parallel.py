"""Which share of a dataset this process extracts, and how the processes of one run agree on the outcome.

A data-parallel extraction runs ``world_size`` processes; rank ``r`` takes the samples at
dataset positions ``r, r + world_size, r + 2 * world_size, ...`` (a deterministic stride that
needs no dataset length). The rank comes from an explicit ``rank=`` / ``world_size=`` or from an
initialized ``torch.distributed`` process group (``torchrun``; the ``hooked-mllm extract`` command
initializes one with gloo from torchrun's environment). With a process group the ranks exchange
their outcome at the end, so that every rank fails when one did.

Used by :mod:`hooked_mllm.concepts.extract`.

Examples:
    >>> resolve_split(1, 2)
    Split(rank=1, world_size=2, group=False)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class Split:
    """This process's share: rank ``rank`` of ``world_size``; ``group`` when a process group links them."""

    rank: int = 0
    world_size: int = 1
    group: bool = False

    def owns(self, index: int) -> bool:
        """Whether the sample at dataset position ``index`` is this rank's."""
        return index % self.world_size == self.rank


def resolve_split(rank: int | None, world_size: int | None) -> Split:
    """The split from explicit values, else from an initialized process group, else one process.

    Refuses half-given values, a rank outside ``[0, world_size)``, and a torchrun environment
    (``WORLD_SIZE`` > 1) without a process group, where every process would extract everything.
    """
    group = dist.is_available() and dist.is_initialized()
    if rank is None and world_size is None:
        if group:
            return Split(dist.get_rank(), dist.get_world_size(), dist.get_world_size() > 1)
        env = os.environ.get("WORLD_SIZE")
        if env is not None and env.isdigit() and int(env) > 1:
            raise ValueError(
                f"WORLD_SIZE={env} is set (torchrun?) but no torch.distributed process group is "
                "initialized: call torch.distributed.init_process_group('gloo') first, or pass "
                "rank= and world_size= to extract"
            )
        return Split()
    if rank is None or world_size is None:
        raise ValueError(f"Give both rank= and world_size= (got rank={rank}, world_size={world_size})")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(
            f"rank must be in [0, world_size) with world_size >= 1, got rank={rank}, world_size={world_size}"
        )
    linked = group and dist.get_world_size() == world_size and dist.get_rank() == rank
    return Split(rank, world_size, linked and world_size > 1)


def agree(split: Split, error: BaseException | None) -> None:
    """Re-raise this rank's ``error``; with a process group, also fail when another rank failed.

    Every rank must call it (it is a collective when ``split.group``).
    """
    if split.group:
        outcomes: list[str | None] = [None] * split.world_size
        dist.all_gather_object(outcomes, None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if split.group:
        failed = [(r, o) for r, o in enumerate(outcomes) if o is not None]
        if failed:
            rank, outcome = failed[0]
            raise RuntimeError(
                f"Rank {rank} of {split.world_size} failed ({outcome}); the samples every "
                "rank finished are saved in the store: run the same command again to resume"
            )
