"""Greedy packing of serialized MoEngage elements into bulk ``transition`` request bodies.

MoEngage accepts at most 100 KB per bulk request and answers 200 even when it drops data, so
the limit is enforced here, on the exact bytes that will be sent: a body is
``{"type":"transition","elements":[`` + elements joined by ``,`` + ``]}``. Elements are never
split or re-encoded; one that cannot fit even alone is reported, never sent.

Pure and dependency-free: sizes come from ``len()`` and bodies from one ``b",".join`` per batch,
so a million elements pack in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: "100 KB" read strictly (decimal). The sandbox answers 413 above it, like MoEngage.
TRANSITION_MAX_BYTES = 100_000
#: Track User / Create Event single-request limit ("128 KB").
SINGLE_MAX_BYTES = 128_000

BODY_PREFIX = b'{"type":"transition","elements":['
BODY_SUFFIX = b"]}"
_OVERHEAD = len(BODY_PREFIX) + len(BODY_SUFFIX)


@dataclass(frozen=True, slots=True)
class PackedBatch:
    body: bytes  # exact request body
    indices: list[int]  # positions of the input elements in this batch, in order
    users: int  # elements whose kind is "customer"
    events: int  # elements whose kind is "event"


@dataclass(frozen=True, slots=True)
class Oversize:
    index: int
    size: int
    reason: str


def transition_body(elements: Sequence[bytes]) -> bytes:
    """The exact body for these elements (no size check)."""
    return BODY_PREFIX + b",".join(elements) + BODY_SUFFIX


def pack_transition(
    elements: Sequence[bytes],
    kinds: Sequence[str] | str,
    *,
    max_bytes: int = TRANSITION_MAX_BYTES,
) -> tuple[list[PackedBatch], list[Oversize]]:
    """Pack elements in order into as few bodies of at most ``max_bytes`` as greedy filling allows."""
    count = len(elements)
    if not isinstance(kinds, str) and len(kinds) != count:
        raise ValueError(f"kinds has {len(kinds)} entries for {count} elements")
    if max_bytes <= _OVERHEAD + 2:
        raise ValueError(f"max_bytes={max_bytes} cannot hold any element")
    batches: list[PackedBatch] = []
    oversize: list[Oversize] = []
    budget = max_bytes - _OVERHEAD  # bytes left for elements and commas

    def close(start: int, end: int) -> None:
        if start == end:
            return
        chunk = elements[start:end]
        if isinstance(kinds, str):
            users = end - start if kinds == "customer" else 0
            events = end - start if kinds == "event" else 0
        else:
            part = kinds[start:end]
            users = part.count("customer")
            events = part.count("event")
        batches.append(
            PackedBatch(
                body=BODY_PREFIX + b",".join(chunk) + BODY_SUFFIX,
                indices=list(range(start, end)),
                users=users,
                events=events,
            )
        )

    start = 0
    used = -1  # no comma before the first element
    for i, size in enumerate(map(len, elements)):
        if size > budget:
            close(start, i)
            oversize.append(
                Oversize(
                    index=i,
                    size=size,
                    reason=(
                        f"element is {size} bytes; one transition request may carry at most "
                        f"{max_bytes} bytes including the {_OVERHEAD}-byte envelope"
                    ),
                )
            )
            start, used = i + 1, -1
            continue
        used += size + 1
        if used > budget:
            close(start, i)
            start, used = i, size
    close(start, count)
    return batches, oversize
