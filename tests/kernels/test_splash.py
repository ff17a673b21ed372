"""TPU splash attention (TPU interpret mode on CPU) vs the reference."""

import pytest

from tests.kernels.cases import CASES, check_against_reference


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference(case):
    check_against_reference("splash", case)
