"""`llava_jax.train.feed.Feed`: read-ahead, the agreed end of the data, and the checkpointed position.

Several processes agreeing for real: tests/train/test_loop_multiprocess.py.
"""

import collections

import numpy as np
import pytest

from llava_jax.train.feed import Feed


class _Loader:
    """`n` batches; the position is the number taken, each batch counts 2 samples and 1 skip."""

    def __init__(self, n: int):
        self.n, self.i = n, 0
        self.reads = 0
        self.recent_skips = collections.deque()

    def __iter__(self):
        return self

    def __next__(self):
        self.reads += 1
        if self.i >= self.n:
            raise StopIteration
        self.i += 1
        self.recent_skips.append((f"s{self.i}", "too_long"))
        return {"x": np.full((2,), self.i)}

    def get_state(self):
        return {"i": self.i, "skipped": {"too_long": self.i}, "samples": 2 * self.i}

    def set_state(self, state):
        self.i = state["i"]

    def close(self):
        pass


@pytest.mark.parametrize("agree", [False, True])  # True: the flags go through the all-device minimum
def test_batches_in_order_then_none_and_the_position_is_before_the_first_not_taken(agree):
    loader = _Loader(3)
    feed = Feed(loader, lookahead=2, agree=agree)
    feed.fill(100)
    assert loader.reads == 2 and feed.pending() == 2
    assert feed.get_state()["i"] == 0  # nothing taken yet
    assert int(feed.next()["x"][0]) == 1
    assert feed.get_state()["i"] == 1 and feed.samples == 2 and feed.skipped == {"too_long": 1}
    feed.fill(100)
    assert int(feed.next()["x"][0]) == 2
    feed.fill(100)
    assert int(feed.next()["x"][0]) == 3
    feed.fill(100)
    assert feed.next() is None and feed.ended and feed.next() is None
    assert feed.get_state()["i"] == 3  # a resume from here reads nothing again


def test_fill_never_reads_past_the_steps_left():
    loader = _Loader(10)
    feed = Feed(loader, lookahead=2, agree=False)
    feed.fill(1)
    assert loader.reads == 1
    feed.fill(0)
    assert loader.reads == 1


def test_set_state_drops_what_was_read_ahead():
    loader = _Loader(10)
    feed = Feed(loader, lookahead=2, agree=False)
    feed.fill(10)
    feed.next()
    state = feed.get_state()
    feed.fill(10)
    feed.next()
    feed.set_state(state)
    assert feed.pending() == 0
    feed.fill(10)
    assert int(feed.next()["x"][0]) == 2


def test_lookahead_must_be_positive():
    with pytest.raises(ValueError, match="lookahead"):
        Feed(_Loader(1), lookahead=0)
