"""Greedy transition packing (the packer production uses) measured on the exact bytes sent."""

from __future__ import annotations

import random

import orjson
import pyarrow as pa
import pytest

from loyalty_moengage.moengage.packing import (
    BODY_PREFIX,
    BODY_SUFFIX,
    TRANSITION_MAX_BYTES,
    pack_spans,
)

ENVELOPE = len(BODY_PREFIX) + len(BODY_SUFFIX)


def element(i: int, size: int, pad: str = "x") -> str:
    """A valid event element of exactly ``size`` UTF-8 bytes (``pad`` is one character)."""
    head = '{"type":"event","customer_id":"REL-%d","pad":"' % i
    room = size - len(head.encode()) - 2
    width = len(pad.encode())
    return head + pad * (room // width) + "x" * (room % width) + '"}'


def column(elements: list[str]) -> pa.Array:
    return pa.array(elements, pa.string())


def body(elements: list[str]) -> bytes:
    """What MoEngage must receive for these elements, built independently of the packer."""
    return BODY_PREFIX + ",".join(elements).encode() + BODY_SUFFIX


def test_body_at_exactly_the_limit_is_one_batch():
    per = 1000
    n = 99
    sizes = [per] * n
    sizes[-1] += TRANSITION_MAX_BYTES - (ENVELOPE + per * n + (n - 1))
    elements = [element(i, s) for i, s in enumerate(sizes)]
    spans, oversize = pack_spans(column(elements))
    assert len(spans) == 1 and not oversize
    assert len(spans[0].body) == TRANSITION_MAX_BYTES
    assert spans[0].body == body(elements)
    assert orjson.loads(spans[0].body)["elements"][0]["customer_id"] == "REL-0"
    # one byte more does not fit: the last element moves to a second batch
    elements[-1] = element(n - 1, sizes[-1] + 1)
    spans, _ = pack_spans(column(elements))
    assert [(s.start, s.stop) for s in spans] == [(0, n - 1), (n - 1, n)]
    assert all(len(s.body) <= TRANSITION_MAX_BYTES for s in spans)


def test_oversize_element_is_reported_never_sent_and_order_kept():
    elements = [element(0, 300), element(1, TRANSITION_MAX_BYTES), element(2, 300),
                element(3, TRANSITION_MAX_BYTES - ENVELOPE), element(4, 300)]
    spans, oversize = pack_spans(column(elements))
    assert oversize == [(1, TRANSITION_MAX_BYTES)]
    assert [(s.start, s.stop) for s in spans] == [(0, 1), (2, 3), (3, 4), (4, 5)]
    assert len(spans[2].body) == TRANSITION_MAX_BYTES
    assert all(b'REL-1"' not in s.body for s in spans)
    assert [s.body for s in spans] == [body([elements[i]]) for i in (0, 2, 3, 4)]


@pytest.mark.parametrize("pad", ["x", "é", "₹"])  # sizes are UTF-8 bytes, not characters
def test_random_elements_pack_greedily_and_exactly(pad):
    rng = random.Random(7)
    elements = [element(i, rng.randint(60, 9000), pad) for i in range(2000)]
    spans, oversize = pack_spans(column(elements), max_bytes=50_000)
    assert not oversize
    assert [i for s in spans for i in range(s.start, s.stop)] == list(range(2000))
    for s, nxt in zip(spans, spans[1:] + [None]):
        assert s.body == body(elements[s.start:s.stop])
        assert len(s.body) <= 50_000
        if nxt is not None:  # greedy: the next element would not have fitted
            assert len(s.body) + 1 + len(elements[nxt.start].encode()) > 50_000
        orjson.loads(s.body)


def test_chunked_and_sliced_columns_pack_like_one_array():
    elements = [element(i, 700 + i) for i in range(300)]
    expected = pack_spans(column(elements), max_bytes=10_000)
    chunked = pa.chunked_array([column(elements[:100]), column(elements[100:])])
    assert pack_spans(chunked, max_bytes=10_000) == expected
    sliced = column(["padding"] * 5 + elements)[5:]
    assert pack_spans(sliced, max_bytes=10_000) == expected


def test_empty_and_bad_arguments():
    assert pack_spans(column([])) == ([], [])
    with pytest.raises(ValueError):
        pack_spans(column(["{}"]), max_bytes=ENVELOPE)
