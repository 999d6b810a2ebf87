"""Ranks must read the same data: each rank lists its own copy of the folders (a node's local disk, a mount that
lags), and a listing that differs on one rank trains on missed or repeated samples, credits one rank's
predictions to another rank's image ids, or pairs mismatched collectives (a different batch count) into a
false failure an epoch later. So when the loaders are built, the ranks compare each split's count, class list
and per-block digests of (sample id, label), and all stop together with one line naming the rank(s) and the
first difference.
"""

from __future__ import annotations

from dataclasses import dataclass

from delving.data.datasets import first_difference
from delving.data.readers import LISTING_BLOCK, SampleReader, listing_block_digests, listing_entries
from delving.dist import DistributedContext, gather_objects
from delving.errors import UserError


class RanksSeeDifferentDataError(UserError):
    """Two ranks list a split differently: training would go on with a silently wrong sample assignment."""


@dataclass(frozen=True)
class SplitSummary:
    count: int
    classes: list[str]
    blocks: list[str]
    where: str  # the rank's folder, for the message only (two copies at different paths may well agree)

    def same_as(self, other: SplitSummary) -> bool:
        return (self.count, self.classes, self.blocks) == (other.count, other.classes, other.blocks)


def summarize(reader: SampleReader, classes: list[str]) -> SplitSummary:
    where = str(getattr(reader, "split_dir", "") or getattr(reader, "root", ""))
    return SplitSummary(len(reader), list(classes), listing_block_digests(reader), where)


def check_ranks_see_the_same_data(
    ctx: DistributedContext, splits: dict[str, tuple[SampleReader, list[str]]]
) -> None:
    """A collective every rank calls with the same split names: raises on every rank when any rank's listing
    of a split differs from rank 0's."""
    if not ctx.is_distributed:
        return
    everyone = gather_objects(
        ctx, {name: summarize(reader, classes) for name, (reader, classes) in splits.items()}
    )
    problems = []
    for name, (reader, _) in splits.items():
        reference = everyone[0][name]
        differing = [
            rank for rank, summaries in enumerate(everyone) if not summaries[name].same_as(reference)
        ]
        if differing:
            rank, other = differing[0], everyone[differing[0]][name]
            problems.append(
                f"split {name!r}: rank(s) {', '.join(map(str, differing))} list it differently from rank 0 "
                f"({_first_difference(ctx, reader, reference, other, rank)}; rank 0 reads {reference.where or '?'}, "
                f"rank {rank} {other.where or '?'})"
            )
    if problems:
        raise RanksSeeDifferentDataError(
            f"the ranks see different data, {'; '.join(problems)}: every rank must read the same data set; bring "
            "the copies in sync (or point data.root at one shared copy) and relaunch"
        )


def _first_difference(
    ctx: DistributedContext, reader: SampleReader, reference: SplitSummary, other: SplitSummary, rank: int
) -> str:
    """The first difference between rank 0's and `rank`'s listing; gathers one block of entries when the
    classes agree (every rank calls it with the same arguments, so the collective pairs up)."""
    counts = f"{reference.count} vs {other.count} images"
    if reference.classes != other.classes:
        return (
            f"{counts}, {len(reference.classes)} vs {len(other.classes)} classes, class list's "
            + first_difference(reference.classes, other.classes)
        )
    block = next(
        (b for b, (x, y) in enumerate(zip(reference.blocks, other.blocks, strict=False)) if x != y),
        min(len(reference.blocks), len(other.blocks)),
    )
    start = block * LISTING_BLOCK
    entries = gather_objects(ctx, listing_entries(reader, start, start + LISTING_BLOCK))
    mine, theirs = entries[0], entries[rank]
    for offset, (x, y) in enumerate(zip(mine, theirs, strict=False)):
        if x != y:
            return f"{counts}; first difference at sample {start + offset}: {x[0]!r} (label {x[1]}) vs {y[0]!r} (label {y[1]})"
    if len(mine) == len(theirs):  # the same entries, digested by different readers (folders vs shards)
        return f"{counts}, read through different data set kinds"
    longer, which = (mine, 0) if len(mine) > len(theirs) else (theirs, rank)
    extra = longer[min(len(mine), len(theirs))]
    return f"{counts}; rank {which} lists {extra[0]!r} (label {extra[1]}) at sample {start + min(len(mine), len(theirs))}, the other ends there"
