"""PriorityHeapSet against the stock distributed.collections.HeapSet.

Behavioural tests take the ``heap_impl`` fixture and run once on the stock HeapSet
and once on fastworker's PriorityHeapSet. The differential test drives both with
the same random operations and compares them after every step. Tests of what only
our implementation has (compaction, C comparisons, GC hooks) use ``make_fast``.
"""
from __future__ import annotations

import collections.abc
import copy
import gc
import math
import operator
import pickle
import random
import weakref
from functools import partial

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distributed.collections import HeapSet

from fastworker.heap import PriorityHeapSet

PRIORITY = operator.attrgetter("priority")


class Task:
    """A task-state stand-in: identity hash/eq, weakref-able, a ``.priority``."""

    __slots__ = ("name", "priority", "__weakref__")

    def __init__(self, name, priority):
        self.name = name
        self.priority = priority

    def __repr__(self):
        return f"Task({self.name!r}, {self.priority!r})"


class ValueTask:
    """Hashed and compared by name, like the element class of distributed's tests."""

    def __init__(self, name, priority):
        self.name = name
        self.priority = priority

    def __hash__(self):
        return hash(self.name)

    def __eq__(self, other):
        return isinstance(other, ValueTask) and other.name == self.name

    def __repr__(self):
        return f"ValueTask({self.name!r}, {self.priority!r})"


class NoWeakref:
    __slots__ = ("priority",)

    def __init__(self, priority):
        self.priority = priority


def make_stock(key=PRIORITY):
    return HeapSet(key=key)


def make_fast(key=PRIORITY, compaction=True):
    h = PriorityHeapSet(key=key)
    if not compaction:
        h._compact_threshold = -1
    return h


@pytest.fixture(params=["stock", "fastworker"])
def heap_impl(request):
    """A HeapSet factory ``make(key=attrgetter("priority"))``: stock, then ours."""
    return make_stock if request.param == "stock" else make_fast


def names(elements):
    return [e.name for e in elements]


# --------------------------------------------------------------------------------
# Differential test
# --------------------------------------------------------------------------------

BOUNDARY_INTS = [
    2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**100, -(2**100),
]
BOUNDARY_FLOATS = [
    0.0, -0.0, 0.5, -0.5, 1.0, 2.0, 2.0**53, 2.0**63, -(2.0**63), 1e300,
    math.inf, -math.inf,
]
items = st.one_of(
    st.integers(-3, 3),  # many ties
    st.integers(-(2**70), 2**70),
    st.sampled_from(BOUNDARY_INTS),
    st.sampled_from(BOUNDARY_FLOATS),
    st.floats(-4, 4, allow_nan=False).map(lambda x: round(x * 2) / 2),
)
priorities = st.lists(items, min_size=1, max_size=7).map(tuple)

POOL = 16
idx = st.integers(0, POOL - 1)
OP_ARGS = {
    "add": (idx, st.none() | priorities),  # priority None: unchanged
    "discard": (idx,),
    "remove": (idx,),
    "pop": (),
    "peek": (),
    "popright": (),
    "peekright": (),
    "peekn": (st.integers(-1, POOL + 1),),
    "sorted": (st.none() | st.integers(0, 4),),  # whole or first k
    "len": (),
    "contains": (idx,),
    "iter": (),
    "clear": (),
    "reduce": (),
    "renew": (idx, priorities),
}
# Weighted so that the heap grows, goes stale and gets compacted; hypothesis
# dedups equal strategies in one_of, but not repeated values in sampled_from.
WEIGHTS = {"add": 10, "discard": 7, "pop": 2, "renew": 2}


def op_lists(kinds, min_size=30, max_size=200):
    kind = st.sampled_from([k for k in kinds for _ in range(WEIGHTS.get(k, 1))])
    op = kind.flatmap(lambda k: st.tuples(st.just(k), *OP_ARGS[k]))
    return st.lists(op, min_size=min_size, max_size=max_size)


COMMON = [k for k in OP_ARGS if k not in ("popright", "peekright", "clear")]
# clear() resets everything: only in a few shorter sequences.
exact_layout_ops = op_lists(COMMON + ["popright", "peekright"]) | op_lists(
    list(OP_ARGS), min_size=0, max_size=60
)
compaction_ops = op_lists(COMMON) | op_lists(
    COMMON + ["clear"], min_size=0, max_size=60
)


def run(fn):
    """(result, exception type) of fn(); results reduced to comparable names."""
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - compared below
        return ("raised", type(e))
    if isinstance(out, Task):
        return ("element", out.name)
    if isinstance(out, list):
        return ("list", names(out))
    return ("value", out)


def apply(h, pool, op):
    kind = op[0]
    if kind == "add":
        return run(lambda: h.add(pool[op[1]]))
    if kind in ("discard", "remove", "contains"):
        method = {"contains": h.__contains__}.get(kind) or getattr(h, kind)
        return run(lambda: method(pool[op[1]]))
    if kind in ("pop", "peek", "popright", "peekright"):
        return run(getattr(h, kind))
    if kind == "peekn":
        return run(lambda: list(h.peekn(op[1])))
    if kind == "sorted":
        if op[1] is None:
            return run(lambda: list(h.sorted()))
        it = h.sorted()
        return run(lambda: [next(it) for _ in range(min(op[1], len(h)))])
    if kind == "len":
        return ("value", (len(h), bool(h)))
    if kind == "iter":
        return ("list", names(h))
    if kind == "clear":
        return run(h.clear)
    raise AssertionError(op)


def live_entries(h, alive):
    """Entries (counter, key, element name) whose element is in ``alive``: those that
    can ever become live again, the state that must match exactly."""
    alive = {id(a) for a in alive}
    return sorted((i, k, r().name) for k, i, r in h._heap if id(r()) in alive)


def run_differential(ops, compaction):
    stock = make_stock()
    fast = make_fast(compaction=compaction)
    if compaction:
        fast._compact_threshold = 0  # compact as often as allowed
    pool = [Task(f"t{i}", (i % 3,)) for i in range(POOL)]
    generation = 0
    for op in ops:
        if op[0] == "add" and op[2] is not None:
            pool[op[1]].priority = op[2]
        if op[0] == "renew":
            # Drop the pool's reference to an element; if it is not a member, the
            # stock heap's weakref to it dies.
            generation += 1
            pool[op[1]] = Task(f"t{op[1]}.{generation}", op[2])
            continue
        if op[0] == "reduce":
            # Round trip through __reduce__, keeping the same element objects.
            fn_s, args_s = stock.__reduce__()
            fn_f, args_f = fast.__reduce__()
            assert args_s[1] == args_f[1]
            if compaction:
                key = operator.itemgetter(1)
                assert sorted(args_s[2], key=key) == sorted(args_f[2], key=key)
            else:
                assert args_s[2] == args_f[2]
            stock, fast = fn_s(*args_s), fn_f(*args_f)
            if compaction:
                fast._compact_threshold = 0
            else:
                fast._compact_threshold = -1
            continue

        expected = apply(stock, pool, op)
        actual = apply(fast, pool, op)
        if op[0] == "iter" and compaction:
            # A set rebuilt by unpickling from a differently laid out heap may
            # iterate in another order; without compaction both sets always saw
            # the same operations, so they iterate alike.
            expected, actual = sorted(expected[1]), sorted(actual[1])
        assert actual == expected, op

        assert len(fast) == len(stock)
        assert set(fast) == set(stock)
        assert fast._inc == stock._inc
        if compaction:
            members = list(stock)
            assert live_entries(fast, pool + members) == live_entries(stock, pool + members)
        else:
            # Same algorithms: the very same heap layout, entry for entry.
            assert [(k, i, r()) for k, i, r in fast._heap] == [
                (k, i, r()) for k, i, r in stock._heap
            ]
            assert fast._sorted == stock._sorted


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=exact_layout_ops)
def test_differential_exact_layout(ops):
    """Without compaction the heap array is the stock heap list, entry for entry, so
    even peekright / popright ("one of the largest") agree."""
    run_differential(ops, compaction=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=compaction_ops)
def test_differential_with_compaction(ops):
    """With compaction as frequent as possible every result is still the stock one."""
    run_differential(ops, compaction=True)


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(priorities, min_size=1, max_size=40))
def test_order_is_python_tuple_order(keys):
    """C comparisons agree with Python's (exact int/float, shorter prefix first)."""
    fast = make_fast()
    tasks = [Task(f"t{i}", k) for i, k in enumerate(keys)]
    for t in tasks:
        fast.add(t)
    expected = sorted(tasks, key=lambda t: (t.priority, int(t.name[1:])))
    assert list(fast.sorted()) == expected
    assert [fast.pop() for _ in tasks] == expected


# --------------------------------------------------------------------------------
# Quirks, on both implementations
# --------------------------------------------------------------------------------


def test_add_twice_does_not_reread_priority(heap_impl):
    h = heap_impl()
    a, b = Task("a", (2,)), Task("b", (1,))
    h.add(a)
    h.add(b)
    a.priority = (0,)
    h.add(a)  # already a member: no-op
    assert len(h) == 2
    assert len(h._heap) == 2
    assert h.pop() is b
    assert h.pop() is a


def test_discard_is_lazy_and_empty_clears_heap(heap_impl):
    h = heap_impl()
    a, b, c = Task("a", (1,)), Task("b", (2,)), Task("c", (3,))
    for t in (a, b, c):
        h.add(t)
    h.discard(a)
    assert a not in h and len(h) == 2
    assert len(h._heap) == 3  # stale entry still there
    assert h.peek() is b  # skips (and drops) the stale top
    assert len(h._heap) == 2
    h.discard(a)  # not a member: no-op
    h.discard(c)
    h.discard(b)
    assert not h
    assert h._heap == []  # emptied with the set


def test_remove(heap_impl):
    h = heap_impl()
    a = Task("a", (1,))
    h.add(a)
    with pytest.raises(KeyError):
        h.remove(Task("x", (0,)))
    h.remove(a)
    assert a not in h
    with pytest.raises(KeyError):
        h.remove(a)


def test_pop_skips_stale(heap_impl):
    h = heap_impl()
    ts = [Task(f"t{i}", (i,)) for i in range(6)]
    for t in ts:
        h.add(t)
    for t in ts[::2]:
        h.discard(t)
    assert [h.pop() for _ in range(3)] == ts[1::2]
    assert not h


@pytest.mark.parametrize("new_better", [True, False])
def test_readd_surfaces_at_better_key(heap_impl, new_better):
    h = heap_impl()
    x, y = Task("x", (5,)), Task("y", (3,))
    h.add(x)
    h.add(y)
    h.discard(x)
    x.priority = (1,) if new_better else (9,)
    h.add(x)
    assert len(h._heap) == 3  # two entries for x
    # old key 5, new key 1 or 9: x surfaces at min(old, new)
    expected = ["x", "y"] if new_better else ["y", "x"]
    assert names(h.sorted()) == expected
    assert names(h.peekn(5)) == expected
    assert names([h.pop(), h.pop()]) == expected
    assert not h


def test_stale_entries_come_back_on_readd(heap_impl):
    """Entries are live iff their element is a member: after x was popped at its
    better key, re-adding x revives its other, older entry."""
    h = heap_impl()
    x, y, z = Task("x", (5,)), Task("y", (6,)), Task("z", (7,))
    for t in (x, y, z):
        h.add(t)
    h.discard(x)
    x.priority = (1,)
    h.add(x)  # entries (5, 0) and (1, 3) for x
    assert h.pop() is x  # at (1,)
    x.priority = (9,)
    h.add(x)  # entries (5, 0) and (9, 4): x comes back at (5,), not (9,)
    assert names([h.pop() for _ in range(3)]) == ["x", "y", "z"]


def test_fifo_ties(heap_impl):
    h = heap_impl()
    ts = [Task(f"t{i}", (1, 2.0 if i % 2 else 2)) for i in range(8)]  # 2 == 2.0
    for t in ts:
        h.add(t)
    assert list(h.sorted()) == ts
    assert [h.pop() for _ in ts] == ts


def test_fifo_counter_survives_clear(heap_impl):
    h = heap_impl()
    a, b = Task("a", (1,)), Task("b", (1,))
    h.add(a)
    h.clear()
    assert not h and h._heap == []
    h.add(b)
    h.add(a)
    assert h._inc == 3  # clear() does not reset the counter
    assert [h.pop(), h.pop()] == [b, a]


def test_tuple_order(heap_impl):
    keys = [
        (1, 2),
        (1,),
        (1, 2, 3),
        (0.5, 9),
        (2**63, 0),
        (2**63 - 1, 0),
        (2.0**63, -1),
        (-math.inf,),
        (2**53 + 1,),
        (2.0**53,),
        (1, 2, -0.0),
        (1, 2, 0),
        (-(2**100),),
        (1e300, 1),
    ]
    h = heap_impl()
    ts = [Task(str(i), k) for i, k in enumerate(keys)]
    for t in ts:
        h.add(t)
    expected = sorted(ts, key=lambda t: (t.priority, int(t.name)))
    assert list(h.sorted()) == expected
    assert [h.pop() for _ in ts] == expected


def test_empty_raises_keyerror(heap_impl):
    h = heap_impl()
    for method in (h.pop, h.peek, h.popright, h.peekright):
        with pytest.raises(KeyError):
            method()
    a = Task("a", (1,))
    h.add(a)
    h.discard(a)
    for method in (h.pop, h.peek, h.popright, h.peekright):
        with pytest.raises(KeyError):
            method()


def test_peekn(heap_impl):
    h = heap_impl()
    ts = [Task(f"t{i}", (i,)) for i in range(5)]
    it = h.peekn(3)
    assert isinstance(it, collections.abc.Iterator)
    for t in ts:
        h.add(t)
    assert list(it) == ts[:3]  # lazy: runs when iterated
    assert list(h.peekn(0)) == []
    assert list(h.peekn(-1)) == []
    assert list(h.peekn(1)) == ts[:1]
    assert list(h.peekn(10)) == ts
    h.discard(ts[0])
    assert list(h.peekn(1)) == ts[1:2]
    assert list(h.peekn(2)) == ts[1:3]
    assert len(h) == 4  # peeking does not remove anything


def test_sorted_dedups_and_keeps_elements(heap_impl):
    h = heap_impl()
    ts = [Task(f"t{i}", (i,)) for i in range(4)]
    for t in ts:
        h.add(t)
    h.discard(ts[3])
    ts[3].priority = (-1,)
    h.add(ts[3])
    it = h.sorted()
    assert next(it) is ts[3]
    assert list(it) == ts[:3]
    assert len(h) == 4
    assert h._sorted


def test_len_bool_contains_iter_repr(heap_impl):
    h = heap_impl()
    assert not h and len(h) == 0
    assert repr(h) == f"<{type(h).__name__}: 0 items>"
    ts = [Task(f"t{i}", (i,)) for i in range(3)]
    for t in ts:
        h.add(t)
    assert h and len(h) == 3
    assert repr(h) == f"<{type(h).__name__}: 3 items>"
    assert ts[0] in h and Task("x", (0,)) not in h
    assert set(h) == set(ts)
    assert list(h) == list(h._data)
    with pytest.raises(TypeError):
        [] in h  # unhashable, as for a set


def test_value_equal_elements(heap_impl):
    h = heap_impl()
    x = ValueTask("x", (2,))
    y = ValueTask("y", (1,))
    h.add(x)
    h.add(y)
    h.add(ValueTask("x", (0,)))  # equal to x: ignored
    assert len(h) == 2
    assert h.pop() is y
    assert h.pop() is x


def test_popright_peekright(heap_impl):
    rng = random.Random(42)
    h = heap_impl()
    keep = []
    for i in range(200):
        t = Task(f"t{i}", (rng.random(),))
        keep.append(t)
        h.add(t)
        if rng.random() > 0.7:
            h.remove(t)
    smallest = h.peek()
    peek = True
    while len(h) > 1:
        peek = not peek
        if peek:
            right = h.peekright()
            assert h.popright() is right
        else:
            right = h.popright()
        assert right.priority >= smallest.priority
        entries = [(k, i) for k, i, _ in h._heap]
        for pos in range(1, len(entries)):
            assert entries[(pos - 1) // 2] < entries[pos]  # still a heap
    assert h.peekright() is smallest
    assert h.popright() is smallest
    assert not h


def test_pickle(heap_impl):
    h = heap_impl()
    rng = random.Random(0)
    ts = [Task(f"t{i}", (rng.randint(0, 20), rng.random())) for i in range(100)]
    for t in ts:
        h.add(t)
        if rng.random() > 0.7:
            h.discard(t)
    h2 = pickle.loads(pickle.dumps(h))
    assert type(h2) is type(h)
    assert h2.key.__reduce__() == h.key.__reduce__()
    assert h2._inc == h._inc
    assert len(h2) == len(h)
    assert len(h2._heap) == len(h2)  # stale entries are not pickled
    assert len(h2._heap) < len(h._heap)
    while h:
        a, b = h.pop(), h2.pop()
        assert (a.name, a.priority) == (b.name, b.priority)
    assert not h2

    h3 = copy.copy(heap_impl())
    assert not h3 and h3._sorted


def test_pickle_keeps_duplicate_entries(heap_impl):
    h = heap_impl()
    x, y, z = Task("x", (5,)), Task("y", (3,)), Task("z", (20,))
    for t in (x, y, z):
        h.add(t)
    h.discard(x)
    x.priority = (9,)
    h.add(x)
    h2 = pickle.loads(pickle.dumps(h))
    assert len(h2._heap) == 4
    assert names(h2.sorted()) == ["y", "x", "z"]
    popped = [h2.pop(), h2.pop()]
    assert names(popped) == ["y", "x"]  # x at (5,)
    x2 = popped[1]  # (the stock heap only holds it weakly)
    assert len(h2._heap) == 2  # x's entry at (9,) is stale, z's is live
    x2.priority = (30,)
    h2.add(x2)
    # the (9,) entry of x is live again and beats z; the new (30,) one is shadowed
    assert names(h2.sorted()) == ["x", "z"]
    assert names([h2.pop(), h2.pop()]) == ["x", "z"]


def test_failing_key_and_weakref(heap_impl):
    h = heap_impl()
    a = Task("a", (1,))
    h.add(a)

    bad = Task("bad", (0,))
    del bad.priority
    with pytest.raises(AttributeError):
        h.add(bad)
    with pytest.raises(TypeError, match="weak reference"):
        h.add(NoWeakref((0,)))
    assert len(h) == 1 and set(h) == {a}
    assert len(h._heap) == 1

    # an unsortable key: the entry stays in the heap, the element is not added and
    # the counter does not advance
    with pytest.raises(TypeError):
        h.add(Task("unsortable", None))
    assert len(h) == 1 and set(h) == {a}
    assert h._inc == 1
    assert len(h._heap) == 2


def test_other_key(heap_impl):
    """A key other than attrgetter("priority") is called as is."""
    calls = []

    def key(t):
        calls.append(t.name)
        return -t.priority[0]

    h = heap_impl(key=key)
    ts = [Task(f"t{i}", (i,)) for i in range(4)]
    for t in ts:
        h.add(t)
    h.add(ts[0])
    assert calls == ["t0", "t1", "t2", "t3"]
    assert h.key is key
    assert [h.pop() for _ in ts] == ts[::-1]


def test_mutableset_api(heap_impl):
    h = heap_impl()
    assert isinstance(h, collections.abc.MutableSet)
    with pytest.raises(TypeError):
        hash(h)
    a, b, c = (Task(n, (i,)) for i, n in enumerate("abc"))
    h |= [c, a]
    assert h.pop() is a
    h ^= {a, c}
    assert set(h) == {a}
    h -= [a]
    assert not h
    h |= [a, b]
    assert h == {a, b} and h != {a}
    assert h <= {a, b, c} and h < {a, b, c} and not h > {a, b}
    assert h >= {a} and h > {a} and not h < {a, b}
    assert h.isdisjoint([c]) and not h.isdisjoint([b])
    for op in (operator.and_, operator.or_, operator.sub, operator.xor):
        with pytest.raises(TypeError):  # _from_iterable cannot build a HeapSet
            op(h, {a})
    with pytest.raises(TypeError):
        h &= {a}


def test_generic_alias(heap_impl):
    cls = type(heap_impl())
    factory = partial(cls[Task], key=PRIORITY)
    h = factory()
    assert type(h) is cls
    h.add(Task("a", (1,)))
    assert len(h) == 1


# --------------------------------------------------------------------------------
# fastworker only
# --------------------------------------------------------------------------------


def test_default_key_and_assumptions():
    h = PriorityHeapSet()
    assert h.key(Task("a", (1,))) == (1,)
    h.add(Task("a", (1,)))
    h.key = lambda t: t.priority  # another key callable: called from now on
    h.add(Task("b", (0,)))
    assert names(h.sorted()) == ["b", "a"]


def test_slow_keys_match_python():
    """Keys outside the C fast path: big ints, NaN-free floats over 6 items, bools,
    int subclasses, strings; a NaN is never compared in C."""

    class MyInt(int):
        pass

    keys = [
        (1, 2, 3, 4, 5, 6, 7),
        (1, 2, 3, 4, 5, 6),
        (True, 0),
        (1, 0),
        (MyInt(1), -1),
        (2**64,),
        (2**64, 0.5),
        (1, 2, 3, 4, 5, 6, 6.5),
    ]
    h = make_fast()
    ts = [Task(str(i), k) for i, k in enumerate(keys)]
    for t in ts:
        h.add(t)
    expected = sorted(ts, key=lambda t: (t.priority, int(t.name)))
    assert [h.pop() for _ in ts] == expected

    s = make_fast(key=operator.attrgetter("name"))
    for n in ["b", "a", "c"]:
        s.add(Task(n, None))
    assert names([s.pop() for _ in range(3)]) == ["a", "b", "c"]

    nan = float("nan")
    n = make_fast()
    n.add(Task("x", (nan,)))
    n.add(Task("y", (1,)))
    assert len(n) == 2 and {n.pop().name, n.pop().name} == {"x", "y"}


def _compaction_scenario(h, rng):
    """Waves of adds, discards (~80%) and pops; most discarded tasks are dropped by
    the caller's code, a few are kept and re-added with another priority at the end.
    Returns the names popped along the way."""
    popped = []
    revive = []
    for wave in range(10):
        batch = [
            Task(f"w{wave}.{i}", (rng.randint(0, 50), rng.randint(0, 3)))
            for i in range(50)
        ]
        for t in batch:
            h.add(t)
        for t in batch:
            if rng.random() < 0.8:
                h.discard(t)
                if rng.random() < 0.1:
                    revive.append(t)
        popped += [h.pop().name for _ in range(3)]
    for t in revive:
        t.priority = (rng.randint(0, 50), rng.randint(0, 3))
        h.add(t)
    return popped


def test_compaction_preserves_order():
    """The same operations with and without compaction, against the stock heap."""
    for seed in range(5):
        heaps = [make_stock(), make_fast(compaction=False), make_fast()]
        popped = [_compaction_scenario(h, random.Random(seed)) for h in heaps]
        assert popped[1] == popped[2] == popped[0]
        stock, uncompacted, compacted = heaps
        assert len(compacted._heap) < len(uncompacted._heap) == len(stock._heap)
        order = names(stock.sorted())
        assert names(uncompacted.sorted()) == order
        assert names(compacted.sorted()) == order
        assert names(compacted.peekn(7)) == order[:7]
        assert [names([h.pop() for _ in order]) for h in heaps] == [order] * 3
        assert not any(heaps)


def test_compaction_keeps_revivable_entries():
    """A discarded element that is still referenced elsewhere keeps its entry
    (weakly): re-added later with a worse key, it surfaces at its old key, as in
    the stock heap, even though compactions ran in between."""
    for h in (make_stock(), make_fast()):
        x = Task("x", (1,))
        h.add(x)
        fillers = [Task(f"f{i}", (10 + i,)) for i in range(200)]
        for t in fillers:
            h.add(t)
        h.discard(x)
        for t in fillers[:150]:
            h.discard(t)
        del t
        fillers = fillers[150:]  # the discarded fillers die
        for i in range(300):  # more entries: compactions drop the dead ones
            t = Task(f"g{i}", (1000 + i,))
            h.add(t)
            h.discard(t)
        if isinstance(h, PriorityHeapSet):
            assert len(h._heap) < 200
        x.priority = (2000,)
        h.add(x)
        assert h.peek() is x
        assert names(h.sorted())[:2] == ["x", "f150"]
        assert h.pop() is x
        assert h.pop() is fillers[0]


def test_compaction_frees_discarded_elements():
    h = make_fast()
    ts = [Task(f"t{i}", (i,)) for i in range(100)]
    for t in ts:
        h.add(t)
    refs = [weakref.ref(t) for t in ts]
    for t in ts[:60]:
        h.discard(t)
    # A compaction ran during the discards, once there were more than twice as many
    # entries as members (100 > 2 * 49), while ``ts`` still held every task: the
    # entries of the 51 tasks discarded so far went weak. The 9 discarded since are
    # held until the next compaction.
    del t
    ts = ts[60:]
    gc.collect()
    assert [r() is None for r in refs[:60]] == [True] * 51 + [False] * 9
    assert len(h._heap) == 100  # dead entries are dropped by the next compaction
    h._force_compact()
    gc.collect()
    assert all(r() is None for r in refs[:60])
    assert len(h._heap) == 40
    assert [h.pop() for _ in range(40)] == ts


def test_compaction_bounds_stale_entries():
    """Churn through a heap of 30 members: compactions keep the array, and so the
    number of discarded elements it keeps alive, bounded."""
    h = make_fast()
    keep = [Task(f"k{i}", (i,)) for i in range(30)]
    for t in keep:
        h.add(t)
    refs = []
    for i in range(1000):
        t = Task(f"d{i}", (-i,))
        refs.append(weakref.ref(t))
        h.add(t)
        h.discard(t)
        assert len(h._heap) <= 64
    del t
    gc.collect()
    assert sum(r() is not None for r in refs) <= 64 - 30
    assert [h.pop() for _ in keep] == keep


def test_without_compaction_discarded_elements_stay_alive():
    """The price of strong references: until compaction (or until the stale entry
    reaches the top of the heap) a discarded element is kept alive."""
    h = make_fast(compaction=False)
    t = Task("t", (5,))
    h.add(t)
    h.add(Task("u", (1,)))
    ref = weakref.ref(t)
    h.discard(t)
    del t
    gc.collect()
    assert ref() is not None
    h._force_compact()
    assert ref() is None
    assert len(h._heap) == 1


def test_compaction_with_all_discarded_elements_alive():
    """When compaction cannot drop anything (every discarded element is referenced
    elsewhere) the heap stays correct, and those elements are only held weakly."""
    h = make_fast()
    keep = []
    for i in range(2000):
        t = Task(f"t{i}", (i % 7, i))
        keep.append(t)
        h.add(t)
        if i % 4:
            h.discard(t)
    assert len(h._heap) == 2000
    members = [t for i, t in enumerate(keep) if i % 4 == 0]
    expected = sorted(members, key=lambda t: t.priority)
    assert list(h.sorted()) == expected
    for t in keep[1::4]:
        h.add(t)  # revive some: their old entries are live again
    assert [h.pop() for _ in range(len(h))] == sorted(
        members + keep[1::4], key=lambda t: t.priority
    )


def test_gc_collects_cycles_through_heap():
    h = make_fast()
    t = Task("t", (1,))
    h.add(t)
    holder = Task("holder", (0,))
    holder.name = h  # t <- heap <- holder.name ... and heap -> t
    t.name = holder
    refs = weakref.ref(t), weakref.ref(holder)
    del h, t, holder
    gc.collect()
    assert all(r() is None for r in refs)


def test_reentrant_mutation_is_refused():
    """A key comparison that mutates the heap gets a RuntimeError, not a crash."""
    h = make_fast()

    class EvilKey:
        def __init__(self, v):
            self.v = v

        def __eq__(self, other):
            return self.v == other.v

        def __lt__(self, other):
            h.add(Task("intruder", EvilKey(-1)))
            return self.v < other.v

    h.add(Task("a", EvilKey(1)))
    with pytest.raises(RuntimeError, match="modified while"):
        h.add(Task("b", EvilKey(0)))
    assert len(h) == 1


def test_c_api_is_declared():
    """The .pxd exposes the C methods a compiled WorkerState cimports."""
    import pathlib

    import fastworker.heap

    pxd = pathlib.Path(fastworker.heap.__file__).with_name("heap.pxd")
    if not pxd.exists():
        pytest.skip("installed without its .pxd")
    text = pxd.read_text()
    for decl in (
        "cdef int push(self, object ts) except -1",
        "cdef object pop_c(self)",
        "cdef object peek_c(self)",
        "cdef bint contains_c(self, object ts) except -1",
        "cdef Py_ssize_t size(self) noexcept",
        "cdef int discard_c(self, object ts) except -1",
        "cdef int clear_c(self) except -1",
    ):
        assert decl in text
