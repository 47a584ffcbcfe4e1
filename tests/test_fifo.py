"""proxy/fifo.py: the size-bounded map under the Redis near copy and the hit lane."""

from __future__ import annotations

from proxy.fifo import BoundedFifo


def test_the_oldest_leave_first_when_the_count_is_reached() -> None:
    dropped: list[str] = []
    fifo: BoundedFifo[str, int] = BoundedFifo(max_entries=2, on_drop=dropped.append)
    for n, key in enumerate("abc"):
        fifo.put(key, n)
    assert (fifo.get("a"), fifo.get("b"), fifo.get("c")) == (None, 1, 2)
    assert dropped == ["a"] and len(fifo) == 2


def test_bytes_bound_the_entries_and_a_put_again_is_the_newest() -> None:
    fifo: BoundedFifo[str, str] = BoundedFifo(max_bytes=10)
    fifo.put("a", "A", 4)
    fifo.put("b", "B", 4)
    fifo.put("a", "A2", 4)  # now the newest: "b" is the oldest
    fifo.put("c", "C", 4)
    assert "b" not in fifo and fifo.get("a") == "A2" and fifo.get("c") == "C"
    assert fifo.size == 8


def test_an_entry_larger_than_the_bound_is_not_kept_and_replaces_nothing_stale() -> None:
    fifo: BoundedFifo[str, str] = BoundedFifo(max_bytes=10)
    fifo.put("a", "small", 4)
    fifo.put("a", "huge", 11)
    assert "a" not in fifo and fifo.size == 0


def test_discard_and_clear_keep_the_byte_count() -> None:
    dropped: list[str] = []
    fifo: BoundedFifo[str, str] = BoundedFifo(max_bytes=100, on_drop=dropped.append)
    fifo.put("a", "A", 30)
    fifo.put("b", "B", 20)
    fifo.discard("a")
    fifo.discard("missing")
    assert fifo.size == 20 and dropped == ["a"]
    fifo.clear()
    assert fifo.size == 0 and len(fifo) == 0 and dropped == ["a"], "clear is the owner's, without on_drop"
    fifo.put("c", "C", 100)
    assert fifo.get("c") == "C", "clear leaves get reading the live entries"
