"""TPU splash attention (TPU interpret mode on CPU) vs the reference."""

import pytest

from tests.kernels.cases import FAST_CASES, SLOW_CASES, check_against_reference


@pytest.mark.parametrize("case", FAST_CASES, ids=str)
def test_matches_reference(case):
    check_against_reference("splash", case)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES, ids=str)
def test_matches_reference_long(case):
    check_against_reference("splash", case)
