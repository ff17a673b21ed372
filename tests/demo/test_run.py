"""The demo's step runner (`llava_jax.demo.run`): which steps run again, what their times add up to, devices.

Fake actions that write their outputs stand in for the stages; the one real
demo run of the suite is in test_demo.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types

import pytest

from llava_jax.demo import run as demo_run

NAMES = ("data", "stage", "export")


class Clock:
    """`time.time` for the runner: every call advances 10 s, so a step takes 10 s."""

    def __init__(self):
        self.now = 0.0

    def time(self):
        self.now += 10.0
        return self.now


class Actions:
    """One fake action per step: (over)writes the step's output (a directory for `stage`), logs the call."""

    def __init__(self, root):
        self.root = root
        self.ran: list[str] = []
        self.found: list[str] = []  # steps whose action found an output in place
        self.fail: set[str] = set()

    def output(self, name) -> str:
        return os.path.join(self.root, name if name == "stage" else f"{name}.json")

    def __call__(self, name):
        def action():
            out = self.output(name)
            self.ran.append(name)
            if os.path.exists(out):
                self.found.append(name)
            if name in self.fail:
                raise RuntimeError(f"{name} interrupted")
            if name == "stage":
                shutil.rmtree(out, ignore_errors=True)
                os.makedirs(out)
                open(os.path.join(out, "weights"), "w").close()
            else:
                open(out, "w").close()

        return action


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(demo_run, "time", types.SimpleNamespace(time=c.time))
    return c


def _demo_run(actions, timings_path, *, done=None) -> list[bool]:
    """One pass over the steps with a new runner (as a new `llava-jax demo` process would); which ran."""
    steps = demo_run._Steps(demo_run.Timings(timings_path))
    done = done or {}
    return [steps(n, actions.output(n), actions(n), done=done.get(n)) for n in NAMES]


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_a_step_that_runs_again_rebuilds_every_later_step(tmp_path, clock):
    actions, timings = Actions(str(tmp_path)), str(tmp_path / "timings.json")
    assert _demo_run(actions, timings) == [True, True, True]
    assert _demo_run(actions, timings) == [False, False, False]  # every output exists: all reused
    assert actions.ran == list(NAMES)
    # The data is out of date (an older generator): it and everything after it run again. Its own action
    # rewrites it; the later outputs are stale and removed before their actions run.
    actions.ran.clear()
    assert _demo_run(actions, timings, done={"data": False}) == [True, True, True]
    assert actions.ran == list(NAMES) and actions.found == ["data"]
    # A missing middle output: the steps before it are reused, the ones after it rebuilt.
    actions.ran.clear()
    shutil.rmtree(actions.output("stage"))
    assert _demo_run(actions, timings) == [False, True, True]
    assert actions.ran == ["stage", "export"]


def test_timings_keep_reused_steps_and_add_up_interrupted_runs(tmp_path, clock):
    actions, path = Actions(str(tmp_path)), str(tmp_path / "timings.json")
    actions.fail = {"stage"}
    with pytest.raises(RuntimeError, match="stage interrupted"):
        _demo_run(actions, path)
    assert _load(path) == {"seconds": {"data": 10.0, "stage": 10.0}, "unfinished": ["stage"]}
    # The rerun reuses the data and finishes the stage: its two runs add up; the reused data keeps its time.
    actions.fail = set()
    assert _demo_run(actions, path) == [False, True, True]
    assert _load(path) == {"seconds": {"data": 10.0, "stage": 20.0, "export": 10.0}, "unfinished": []}
    timings = demo_run.Timings(path)
    assert timings.total_minutes == pytest.approx(40.0 / 60)
    # A finished step that runs again replaces its time instead of adding to it.
    assert _demo_run(actions, path, done={"stage": False}) == [False, True, True]
    assert _load(path)["seconds"] == {"data": 10.0, "stage": 10.0, "export": 10.0}


def test_reused_steps_are_reported_as_reused(tmp_path, clock):
    actions, path = Actions(str(tmp_path)), str(tmp_path / "timings.json")
    _demo_run(actions, path)
    timings = demo_run.Timings(path)
    steps = demo_run._Steps(timings)
    for name in NAMES:
        steps(name, actions.output(name), actions(name))
    assert timings.reused == set(NAMES)
    assert timings.steps == {"data": 10.0, "stage": 10.0, "export": 10.0}


def test_default_cpu_devices_is_a_power_of_two_per_core():
    assert [demo_run.default_cpu_devices(c) for c in (1, 2, 3, 4, 6, 8, 32)] == [1, 2, 2, 4, 4, 8, 16]


def test_cpu_devices_are_set_before_jax_starts():
    code = "from llava_jax.demo.run import _set_cpu_devices; _set_cpu_devices(3); import jax; print(jax.device_count())"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[-1] == "3"
