"""The trackers' threads on their own, without training: the training side never waits (a full
queue drops points and the end reports how many), and a tracker that raises is switched off
with one warning while the others go on."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from worker import tracking
from worker.tracking import RunInfo, Tracker, Tracking

RUN = RunInfo(job_id="job_x", run_name="x", params={}, init_r=4, resumed_step=None, previous={})


class Recording(Tracker):
    """Records every point; ``gate`` holds its thread until the test opens it."""

    def __init__(self, name: str, gate: threading.Event | None = None, fail: bool = False):
        self.name = name
        self.gate = gate
        self.fail = fail
        self.steps: list[int] = []
        self.closed: str | None = None

    def open(self, run: RunInfo) -> dict[str, Any]:
        if self.gate is not None:
            self.gate.wait()
        return {self.name: {"run_id": "r1"}}

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.fail:
            raise ConnectionError("http://user:secret@tracker.example refused")
        self.steps.append(step)

    def close(self, status: str) -> dict[str, Any] | None:
        self.closed = status
        return None


def step(number: int) -> Any:
    return SimpleNamespace(
        step=number,
        loss_value=1.0 / number,
        learning_rate=1e-3,
        budget=10,
        grad_norm_value=0.5,
        token_accuracy_value=None,
        ranks=None,
    )


def test_a_full_queue_drops_points_and_the_end_says_how_many(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tracking, "QUEUE_SIZE", 3)
    gate = threading.Event()
    slow, fast = Recording("slow", gate), Recording("fast")
    hub = Tracking([slow, fast], RUN)
    for number in range(1, 11):
        hub.step(step(number))  # returns at once although "slow" has not even opened its run
    gate.set()
    hub.close("succeeded", timeout_s=30)
    values, events = hub.take()
    assert slow.steps == [1, 2, 3] and slow.closed == "succeeded"
    assert fast.closed == "succeeded" and len(fast.steps) >= 3
    messages = [data["message"] for kind, data in events if kind == "warning"]
    assert messages[0] == "slow: 7 point(s) dropped: the tracker fell behind (more than 3 waiting)"
    assert values["tracking"] == {"slow": {"run_id": "r1"}, "fast": {"run_id": "r1"}}


def test_a_failing_tracker_is_one_warning_without_its_secret() -> None:
    broken, working = Recording("broken", fail=True), Recording("working")
    hub = Tracking([broken, working], RUN)
    for number in range(1, 6):
        hub.step(step(number))
    hub.close("succeeded", timeout_s=30)
    _, events = hub.take()
    assert working.steps == [1, 2, 3, 4, 5]
    assert broken.closed is None  # switched off at its first error
    (warning,) = [data["message"] for kind, data in events if kind == "warning"]
    assert warning.startswith("broken: ConnectionError: http://tracker.example refused")
    assert "secret" not in warning
