"""The EvalAI answer processor's edge cases and the VQA soft accuracy, by hand."""

import pytest

from llava_jax.eval.normalize import normalize_answer, vqa_soft_score


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Yes.", "yes"),  # trailing period dropped, lower-cased
        ("  \tyes\n", "yes"),
        ("Two dogs", "2 dogs"),  # number words become digits
        ("None of them", "0 of them"),  # "none" counts as a number word
        ("The cat", "cat"),  # articles dropped
        ("an apple a day", "apple day"),
        ("dont", "don't"),  # contractions restored
        ("whats", "what's"),
        ("What's up?", "what 's up"),  # "'s" split off, "?" removed
        ("somebody'd", "somebodyd"),  # the reference table's odd entry, kept
        ("Im", "im"),  # capitalised keys never match after lower-casing
        ("3.5", "3.5"),  # a period before a digit stays
        ("1,000", "1000"),  # commas removed before anything else
        ("x-y", "x y"),  # a mark touching no space becomes a space ...
        ("x-y -z", "xy z"),  # ... but is deleted everywhere once it touches one
        ("10 x 10 = 100", "10 x 10 100"),
        ("<b>yes</b>", "b yes b"),
        ("." * 40, "." * 8),  # at most 32 periods are removed (count=re.UNICODE)
        ("Unanswerable", "unanswerable"),
        ("", ""),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_soft_score_hand_computed():
    gts = ["2"] * 3 + ["3"] * 7
    # 3 annotators said "2": each sees 2 others agreeing (2/3); the 7 others see 3 (1).
    assert vqa_soft_score("two", gts) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_soft_score("3", gts) == pytest.approx(1.0)
    assert vqa_soft_score("4", gts) == 0.0
    lone = ["2"] + ["5"] * 9
    assert vqa_soft_score("2", lone) == pytest.approx((1 * 0 + 9 * 1 / 3) / 10)
    # Ground-truth answers are normalised too.
    assert vqa_soft_score("dakota", ["Dakota."] * 10) == pytest.approx(1.0)


def test_soft_score_needs_answers():
    with pytest.raises(ValueError):
        vqa_soft_score("x", [])
