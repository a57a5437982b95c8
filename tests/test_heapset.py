"""fastworker's compiled HeapSet against distributed.collections.HeapSet.

Same operations into both, same answers after every step (hypothesis), plus the
quirks the worker's queue order depends on, pickling and compaction.
"""
from __future__ import annotations

import gc
import operator
import pickle
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed.collections import HeapSet as StockHeapSet

from fastworker import TaskState
from fastworker.heapset import HeapSet as FastHeapSet

priority = operator.attrgetter("priority")


@pytest.fixture(params=[StockHeapSet, FastHeapSet], ids=["stock", "fastworker"])
def heap_cls(request):
    return request.param


def task(name, prio):
    return TaskState(name, priority=prio)


def test_pop_order_by_priority_then_fifo(heap_cls):
    h = heap_cls(key=priority)
    a, b, c, d = task("a", (1, 0)), task("b", (0, 5)), task("c", (1, 0)), task("d", (0, 5, -1))
    for ts in (a, b, c, d):
        h.add(ts)
    assert len(h) == 4 and bool(h)
    assert [h.pop() for _ in range(4)] == [b, d, a, c]
    assert not h
    with pytest.raises(KeyError):
        h.pop()
    with pytest.raises(KeyError):
        h.peek()


def test_mixed_lengths_and_int_float(heap_cls):
    h = heap_cls(key=priority)
    items = [task(str(i), p) for i, p in enumerate([(1,), (0, 1, 2, 3), (0.5, 0), (0, 1, 2), (-1.5,), (0, 1.0, 2)])]
    for ts in items:
        h.add(ts)
    assert [ts.key for ts in h.sorted()] == ["4", "3", "5", "1", "2", "0"]


def test_readd_keeps_old_key_and_discard_readd_surfaces_at_better(heap_cls):
    h = heap_cls(key=priority)
    a, b = task("a", (5,)), task("b", (3,))
    h.add(a)
    h.add(b)
    a.priority = (1,)
    h.add(a)  # present: no-op, key not re-read
    assert h.peek() is b
    h.discard(a)
    h.add(a)  # now two entries for a: (5,) and (1,)
    assert h.pop() is a and h.pop() is b
    c = task("c", (9,))
    h.add(c)
    h.discard(c)
    c.priority = (0,)
    h.add(c)
    a.priority = (0,)
    h.add(a)
    assert h.pop() is c  # the set emptied in between: the old entry of c was dropped


def test_discard_remove_clear_contains_iter(heap_cls):
    h = heap_cls(key=priority)
    a, b = task("a", (1,)), task("b", (2,))
    h.add(a)
    h.add(b)
    assert a in h and set(h) == {a, b}
    h.discard(a)
    h.discard(a)
    assert a not in h and list(h.peekn(5)) == [b]
    with pytest.raises(KeyError):
        h.remove(a)
    h.remove(b)
    assert not h
    h.add(a)
    h.clear()
    assert len(h) == 0 and list(h.sorted()) == []


def test_peekright_popright(heap_cls):
    h = heap_cls(key=priority)
    items = [task(str(i), (i,)) for i in range(10)]
    for ts in items:
        h.add(ts)
    right = h.peekright()
    assert right.priority >= h.peek().priority
    assert h.popright() is right and right not in h


def test_pickle(heap_cls):
    h = heap_cls(key=priority)
    items = [task(str(i), (i % 3, i)) for i in range(10)]
    for ts in items:
        h.add(ts)
    h.discard(items[0])
    h2 = pickle.loads(pickle.dumps(h))
    assert [ts.key for ts in h2.sorted()] == [ts.key for ts in h.sorted()]
    assert len(h2) == 9


def test_compaction_frees_discarded_and_keeps_order():
    h = FastHeapSet(key=priority)
    keep = [task(f"k{i}", (i % 7, i)) for i in range(100)]
    for ts in keep:
        h.add(ts)
    ref = None
    for i in range(5000):
        ts = task(f"d{i}", (-1, i))
        h.add(ts)
        h.discard(ts)
        if i == 0:
            ref = weakref.ref(ts)
        del ts
    gc.collect()
    assert ref() is None  # a discarded task is not kept alive by its stale entry
    expected = sorted(keep, key=lambda t: t.priority)
    assert [h.pop() for _ in range(100)] == expected


def test_other_key_function(heap_cls):
    h = heap_cls(key=lambda ts: -ts.priority[0])
    a, b = task("a", (1,)), task("b", (2,))
    h.add(a)
    h.add(b)
    assert h.pop() is b


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "add", "add", "discard", "pop", "peek", "peekn", "sorted", "reprio", "clear", "len"]),
        st.integers(0, 11),
        st.one_of(
            st.tuples(st.integers(-3, 3)),
            st.tuples(st.integers(-3, 3), st.floats(-2, 2, allow_nan=False), st.integers(0, 2**70)),
            st.tuples(st.floats(-3, 3, allow_nan=False), st.integers(-2, 2)),
        ),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_differential(ops):
    stock, fast = StockHeapSet(key=priority), FastHeapSet(key=priority)
    pool = [task(f"t{i}", (0,)) for i in range(12)]
    for op, i, prio in ops:
        ts = pool[i]
        if op == "add":
            if ts not in stock:
                ts.priority = prio
            stock.add(ts)
            fast.add(ts)
        elif op == "reprio":
            ts.priority = prio  # changes nothing for an element already in
        elif op == "discard":
            stock.discard(ts)
            fast.discard(ts)
        elif op == "pop":
            if stock:
                assert stock.pop() is fast.pop()
            else:
                with pytest.raises(KeyError):
                    fast.pop()
        elif op == "peek":
            if stock:
                assert stock.peek() is fast.peek()
        elif op == "peekn":
            assert list(stock.peekn(i % 4)) == list(fast.peekn(i % 4))
        elif op == "sorted":
            assert list(stock.sorted()) == list(fast.sorted())
        elif op == "clear":
            stock.clear()
            fast.clear()
        assert len(stock) == len(fast)
        assert set(stock) == set(fast)
    assert list(stock.sorted()) == list(fast.sorted())
    while stock:
        assert stock.pop() is fast.pop()
    assert not fast
