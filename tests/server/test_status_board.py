"""What the dashboard shows of a model, in process: answers per second at any
rate, latency percentiles of the last seconds, and a model that has gone quiet
and been unloaded leaves the board (and takes nothing with it)."""

from __future__ import annotations

import tracemalloc

from webapp.server.status_board import LATENCY_SAMPLES, WINDOW_SECONDS, StatusBoard


class Clock:
    def __init__(self, now: float = 10_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Registry:
    """The registry's two questions the board asks: what is loaded, and its state."""

    def __init__(self):
        self.loaded: dict = {}

    def loaded_models(self) -> dict:
        return dict(self.loaded)

    def state_of(self, name: str) -> dict:
        return {"state": "loaded" if name in self.loaded else "in store", "loaded": name in self.loaded}


class Metrics:
    connected = 0


def board_with(clock: Clock) -> StatusBoard:
    return StatusBoard(Registry(), None, Metrics(), "test:1", clock=clock)


def by_name(board: StatusBoard) -> dict:
    return {model["name"]: model for model in board.snapshot()["models"]}


def test_answers_per_second_are_counted_at_any_rate():
    clock = Clock()
    board = board_with(clock)
    # 2,000 answers a second for 5 s: far more than any count of timestamps kept per model.
    for _ in range(int(WINDOW_SECONDS * 1000)):
        for _ in range(2):
            board.answered("fast", {"total_ms": 1.0})
        clock.now += 0.001
    for _ in range(10):  # and a slow one beside it: 2 a second
        board.answered("slow", {"total_ms": 40.0})
    models = by_name(board)
    assert abs(models["fast"]["fps"] - 2000) <= 2000 * 0.02, models["fast"]
    assert models["slow"]["fps"] == 2.0, models["slow"]
    assert models["fast"]["latency_ms"] == {"p50": 1.0, "p95": 1.0, "count": LATENCY_SAMPLES}
    assert models["slow"]["latency_ms"]["p50"] == 40.0


def test_a_quiet_unloaded_model_leaves_the_board_and_its_memory_with_it():
    clock = Clock()
    board = board_with(clock)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(200):  # models that each answered a burst, then went quiet
            for _ in range(500):
                board.answered(f"model-{index}", {"total_ms": 3.0})
        clock.now += WINDOW_SECONDS + 1
        models = by_name(board)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert models == {}, sorted(models)[:5]
    assert kept < 200_000, f"{kept} bytes kept for 200 quiet models"


def test_a_loaded_model_stays_on_the_board_with_no_recent_answers():
    clock = Clock()
    board = board_with(clock)
    board._registry.loaded["kept"] = None  # loaded, never answered
    board.answered("kept", {"total_ms": 2.0})
    clock.now += WINDOW_SECONDS * 3
    models = by_name(board)
    assert models["kept"]["fps"] == 0.0 and models["kept"]["latency_ms"] is None
