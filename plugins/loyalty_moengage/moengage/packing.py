"""Greedy packing of serialized MoEngage elements into bulk ``transition`` request bodies.

MoEngage accepts at most 100 KB per bulk request and answers 200 even when it drops data, so
the limit is enforced here, on the exact bytes that will be sent: a body is
``{"type":"transition","elements":[`` + elements joined by ``,`` + ``]}``. Elements are never
split or re-encoded; one that cannot fit even alone is reported, never sent.

The elements arrive as one Arrow string column (see :mod:`loyalty_moengage.sync.chunk.payloads`):
packing finds each body's end with a binary search over the column's byte offsets and slices
its contiguous buffer, so a 100 KB body is one memory copy, not thousands of small joins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

#: "100 KB" read strictly (decimal). The sandbox answers 413 above it, like MoEngage.
TRANSITION_MAX_BYTES = 100_000
#: Track User / Create Event single-request limit ("128 KB").
SINGLE_MAX_BYTES = 128_000

BODY_PREFIX = b'{"type":"transition","elements":['
BODY_SUFFIX = b"]}"
_OVERHEAD = len(BODY_PREFIX) + len(BODY_SUFFIX)


@dataclass(frozen=True, slots=True)
class Span:
    start: int       # first element (index into the packed array)
    stop: int        # one past the last element
    body: bytes      # the exact request body


def pack_spans(elements: pa.Array | pa.ChunkedArray, *,
               max_bytes: int = TRANSITION_MAX_BYTES) -> tuple[list[Span], list[tuple[int, int]]]:
    """Greedy in-order packing of elements into transition bodies of at most ``max_bytes``.

    Returns the spans and the (index, size in bytes) of elements that alone exceed the limit;
    those are never sent. Elements keep their order; an element is never split.
    """
    # Imported here so that importing the hook (which reads the limits above) stays cheap.
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if max_bytes <= _OVERHEAD:
        raise ValueError(f"max_bytes={max_bytes} cannot hold any element")
    n = len(elements)
    if n == 0:
        return [], []
    if isinstance(elements, pa.ChunkedArray):
        elements = elements.combine_chunks()
    large = pa.large_string()
    with_comma = pc.binary_join_element_wise(elements.cast(large), pa.scalar(",", large), pa.scalar("", large))
    offs = np.frombuffer(with_comma.buffers()[1], dtype=np.int64)[with_comma.offset: with_comma.offset + n + 1]
    data = memoryview(with_comma.buffers()[2])
    cap = max_bytes - _OVERHEAD + 1
    spans: list[Span] = []
    oversize: list[tuple[int, int]] = []
    i = 0
    while i < n:
        j = int(np.searchsorted(offs, offs[i] + cap, side="right")) - 1
        if j <= i:
            oversize.append((i, int(offs[i + 1] - offs[i]) - 1))
            i += 1
            continue
        j = min(j, n)
        spans.append(Span(i, j, b"".join((BODY_PREFIX, data[offs[i]: offs[j] - 1], BODY_SUFFIX))))
        i = j
    return spans, oversize
