"""Greedy transition packing measured on the exact bytes sent."""

from __future__ import annotations

import random
import time

import orjson
import pytest

from loyalty_moengage.moengage.packing import (
    BODY_PREFIX,
    BODY_SUFFIX,
    TRANSITION_MAX_BYTES,
    pack_transition,
    transition_body,
)

ENVELOPE = len(BODY_PREFIX) + len(BODY_SUFFIX)


def element(i: int, size: int) -> bytes:
    """A valid event element of exactly ``size`` bytes."""
    head = b'{"type":"event","customer_id":"REL-%d","pad":"' % i
    return head + b"x" * (size - len(head) - 2) + b'"}'


def test_body_at_exactly_the_limit_is_one_batch():
    per = 1000
    n = 99
    sizes = [per] * n
    sizes[-1] += TRANSITION_MAX_BYTES - (ENVELOPE + per * n + (n - 1))
    elements = [element(i, s) for i, s in enumerate(sizes)]
    batches, oversize = pack_transition(elements, "event")
    assert len(batches) == 1 and not oversize
    assert len(batches[0].body) == TRANSITION_MAX_BYTES
    assert orjson.loads(batches[0].body)["elements"][0]["customer_id"] == "REL-0"
    # one byte more does not fit: the last element moves to a second batch
    elements[-1] = element(n - 1, sizes[-1] + 1)
    batches, _ = pack_transition(elements, "event")
    assert [len(b.indices) for b in batches] == [n - 1, 1]
    assert all(len(b.body) <= TRANSITION_MAX_BYTES for b in batches)


def test_oversize_element_is_reported_never_sent_and_order_kept():
    elements = [element(0, 300), element(1, TRANSITION_MAX_BYTES), element(2, 300),
                element(3, TRANSITION_MAX_BYTES - ENVELOPE), element(4, 300)]
    batches, oversize = pack_transition(elements, "customer")
    assert [o.index for o in oversize] == [1]
    assert oversize[0].size == TRANSITION_MAX_BYTES and "at most 100000" in oversize[0].reason
    assert [b.indices for b in batches] == [[0], [2], [3], [4]]
    assert len(batches[2].body) == TRANSITION_MAX_BYTES
    assert all(b"REL-1\"" not in b.body for b in batches)


def test_random_elements_pack_greedily_and_exactly():
    rng = random.Random(7)
    elements = [element(i, rng.randint(60, 9000)) for i in range(2000)]
    kinds = [rng.choice(["customer", "event"]) for _ in elements]
    batches, oversize = pack_transition(elements, kinds, max_bytes=50_000)
    assert not oversize
    assert [i for b in batches for i in b.indices] == list(range(2000))
    for b, nxt in zip(batches, batches[1:] + [None]):
        assert b.body == transition_body([elements[i] for i in b.indices])
        assert len(b.body) <= 50_000
        assert b.users == sum(kinds[i] == "customer" for i in b.indices)
        assert b.events == sum(kinds[i] == "event" for i in b.indices)
        if nxt is not None:  # greedy: the next element would not have fitted
            assert len(b.body) + 1 + len(elements[nxt.indices[0]]) > 50_000
        orjson.loads(b.body)


def test_empty_and_bad_arguments():
    assert pack_transition([], "event") == ([], [])
    with pytest.raises(ValueError):
        pack_transition([b"{}"], ["event", "event"])


def test_a_million_elements_pack_fast():
    elements = [element(i, 300) for i in range(1_000_000)]
    started = time.perf_counter()
    batches, _ = pack_transition(elements, "event")
    elapsed = time.perf_counter() - started
    assert sum(len(b.indices) for b in batches) == 1_000_000
    assert elapsed < 2.0, elapsed  # ~0.25 s here; generous for a shared CI machine
