"""The EvalAI answer processor and the VQA soft accuracy.

LLaVA-1.5 normalises VQAv2 / VizWiz submissions and scores TextVQA with the
processor in its `llava/eval/m4c_evaluator.py` (itself taken from MMF). Scores
are only comparable if every quirk is kept, so this module reproduces the
processor's observable behaviour exactly, including its two bugs:

* the period regex was meant to skip periods preceded by a digit, but its
  look-behind is spelt `(?!<=\\d)` (a look-ahead for the text "<=digit"), so
  it removes every period not followed by a digit;
* `re.UNICODE` (value 32) is passed where `count` goes, so at most 32 periods
  are removed from an answer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

# "written form -> canonical form"; identical to the reference table, including
# entries that can never fire after lower-casing ("Im") and the odd
# "somebody'd" -> "somebodyd".
_CONTRACTION_PAIRS = """
aint ain't | arent aren't | cant can't | couldve could've | couldnt couldn't
couldn'tve couldn't've | couldnt've couldn't've | didnt didn't | doesnt doesn't
dont don't | hadnt hadn't | hadnt've hadn't've | hadn'tve hadn't've
hasnt hasn't | havent haven't | hed he'd | hed've he'd've | he'dve he'd've
hes he's | howd how'd | howll how'll | hows how's | Id've I'd've | I'dve I'd've
Im I'm | Ive I've | isnt isn't | itd it'd | itd've it'd've | it'dve it'd've
itll it'll | let's let's | maam ma'am | mightnt mightn't | mightnt've mightn't've
mightn'tve mightn't've | mightve might've | mustnt mustn't | mustve must've
neednt needn't | notve not've | oclock o'clock | oughtnt oughtn't
ow's'at 'ow's'at | 'ows'at 'ow's'at | 'ow'sat 'ow's'at | shant shan't
shed've she'd've | she'dve she'd've | she's she's | shouldve should've
shouldnt shouldn't | shouldnt've shouldn't've | shouldn'tve shouldn't've
somebody'd somebodyd | somebodyd've somebody'd've | somebody'dve somebody'd've
somebodyll somebody'll | somebodys somebody's | someoned someone'd
someoned've someone'd've | someone'dve someone'd've | someonell someone'll
someones someone's | somethingd something'd | somethingd've something'd've
something'dve something'd've | somethingll something'll | thats that's
thered there'd | thered've there'd've | there'dve there'd've | therere there're
theres there's | theyd they'd | theyd've they'd've | they'dve they'd've
theyll they'll | theyre they're | theyve they've | twas 'twas | wasnt wasn't
wed've we'd've | we'dve we'd've | weve we've | werent weren't | whatll what'll
whatre what're | whats what's | whatve what've | whens when's | whered where'd
wheres where's | whereve where've | whod who'd | whod've who'd've
who'dve who'd've | wholl who'll | whos who's | whove who've | whyll why'll
whyre why're | whys why's | wont won't | wouldve would've | wouldnt wouldn't
wouldnt've wouldn't've | wouldn'tve wouldn't've | yall y'all | yall'll y'all'll
y'allll y'all'll | yall'd've y'all'd've | y'alld've y'all'd've
y'all'dve y'all'd've | youd you'd | youd've you'd've | you'dve you'd've
youll you'll | youre you're | youve you've
"""

CONTRACTIONS: dict[str, str] = dict(
    pair.split() for pair in _CONTRACTION_PAIRS.replace("\n", "|").split("|") if pair.strip()
)

NUMBER_WORDS: dict[str, str] = {
    word: str(i)
    for i, word in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
        ]
    )
}
NUMBER_WORDS["none"] = "0"

ARTICLES = frozenset({"a", "an", "the"})

# Order matters: each mark is replaced in turn, deciding from the *input* text.
PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)

# See the module docstring: behaviourally a "period not followed by a digit".
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_MAX_REMOVALS = 32
_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),+(?=\d)")


def _tokenize(text: str) -> str:
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    return text.strip()


def _strip_punctuation(text: str) -> str:
    out = text
    # Deleting (rather than spacing out) a mark when it touches a space keeps
    # "yes !" and "yes!" equal; the digit-comma test can no longer fire because
    # _tokenize already dropped commas, but it is part of the rule.
    glue = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        if glue or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX_REMOVALS)


def _digits_articles_contractions(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """EvalAI / MMF answer normalisation, byte-identical to LLaVA's `EvalAIAnswerProcessor`."""
    text = _tokenize(answer)
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles_contractions(_strip_punctuation(text))


def vqa_soft_score(prediction: str, gt_answers: Sequence[str]) -> float:
    """Standard VQA accuracy of one prediction against its human answers (usually 10).

    Both sides are normalised; the score is min(1, matches / 3) averaged over the
    leave-one-annotator-out subsets (10 choose 9), as in LLaVA's
    `TextVQAAccuracyEvaluator` and the VQA challenge.
    """
    if not gt_answers:
        raise ValueError("vqa_soft_score needs at least one ground-truth answer")
    gts = [normalize_answer(a) for a in gt_answers]
    matches = Counter(gts)[normalize_answer(prediction)]
    # An annotator who gave the predicted answer sees matches-1 agreeing others.
    same = matches * min(1.0, (matches - 1) / 3) if matches else 0.0
    other = (len(gts) - matches) * min(1.0, matches / 3)
    return (same + other) / len(gts)
