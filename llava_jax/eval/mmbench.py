"""MMBench and MMBench-CN: multiple choice from the official TSVs, circular evaluation.

Prompts follow `model_vqa_mmbench.py --single-pred-prompt` (hint line, then
question, then `A. ...` option lines, then the letter instruction in the
row's language). The official TSVs already hold each question's circular
shifts as extra rows whose index is the original index plus k * 1e6; with
`all_rounds` every row is additionally asked with its options rotated, like
the reference's `--all-rounds`. Circular accuracy counts a question right only
if every row and round of its group (index mod 1e6) is right.

Dev TSVs carry answers, so they are scored here; letters are read from replies
by option-letter tokens, then by option text (the server adds a GPT fallback
that this offline scorer cannot). Every run also writes the Excel upload the
OpenCompass server takes (`convert_mmbench_for_submission.py` layout).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence

from llava_jax.eval import prompts
from llava_jax.eval.common import (
    DataConfig,
    Score,
    answered,
    percent,
    require,
)
from llava_jax.eval.records import Base64Image, Item

QUESTIONS_EN = "mmbench_dev_20230712.tsv"
QUESTIONS_CN = "mmbench_dev_cn_20231003.tsv"
LETTERS = ("A", "B", "C", "D")
CIRCULAR_BASE = 1_000_000
# Strings pandas.read_table turns into NaN by default; the reference then treats
# them (and "nan"/"none" in any case) as missing options or hints.
_PANDAS_NA = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)
_UPLOAD_DROPPED = ("hint", "category", "source", "image", "comment", "l2-category")


def is_none(value: str | None) -> bool:
    """True for a missing cell, as pandas + the reference's `is_none` see it."""
    return value is None or value in _PANDAS_NA or value.lower() in ("nan", "none")


def read_tsv(path: str) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of an MMBench TSV (base64 images make fields very long)."""
    csv.field_size_limit(sys.maxsize)
    with open(require(path, "MMBench TSV"), encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def row_options(row: Mapping[str, str]) -> list[str]:
    """Options A, B, ... up to the first missing one."""
    options = []
    for letter in LETTERS:
        if is_none(row.get(letter)):
            break
        options.append(row[letter])
    return options


def _index(row: Mapping[str, str]) -> int:
    return int(float(row["index"]))


def load(cfg: DataConfig, default_file: str = QUESTIONS_EN) -> list[Item]:
    """One item per TSV row (and per rotation with `all_rounds`)."""
    _, rows = read_tsv(cfg.questions(default_file))
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    instruction = prompts.mmbench_instruction(cfg.lang)
    items = []
    for row in rows:
        options = row_options(row)
        chars = list(LETTERS[: len(options)])
        hint = None if is_none(row.get("hint")) else row["hint"]
        image = Base64Image(row["image"])
        index = _index(row)
        for round_id in range(len(options) if cfg.all_rounds else 1):
            text = prompts.mmbench(row["question"], options, hint)
            items.append(
                Item(
                    key=f"{index}/{round_id}",
                    question_id=index,
                    message=f"{prompts.with_image(text)}\n{instruction}",
                    prompt=text,
                    image=image,
                    fields={
                        "round_id": round_id,
                        "options": list(options),
                        "option_char": list(chars),
                    },
                    meta={
                        "answer": None if is_none(row.get("answer")) else row["answer"],
                        "category": row.get("category"),
                        "round": round_id,
                    },
                )
            )
            # The reference rotates both lists after each round; option letters
            # in the prompt stay A, B, ... so the answer's letter moves.
            options, chars = options[1:] + options[:1], chars[1:] + chars[:1]
    return items


def load_cn(cfg: DataConfig) -> list[Item]:
    """MMBench-CN: Chinese instruction, CN dev TSV."""
    return load(dataclasses.replace(cfg, lang="cn"), QUESTIONS_CN)


def extract_letter(text: str, options: Sequence[str]) -> str | None:
    """The option letter a reply picks, or None when it cannot be told offline.

    First a lone option letter among the reply's tokens (a sentence-initial
    article "A" in a long reply does not count), then a unique option whose
    text appears in the reply.
    """
    letters = LETTERS[: len(options)]
    cleaned = text
    for mark in ".()[],:;!*#{}":
        cleaned = cleaned.replace(mark, " ")
    tokens = cleaned.split()
    found = {t for t in tokens if t in letters}
    if len(found) == 1 and not (found == {"A"} and len(tokens) > 3):
        return found.pop()
    if not found:
        lowered = text.lower()
        hits = [letters[i] for i, opt in enumerate(options) if opt.lower() in lowered]
        if len(hits) == 1:
            return hits[0]
    return None


def correct_letter(answer: str, n_options: int, round_id: int) -> str:
    """Where the right option sits after `round_id` left rotations of the options."""
    return LETTERS[(LETTERS.index(answer) - round_id) % n_options]


def _write_upload(
    path: str,
    header: Sequence[str],
    rows: Sequence[Mapping[str, str]],
    predictions: Mapping[int, str],
) -> None:
    columns = [c for c in header if c not in _UPLOAD_DROPPED]
    columns.insert(min(6, len(columns)), "prediction")
    table = []
    for row in rows:
        values = []
        for column in columns:
            if column == "prediction":
                values.append(predictions.get(_index(row)))
            elif column == "index":
                values.append(_index(row))
            else:
                values.append(None if is_none(row.get(column)) else row[column])
        table.append(values)
    _write_xlsx(path, columns, table)


def _write_xlsx(path: str, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    """One sheet, `header` then `rows`, as pandas' `to_excel` lays it out: None cells empty, numbers numbers."""
    try:
        from openpyxl import Workbook
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    except ImportError as e:
        raise ImportError("writing the MMBench upload (.xlsx) needs openpyxl: pip install 'llava_jax[eval]'") from e

    def cell(value):
        # XML 1.0 forbids most control characters (openpyxl refuses them); model replies may hold some.
        return ILLEGAL_CHARACTERS_RE.sub("", value) if isinstance(value, str) else value

    book = Workbook(write_only=True)
    sheet = book.create_sheet("Sheet1")
    sheet.append(list(header))
    for row in rows:
        sheet.append([cell(v) for v in row])
    book.save(path)


def score(
    items: Sequence[Item],
    answers: Mapping[str, dict],
    cfg: DataConfig,
    out_dir: str,
    default_file: str = QUESTIONS_EN,
) -> Score:
    """Circular and per-question accuracy when answers are known; always the upload file."""
    tsv = cfg.questions(default_file)
    header, rows = read_tsv(tsv)
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    pairs = answered(items, answers)
    # The upload holds one prediction per row: the unrotated round's.
    predictions = {item.question_id: text for item, text in pairs if item.meta["round"] == 0}
    upload = os.path.join(out_dir, os.path.splitext(os.path.basename(tsv))[0] + ".xlsx")
    _write_upload(upload, header, rows, predictions)
    metrics: dict = {"answered": len(pairs)}
    scored = [(item, text) for item, text in pairs if item.meta["answer"] is not None]
    if scored:
        groups: dict[int, list[bool]] = {}
        categories: dict[int, str] = {}
        unparsed = 0
        for item, text in scored:
            options = item.fields["options"]
            letter = extract_letter(text, options)
            unparsed += letter is None
            hit = letter == correct_letter(item.meta["answer"], len(options), item.meta["round"])
            group = item.question_id % CIRCULAR_BASE
            groups.setdefault(group, []).append(hit)
            if item.question_id < CIRCULAR_BASE:
                categories[group] = item.meta["category"]
        hits = [h for group_hits in groups.values() for h in group_hits]
        metrics["accuracy"] = percent(sum(hits), len(hits))
        metrics["circular_accuracy"] = percent(sum(all(g) for g in groups.values()), len(groups))
        metrics["questions"] = len(groups)
        metrics["unparsed"] = unparsed
        by_category: dict[str, list[bool]] = {}
        for group, group_hits in groups.items():
            by_category.setdefault(categories.get(group) or "unknown", []).append(all(group_hits))
        for category, flags in sorted(by_category.items()):
            metrics[f"circular/{category}"] = percent(sum(flags), len(flags))
    notes = [f"test split: upload {os.path.basename(upload)} to the OpenCompass MMBench server"]
    return Score(metrics, {"upload": upload}, notes)


def score_cn(items: Sequence[Item], answers: Mapping[str, dict], cfg: DataConfig, out_dir: str) -> Score:
    """MMBench-CN scoring (same rules, CN dev TSV)."""
    return score(items, answers, cfg, out_dir, QUESTIONS_CN)
