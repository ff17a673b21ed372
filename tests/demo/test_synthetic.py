"""The synthetic task: determinism, LLaVA file layouts, answers true to the images, scorer, chance, tokenizer."""

import collections
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from llava_jax.data.conversation import render
from llava_jax.data.encode import encode_example
from llava_jax.demo import synthetic as syn
from llava_jax.demo.synthetic import tokenizer as syn_tok

SIZES = {"num_captions": 12, "num_qa": 40, "num_eval": 20, "image_size": 56}
SUFFIX = "\n" + syn.SHORT_ANSWER_SUFFIX


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    paths = syn.write_synthetic_dataset(tmp_path_factory.mktemp("syn"), seed=3, **SIZES)
    with open(paths["captions"]) as f:
        stage1 = json.load(f)
    with open(paths["qa"]) as f:
        stage2 = json.load(f)
    return paths, stage1, stage2, syn.load_eval_items(paths["eval"])


@pytest.fixture(scope="module")
def tokenizer():
    import transformers

    return transformers.AutoTokenizer.from_pretrained(syn.synthetic_tokenizer_path())


def test_same_seed_gives_byte_identical_files(data, tmp_path):
    paths = data[0]
    again = syn.write_synthetic_dataset(tmp_path / "again", seed=3, **SIZES)
    first, second = (
        _files(os.path.dirname(paths["captions"])),
        _files(tmp_path / "again"),
    )
    assert sorted(first) == sorted(second)
    assert len(first) == 4 + SIZES["num_captions"] + SIZES["num_eval"] + sum("image" in r for r in data[2])
    assert first == second
    other = syn.write_synthetic_dataset(tmp_path / "other", seed=4, **SIZES)
    with open(other["qa"], "rb") as a, open(again["qa"], "rb") as b:
        assert a.read() != b.read()


def test_finished_dataset_is_reused_and_changed_arguments_regenerate(tmp_path):
    sizes = dict(SIZES, num_captions=2, num_qa=3, num_eval=2)
    paths = syn.write_synthetic_dataset(tmp_path, **sizes)
    stamp = os.stat(paths["qa"]).st_mtime_ns
    assert syn.write_synthetic_dataset(tmp_path, **sizes) == paths
    assert syn.synthetic_dataset_paths(tmp_path) == paths
    assert os.stat(paths["qa"]).st_mtime_ns == stamp
    assert syn.synthetic_dataset_is_current(tmp_path, **sizes)
    assert not syn.synthetic_dataset_is_current(tmp_path, **dict(sizes, num_qa=5))
    syn.write_synthetic_dataset(tmp_path, **dict(sizes, num_qa=5))
    with open(paths["qa"]) as f:
        assert len(json.load(f)) == 5
    with open(paths["manifest"]) as f:
        manifest = json.load(f)
    assert manifest["num_qa"] == 5 and manifest["version"] == syn.dataset.GENERATOR_VERSION
    # Written by an older generator: not current, and writing regenerates it.
    stamp = os.stat(paths["qa"]).st_mtime_ns
    with open(paths["manifest"], "w") as f:
        json.dump(dict(manifest, version=manifest["version"] - 1), f)
    assert not syn.synthetic_dataset_is_current(tmp_path, **dict(sizes, num_qa=5))
    syn.write_synthetic_dataset(tmp_path, **dict(sizes, num_qa=5))
    assert syn.synthetic_dataset_is_current(tmp_path, **dict(sizes, num_qa=5))
    assert os.stat(paths["qa"]).st_mtime_ns != stamp
    assert not syn.synthetic_dataset_is_current(tmp_path / "missing", **sizes)


def _image_ok(paths, record, size):
    with Image.open(os.path.join(paths["image_root"], record["image"])) as im:
        im.load()
        assert (im.mode, im.size) == ("RGB", (size, size))


def test_stage1_follows_lcs558k_layout(data):
    paths, stage1, _, _ = data
    assert len(stage1) == SIZES["num_captions"]
    placements = set()
    for r in stage1:
        assert set(r) == {"id", "image", "conversations"}
        assert re.fullmatch(r"\d{9}", r["id"])
        human, gpt = r["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        if human["value"].startswith("<image>\n"):
            instruction = human["value"][len("<image>\n") :]
            placements.add("before")
        else:
            assert human["value"].endswith("\n<image>")
            instruction = human["value"][: -len("\n<image>")]
            placements.add("after")
        assert instruction in syn.CAPTION_INSTRUCTIONS
        assert "<image>" not in gpt["value"] and gpt["value"]
        _image_ok(paths, r, SIZES["image_size"])
    assert placements == {"before", "after"}


def test_stage2_follows_mix665k_layout(data):
    paths, _, stage2, _ = data
    assert len(stage2) == SIZES["num_qa"]
    assert len({r["id"] for r in stage2}) == len(stage2)
    text_only = [r for r in stage2 if "image" not in r]
    assert len(text_only) == int(SIZES["num_qa"] * 0.1)
    seen = collections.Counter()
    for r in stage2:
        turns = r["conversations"]
        assert len(turns) % 2 == 0 and turns
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert all(set(t) == {"from", "value"} and t["value"] for t in turns)
        others = [t["value"] for t in turns[1:]]
        assert not any("<image>" in v for v in others)
        first = turns[0]["value"]
        if "image" not in r:
            assert set(r) == {"id", "conversations"} and "<image>" not in first
            continue
        assert set(r) == {"id", "image", "conversations"}
        assert first.count("<image>") == 1
        seen["front" if first.startswith("<image>\n") else "back"] += 1
        if not first.startswith("<image>\n"):
            assert first.endswith("\n<image>")
        for q, a in zip(turns[::2], turns[1::2]):
            short = q["value"].replace("\n<image>", "").endswith(SUFFIX)
            seen["short" if short else "long"] += 1
            if short:
                assert re.fullmatch(r"[A-Z0-9][a-z]*", a["value"]), a
        _image_ok(paths, r, SIZES["image_size"])
    assert all(seen[k] for k in ("front", "back", "short", "long")), seen


def _check_answer(scene, item):
    """The ground truth agrees with the scene the image was drawn from."""
    qtype, question, answer = item["category"], item["text"], item["answer"].lower()
    colors = [s.color for s in scene.shapes]
    kinds = [s.kind for s in scene.shapes]
    positions = [s.position for s in scene.shapes]
    if qtype == "color":
        assert answer in colors
    elif qtype == "shape":
        assert answer in kinds
    elif qtype == "count":
        assert int(answer) == len(scene.shapes)
    elif qtype == "position":
        assert answer in positions
    else:
        thing = re.search(r"(?:there|see|find) an? ([a-z ]+?)(?: in the \w+)?\?", question)
        words = thing.group(1).split()
        present = (words[0] in colors) if words[-1] == "shape" else (words[0] in kinds)
        assert answer == ("yes" if present else "no"), (question, answer, scene)


def test_eval_split_is_a_balanced_llava_question_file_true_to_its_images(data):
    paths, _, _, items = data
    assert [i["question_id"] for i in items] == list(range(SIZES["num_eval"]))
    counts = collections.Counter(i["category"] for i in items)
    assert counts == {t: SIZES["num_eval"] // 5 for t in syn.QUESTION_TYPES}
    for item in items:
        assert set(item) == {"question_id", "image", "text", "category", "answer"}
        assert item["text"].endswith(SUFFIX) and "<image>" not in item["text"]
        record, scene = syn.eval_item(item["question_id"], seed=3)
        assert record == item
        _check_answer(scene, item)
        _image_ok(paths, item, SIZES["image_size"])


def test_images_show_the_scene():
    for seed in range(20):
        scene = syn.random_scene(seed)
        pixels = np.asarray(syn.render_scene(scene, 84), np.int32)
        for s in scene.shapes:
            fx, fy = syn.POSITIONS[s.position]
            x, y = round((fx + s.offset[0]) * 84), round((fy + s.offset[1]) * 84)
            assert tuple(pixels[y, x]) == s.rgb, (s, seed)
        # Corners are background: the ramp moves brightness by at most gradient/2.
        drift = abs(pixels[0, 0] - np.asarray(scene.background_rgb)).max()
        assert drift <= abs(scene.gradient) / 2 + 1


def test_answer_distributions_match_chance_levels():
    answers = collections.defaultdict(collections.Counter)
    for i in range(3000):
        item, _ = syn.eval_item(i, seed=11)
        answers[item["category"]][item["answer"]] += 1
    sizes = {
        "color": len(syn.COLORS),
        "shape": len(syn.SHAPES),
        "count": syn.MAX_SHAPES,
        "position": len(syn.POSITIONS),
        "existence": 2,
    }
    for qtype, counter in answers.items():
        assert len(counter) == sizes[qtype]
        assert syn.CHANCE[qtype] == pytest.approx(1 / sizes[qtype])
        total = sum(counter.values())
        for n in counter.values():  # uniform, so the best constant guess is 1/k
            assert abs(n / total - syn.CHANCE[qtype]) < 0.06, (qtype, counter)


def _question_type(question: str) -> str:
    q = question.split("\n")[0]
    if q.startswith(("What color", "What is the color", "Which color")):
        return "color"
    if q.startswith(("What shape", "Which shape")):
        return "shape"
    if q.startswith(("How many", "Count")):
        return "count"
    if q.startswith("Where"):
        return "position"
    assert q.startswith(("Is there", "Do you see", "Can you find")), q
    return "existence"


def _described_shapes(description: str) -> list[tuple[str, str, str]]:
    """(colour, kind, place phrase) per shape, in the order the description names them."""
    listing = description[:-1].split(": ", 1)[1]
    places = "|".join(syn.POSITION_PHRASES.values())
    shapes = []
    for part in re.split(r", | and ", listing):
        if m := re.fullmatch(rf"an? (\w+) in (\w+) ({places})", part):  # kind first
            shapes.append((m[2], m[1], m[3]))
        elif m := re.fullmatch(rf"an? (\w+) (\w+) ({places})", part):  # colour first
            shapes.append(m.groups())
        else:
            m = re.fullmatch(rf"({places}) an? (\w+) (\w+)", part)  # place first
            assert m, part
            shapes.append((m[2], m[3], m[1]))
    return shapes


def test_stage2_mix_weights_question_types_and_description_styles():
    types, styles, rounds = collections.Counter(), collections.Counter(), collections.Counter()
    for i in range(1500):
        record, scene = syn.instruct_sample(i, seed=5)
        if scene is None:
            continue
        rounds[len(record["conversations"]) // 2] += 1
        truth = [(s.color, s.kind, syn.POSITION_PHRASES[s.position]) for s in scene.shapes]
        turns = [t["value"].replace("<image>", "").strip() for t in record["conversations"]]
        for q, a in zip(turns[::2], turns[1::2]):
            if q not in syn.DETAIL_INSTRUCTIONS:
                types[_question_type(q)] += 1
                continue
            named = _described_shapes(a)
            assert sorted(named) == sorted(truth), (a, scene)  # every shape once, true to the scene
            if len(scene.shapes) > 1:
                if re.search(r": (at|on|in) ", a):
                    styles["place_first"] += 1
                elif re.search(r": an? \w+ in ", a):
                    styles["kind_first"] += 1
                else:
                    styles["slot" if named == truth else "shuffled"] += 1
    assert sorted(rounds) == list(range(1, syn.dataset.MAX_ROUNDS + 1)), rounds
    weights = syn.dataset.QUESTION_WEIGHTS
    total, weight_sum = sum(types.values()), sum(weights.values())
    for qtype, n in types.items():
        assert abs(n / total - weights[qtype] / weight_sum) < 0.03, types
    share = {k: n / sum(styles.values()) for k, n in styles.items()}
    # A quarter each; a shuffle of 2-4 shapes keeps slot order 1/2-1/24 of the time, counted as "slot".
    assert 0.19 < share["place_first"] < 0.31 and 0.19 < share["kind_first"] < 0.31, styles
    assert 0.13 < share["shuffled"] < 0.25 and 0.25 < share["slot"] < 0.38, styles


def test_describe_styles():
    import random

    scene = syn.random_scene(3)
    assert syn.describe(scene) == syn.describe(scene, random.Random(0), "slot_order")  # draws nothing
    for style in syn.DESCRIPTION_STYLES[1:]:
        with pytest.raises(ValueError, match="needs an rng"):
            syn.describe(scene, None, style)
    with pytest.raises(ValueError, match="unknown description style"):
        syn.describe(scene, random.Random(0), "zigzag")


def test_chance_levels_are_percent_and_weighted_overall():
    chance = syn.chance_levels()
    assert chance["color"] == pytest.approx(100 / 6)
    assert chance["existence"] == 50.0
    assert chance["overall"] == pytest.approx((100 / 6 + 25 + 25 + 20 + 50) / 5)
    items = [{"category": "existence"}] * 3 + [{"category": "color"}]
    assert syn.chance_levels(items)["overall"] == pytest.approx((150 + 100 / 6) / 4)


def test_normalize_answer():
    assert syn.normalize_answer("  The RED.</s>") == "red"
    assert syn.normalize_answer("Three") == "3"
    assert syn.normalize_answer("on the  left!") == "on left"
    assert syn.normalize_answer("Yes, it is.") == "yes it is"


def test_score_synthetic_on_hand_made_predictions():
    items = [
        {"question_id": 0, "category": "color", "answer": "Red"},
        {"question_id": 1, "category": "color", "answer": "Blue"},
        {"question_id": 2, "category": "count", "answer": "3"},
        {"question_id": 3, "category": "position", "answer": "Left"},
        {"question_id": 4, "category": "existence", "answer": "No"},
        {"question_id": 5, "category": "existence", "answer": "Yes"},
    ]
    predictions = {"0": "red.", 1: "Green", "2": "three", "3": "The left", "4": "no"}
    result = syn.score_synthetic(predictions, items)
    assert result["accuracy"] == {
        "color": 50.0,
        "count": 100.0,
        "position": 100.0,
        "existence": 50.0,
        "overall": pytest.approx(400 / 6),
    }
    assert result["missing"] == 1
    assert result["num_questions"] == {
        "color": 2,
        "count": 1,
        "position": 1,
        "existence": 2,
        "overall": 6,
    }
    assert set(result["chance"]) == {
        "color",
        "count",
        "position",
        "existence",
        "overall",
    }
    assert result["chance"]["overall"] == pytest.approx((2 * 100 / 6 + 25 + 20 + 2 * 50) / 6)
    records = [{"question_id": k, "text": v} for k, v in predictions.items()]
    assert syn.score_synthetic(records, items) == result


def test_tokenizer_is_llama_style_with_llava_hf_image_token(tokenizer):
    v = syn_tok.VOCAB_SIZE
    assert len(tokenizer) == v + 2 and tokenizer.vocab_size == v
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        0,
        1,
        2,
    )
    assert tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [v, v + 1]
    assert tokenizer.pad_token_id == v + 1 and tokenizer.image_token_id == v
    ids = tokenizer("USER: <image>\nWhat color is the shape? ASSISTANT: Red</s>").input_ids
    assert ids[0] == 1 and ids[-1] == 2 and ids.count(1) == 1
    assert ids.count(v) == 1
    assert tokenizer.convert_ids_to_tokens(ids[ids.index(v) + 1]) == "<0x0A>"
    assert tokenizer("Red").input_ids == [1, tokenizer.convert_tokens_to_ids("▁Red")]
    assert tokenizer.decode(ids, skip_special_tokens=True).startswith("USER: ")


def _rendered_language(seed, n):
    """Every kind of text the task produces, rendered as the model sees it."""
    texts = []
    for i in range(n):
        for record in (
            syn.caption_sample(i, seed=seed)[0],
            syn.instruct_sample(i, seed=seed)[0],
            syn.instruct_sample(i, seed=seed, text_only=True)[0],
        ):
            turns = [(t["from"], t["value"]) for t in record["conversations"]]
            texts.append(render("vicuna_v1", turns, image="image" in record))
            texts.append(render("llava_v1", turns, image="image" in record))
        item = syn.eval_item(i, seed=seed)[0]
        texts.append(item["text"] + " " + item["answer"])
    return texts


def test_tokenizer_covers_the_language_without_unk_or_byte_fallback(tokenizer):
    newline = tokenizer.convert_tokens_to_ids("<0x0A>")
    byte_ids = set(range(3, 259)) - {newline}
    assert tokenizer.convert_ids_to_tokens(3) == "<0x00>"
    for text in _rendered_language(seed=99, n=150):
        ids = tokenizer(text).input_ids
        assert 0 not in ids and not byte_ids & set(ids), text
        assert tokenizer.decode(ids[1:]) == text


def test_shipped_tokenizer_equals_a_rebuild(tmp_path):
    import sentencepiece as spm

    rebuilt = syn.build_synthetic_tokenizer(tmp_path)
    shipped = syn.synthetic_tokenizer_path()
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        with (
            open(os.path.join(rebuilt, name)) as a,
            open(os.path.join(shipped, name)) as b,
        ):
            assert json.load(a) == json.load(b), name
    models = [spm.SentencePieceProcessor(model_file=os.path.join(d, "tokenizer.model")) for d in (rebuilt, shipped)]
    vocab = [[(m.id_to_piece(i), m.get_score(i), m.is_byte(i)) for i in range(m.get_piece_size())] for m in models]
    assert vocab[0] == vocab[1], "shipped tokenizer is stale: rebuild it (see module doc)"
    size = os.path.getsize(os.path.join(shipped, "tokenizer.model"))
    assert size < 16_000


@pytest.mark.parametrize("template,split", [("plain", "stage1"), ("vicuna_v1", "stage2")])
def test_every_sample_encodes_with_the_real_pipeline(data, tokenizer, template, split):
    records = data[1] if split == "stage1" else data[2]
    image_id = tokenizer.image_token_id
    for record in records:
        out = encode_example(
            record,
            tokenizer,
            template=template,
            image_seq_length=16,
            max_length=1024,
            image_token_index=image_id,
        )
        ids, labels = out["input_ids"], out["labels"]
        assert (ids == image_id).sum() == (16 if "image" in record else 0)
        # Exactly the replies are supervised: each with its `</s>` (each reply's
        # leading space decodes as a separator), or the caption and its newline.
        supervised = tokenizer.decode(labels[labels >= 0])
        replies = [t["value"] for t in record["conversations"][1::2]]
        if template == "plain":
            assert supervised == replies[0] + "\n"
        else:
            assert supervised == " ".join(f"{r}</s>" for r in replies)
