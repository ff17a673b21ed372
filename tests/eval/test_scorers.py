"""Reply parsers and aggregation rules of the individual scorers."""

import pytest

from llava_jax.eval import mmbench, mme, pope, scienceqa, vqa
from llava_jax.eval.common import EvalDataError


@pytest.mark.parametrize(
    "reply, label",
    [
        ("Yes", "yes"),
        ("No", "no"),
        ("no.", "no"),
        ("There is not a cat.", "no"),
        ("Yes. No.", "yes"),  # only the first sentence counts
        ("No, it is not", "no"),
        ("NO", "yes"),  # only "No"/"no"/"not" words count
        ("Nope", "yes"),
        ("", "yes"),
    ],
)
def test_pope_yes_no(reply, label):
    assert pope.parse_yes_no(reply) == label


def test_binary_metrics_hand_computed_and_empty_denominators():
    m = pope.binary_metrics(["yes", "yes", "no", "no", "yes"], ["yes", "no", "yes", "no", "yes"])
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 1)
    assert m["accuracy"] == 60.0 and m["precision"] == pytest.approx(200 / 3)
    assert m["recall"] == pytest.approx(200 / 3) and m["f1"] == pytest.approx(200 / 3)
    assert m["yes_ratio"] == 60.0
    none = pope.binary_metrics(["no", "no"], ["no", "no"])
    assert (none["precision"], none["recall"], none["f1"], none["accuracy"]) == (
        0,
        0,
        0,
        100,
    )


@pytest.mark.parametrize(
    "reply, label",
    [
        ("Yes", "yes"),
        ("no", "no"),
        ("Yes, there is", "yes"),
        ("nothing", "no"),
        ("The answer is no", "other"),
        ("n", "other"),
        ("It's a no", "other"),
    ],
)
def test_mme_yes_no(reply, label):
    assert mme.parse_yes_no(reply) == label


def test_mme_original_question():
    truth = {
        ("c", "1.txt", "Is it?  Please answer yes or no."): "Yes",
        ("c", "2.txt", "Is it? Please answer yes or no."): "No",
    }
    sa = "\nAnswer the question using a single word or phrase."
    assert mme.original_question("Is it?" + sa, "c", "1.txt", truth) == ("Is it?  Please answer yes or no.")
    assert mme.original_question("Is it?" + sa, "c", "2.txt", truth) == ("Is it? Please answer yes or no.")
    # a prompt that kept MME's instruction is used as is
    assert mme.original_question("Is it? Please answer yes or no.", "c", "2.txt", truth) == (
        "Is it? Please answer yes or no."
    )


@pytest.mark.parametrize(
    "reply, letter",
    [
        ("A", "A"),
        ("B.", "B"),
        ("(C) green", "C"),
        ("The answer is B", "B"),
        ("A dog sits on the sofa", None),  # a sentence-initial article is not an answer
        ("A or B", None),
        ("green", "C"),
        ("gre", None),
        ("", None),
    ],
)
def test_mmbench_extract_letter(reply, letter):
    assert mmbench.extract_letter(reply, ["blue", "red", "green"]) == letter


def test_mmbench_rotation_and_missing_cells():
    # options [a, b, c], answer B; after one left rotation [b, c, a] b sits at A
    assert mmbench.correct_letter("B", 3, 1) == "A"
    assert mmbench.correct_letter("A", 3, 1) == "C"
    assert mmbench.correct_letter("D", 4, 2) == "B"
    for value in ("", "nan", "NaN", "None", "NONE", "N/A", "null"):
        assert mmbench.is_none(value)
    assert not mmbench.is_none("0") and not mmbench.is_none("no")
    assert mmbench.row_options({"A": "x", "B": "y", "C": "", "D": "z"}) == ["x", "y"]


@pytest.mark.parametrize(
    "reply, letter",
    [
        ("B", "B"),
        ("C. fire", "C"),
        ("The answer is A.", "A"),
        ("The answer is A. The answer is B.", "FAILED"),
        ("b", "FAILED"),
        ("F", "FAILED"),
        ("B)", "FAILED"),
    ],
)
def test_scienceqa_parse(reply, letter):
    assert scienceqa.parse_answer(reply) == letter


def test_textvqa_question_recovery():
    sa = "Answer the question using a single word or phrase."
    assert vqa.textvqa_question(f"What Brand?\nReference OCR token: A, B\n{sa}") == "what brand?"
    assert vqa.textvqa_question(f"What Brand?\n{sa}") == "what brand?"
    assert vqa.textvqa_question("OCR tokens: a b. Question: What now? Short answer:") == "what now?"
    with pytest.raises(EvalDataError):
        vqa.textvqa_question("one line")


def test_mmbench_upload_cells(tmp_path):
    import openpyxl

    from llava_jax.eval.mmbench import _write_xlsx

    path = str(tmp_path / "upload.xlsx")
    rows = [[7, "bell\x07 and <tag> & \u00e9", None, 2.5], [8, "", "x" * 40, -1]]
    _write_xlsx(path, ["index", "prediction", "C", "score"], rows)
    book = openpyxl.load_workbook(path, read_only=True)
    got = list(book.active.iter_rows(values_only=True))
    book.close()
    # Control characters (illegal in XML) dropped, markup kept as text, None an empty cell.
    assert got == [
        ("index", "prediction", "C", "score"),
        (7, "bell and <tag> & \u00e9", None, 2.5),
        (8, None, "x" * 40, -1),
    ]


def test_reference_pixels_follow_the_reference_pipeline():
    import numpy as np
    from PIL import Image

    from llava_jax.data.image import preprocess_image
    from llava_jax.eval.model_answerer import reference_pixels

    rgb = Image.new("RGB", (28, 20), (200, 10, 50))
    np.testing.assert_array_equal(
        reference_pixels(rgb, mode="pad", size=28),
        preprocess_image(rgb, mode="pad", size=28),
    )
    # Transparent pixels keep their colour (transformers 4.37 dropped alpha) ...
    clear = Image.new("RGBA", (28, 28), (10, 20, 30, 0))
    np.testing.assert_array_equal(
        reference_pixels(clear, mode="pad", size=28),
        preprocess_image(Image.new("RGB", (28, 28), (10, 20, 30)), mode="square", size=28),
    )
    # ... and padding an RGBA image fills with the opaque mean colour.
    wide = Image.new("RGBA", (28, 14), (10, 20, 30, 0))
    expected = Image.new("RGB", (28, 28), (122, 116, 104))
    expected.paste(Image.new("RGB", (28, 14), (10, 20, 30)), (0, 7))
    np.testing.assert_array_equal(
        reference_pixels(wide, mode="pad", size=28),
        preprocess_image(expected, mode="square", size=28),
    )
    # Greyscale cannot be padded with an RGB colour in its own mode: RGB first.
    grey = Image.new("L", (14, 28), 90)
    np.testing.assert_array_equal(
        reference_pixels(grey, mode="pad", size=28),
        preprocess_image(grey.convert("RGB"), mode="pad", size=28),
    )
