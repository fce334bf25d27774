"""Which image each batch row attends to.

The sampler batches the rows of several conditionings: `cond_or_uncond` has one entry per chunk, `uuids` the uuid of
the conditioning each chunk came from, and every chunk holds the same number of rows. A chunk's role follows its
conditioning, by name, so every guider gets it right: plain CFG ("positive", "negative"), DualCFGGuider ("negative",
"middle", "positive"), PerpNegGuider ("positive", "negative", "empty_negative_prompt"), and guidance passes that
re-run one conditioning alone (Self-Attention Guidance re-runs the unconditional as `[0]`).

The rule: a conditioning whose name contains "negative" (or "uncond") gets the negative image; every other one
(positive, DualCFG's middle, any custom name) gets the reference image. A chunk whose conditioning is unknown (no
sampler run, or a conditioning made inside a model patch) falls back to plain CFG's convention: index 1 is the
unconditional.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import IntEnum
from typing import Mapping, Sequence

import torch

log = logging.getLogger(__name__)

#: `cond_or_uncond` value of the unconditional chunk in the plain CFG guider's batches.
UNCOND_INDEX = 1
NEGATIVE_NAME_PARTS = ("negative", "uncond")
_LOGGED_LAYOUTS: set[tuple] = set()


class Role(IntEnum):
    """The image a row attends to; also its row in the [positive, negative] K/V tables."""

    POSITIVE = 0
    NEGATIVE = 1


def role_of_conditioning(name: str) -> Role:
    """The documented rule for a guider's named conditioning (module docstring)."""
    lowered = name.lower()
    return Role.NEGATIVE if any(part in lowered for part in NEGATIVE_NAME_PARTS) else Role.POSITIVE


def roles_by_uuid(conds: Mapping[str, Sequence[Mapping]]) -> dict:
    """uuid -> Role for every conditioning entry of a guider's `conds` ({name: [cond dict with "uuid"]})."""
    return {c["uuid"]: role_of_conditioning(name) for name, entries in conds.items() for c in entries if "uuid" in c}


@dataclass(frozen=True)
class BatchLayout:
    """The roles of a batch's chunks and the rows in each chunk."""

    chunk_roles: tuple[Role, ...]
    rows_per_chunk: int

    @property
    def row_roles(self) -> list[Role]:
        return [role for role in self.chunk_roles for _ in range(self.rows_per_chunk)]

    def row_index(self, device: torch.device | str) -> torch.Tensor:
        """Each row's index into a [positive, negative] table. Shape: (B,), int64."""
        roles = torch.tensor([int(r) for r in self.chunk_roles], dtype=torch.long)
        return roles.repeat_interleave(self.rows_per_chunk).to(device)


def _log_once(problem: str, key: tuple) -> None:
    if key not in _LOGGED_LAYOUTS:
        _LOGGED_LAYOUTS.add(key)
        log.warning("IP-Adapter: %s; every row gets the reference image. Please report the workflow.", problem)


def batch_layout(
    batch: int, cond_or_uncond: Sequence[int] | None, uuids: Sequence | None, known: Mapping | None = None
) -> BatchLayout:
    """The layout of a batch of `batch` rows, from the sampler's per-chunk lists.

    Args:
        cond_or_uncond: the chunk indices into the guider's conds list; None or empty for a direct model call
            (every row is then conditional).
        uuids: the conditioning uuid of each chunk, or None.
        known: uuid -> Role for this sampling run (`roles_by_uuid`); None outside a sampler run.
    """
    chunks = list(cond_or_uncond or ())
    if not chunks:
        return BatchLayout((Role.POSITIVE,), batch)
    if batch % len(chunks) != 0:
        _log_once(f"a batch of {batch} rows does not split into {len(chunks)} chunks {chunks}",
                  ("split", batch, tuple(chunks)))
        return BatchLayout((Role.POSITIVE,), batch)
    ids = list(uuids) if uuids is not None and len(uuids) == len(chunks) else [None] * len(chunks)
    known = known or {}
    roles = tuple(known.get(u, Role.NEGATIVE if c == UNCOND_INDEX else Role.POSITIVE) if u is not None
                  else (Role.NEGATIVE if c == UNCOND_INDEX else Role.POSITIVE) for c, u in zip(chunks, ids))
    return BatchLayout(roles, batch // len(chunks))
