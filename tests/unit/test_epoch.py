"""runtime.epoch.EpochTicker: ticks while a guest call is in flight, parks (no wakeups) when none is.

A counting stand-in for the Engine: the ticker only ever calls ``increment_epoch`` on it. The windows are many
ticks wide (10 ms ticks, 200 ms windows), so the checks hold on a loaded machine.
"""

from __future__ import annotations

import os
import threading
import time

from runtime.epoch import EpochTicker

WINDOW_S = 0.2


class CountingEngine:
    def __init__(self) -> None:
        self.ticks = 0

    def increment_epoch(self) -> None:
        self.ticks += 1


def ticks_during(engine: CountingEngine, seconds: float = WINDOW_S) -> int:
    before = engine.ticks
    time.sleep(seconds)
    return engine.ticks - before


def test_ticks_while_a_call_runs_and_parks_when_none_does() -> None:
    engine = CountingEngine()
    ticker = EpochTicker(engine)  # type: ignore[arg-type]
    with ticker.running():
        assert ticks_during(engine) >= 3
    time.sleep(3 * ticker.interval)  # the tick that was under way ends
    assert ticks_during(engine) == 0
    with ticker.running():  # wakes up again for the next call
        assert ticks_during(engine) >= 3


def test_overlapping_calls_keep_it_awake_until_the_last_one_ends() -> None:
    engine = CountingEngine()
    ticker = EpochTicker(engine)  # type: ignore[arg-type]
    ticker.enter()
    ticker.enter()
    ticker.leave()
    assert ticker.in_flight == 1
    assert ticks_during(engine) >= 3
    ticker.leave()
    time.sleep(3 * ticker.interval)
    assert ticks_during(engine) == 0


def test_calls_that_come_and_go_keep_the_tick_period() -> None:
    """One request at a time takes the count from 0 to 1 at every request: that must not wake the thread in the
    middle of a tick (each wakeup was an early tick and a thread switch per request)."""
    engine = CountingEngine()
    ticker = EpochTicker(engine)  # type: ignore[arg-type]
    with ticker.running():
        time.sleep(2 * ticker.interval)  # the thread is up and ticking
    calls = 0
    before = engine.ticks
    deadline = time.monotonic() + WINDOW_S
    while time.monotonic() < deadline:
        with ticker.running():
            time.sleep(0.0002)
        calls += 1
    ticks = engine.ticks - before
    assert calls > 100  # hundreds of 0 -> 1 transitions in the window
    assert 3 <= ticks <= 2 * WINDOW_S / ticker.interval + 5


def test_calls_from_several_threads_share_one_thread() -> None:
    engine = CountingEngine()
    ticker = EpochTicker(engine)  # type: ignore[arg-type]
    barrier = threading.Barrier(4)

    def call() -> None:
        with ticker.running():
            barrier.wait()
            time.sleep(WINDOW_S)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # One ticker thread: about WINDOW_S / interval ticks, not four times that.
    assert 3 <= engine.ticks <= 2 * WINDOW_S / ticker.interval + 5
    assert ticker.in_flight == 0


def test_one_shared_ticker_per_engine() -> None:
    engine = CountingEngine()
    assert EpochTicker.shared(engine) is EpochTicker.shared(engine)  # type: ignore[arg-type]
    assert EpochTicker.shared(CountingEngine()) is not EpochTicker.shared(engine)  # type: ignore[arg-type]
    ticker = EpochTicker.shared(engine)  # type: ignore[arg-type]
    assert ticker.ticks_for(0.001) == 2 and ticker.ticks_for(1.0) == 101


def test_a_forked_child_gets_a_thread_of_its_own_even_if_the_parent_was_ticking() -> None:
    engine = CountingEngine()
    ticker = EpochTicker(engine)  # type: ignore[arg-type]
    ticker.enter()  # the parent's thread is ticking (and taking the condition's lock) when we fork
    parent_thread = ticker._thread
    pid = os.fork()
    if pid == 0:
        ok = ticker.in_flight == 1  # inherited count, of a call that does not exist here
        with ticker.running():
            ok = ok and ticker._thread is not parent_thread and ticks_during(engine) >= 3
        os._exit(0 if ok and ticker.in_flight == 0 else 1)
    _, status = os.waitpid(pid, 0)
    ticker.leave()
    assert os.WEXITSTATUS(status) == 0
    assert ticker._thread is parent_thread
