"""`llava_jax.train.goodput`: the profiler window's config and the restart fields.

The fields of a real run and the trace it writes: tests/train/test_loop_control.py.
"""

import pytest

from llava_jax.config import ConfigError
from llava_jax.train.goodput import Goodput, parse_steps


@pytest.mark.parametrize("spec, expected", [("", None), ("3:5", (3, 5)), (" 7 ", (7, 7)), ("2:2", (2, 2))])
def test_profile_steps(spec, expected):
    assert parse_steps(spec) == expected


@pytest.mark.parametrize("spec", ["a:b", "5:3", "0:2", "1:2:3"])
def test_bad_profile_steps_name_the_key(spec):
    with pytest.raises(ConfigError, match="profile.steps"):
        parse_steps(spec)


def test_restart_fields_appear_in_the_first_row_only():
    clock = Goodput({"redone_steps": 3, "lost_s": 12.5, "previous_wall": 0.0})
    first = clock.row(data_wait_s=1.0, interval_steps=2, interval_data_s=1.0)
    assert first["restart/redone_steps"] == 3 and first["restart/lost_s"] == 12.5
    assert first["restart/downtime_s"] == pytest.approx(clock.started_wall)
    assert first["time/data_wait"] == 0.5
    second = clock.row(data_wait_s=1.0, interval_steps=1, interval_data_s=0.0)
    assert not any(k.startswith("restart/") for k in second)
