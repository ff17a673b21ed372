"""Bad input through the whole pipeline: nothing crashes, nothing misaligns, every skip counted by reason."""

import collections
import dataclasses
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from llava_jax.data.encode import DataError, EncodeFn
from llava_jax.data.pipeline import DataConfig, create_loader
from llava_jax.data.sources import JsonSource
from tests.data.helpers import photos
from tests.data.test_pipeline import check_layout, segments

IMG = -200
CONFIG = DataConfig(
    image_size=28,
    image_seq_length=16,
    image_token_index=IMG,
    max_length=256,
    global_batch_size=2,
    batching="pack",
    max_images_per_row=2,
    pack_window=8,
    pad_multiple=64,
)


def qa(question="<image>\nWhat is shown?", answer="A photo."):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture(scope="module")
def bad_dataset(tmp_path_factory):
    """(json path, image root, good ids, {bad id: reason})."""
    root = tmp_path_factory.mktemp("bad")
    images = root / "images"
    images.mkdir()
    buf = io.BytesIO()
    Image.fromarray(photos()[0][:375, :500]).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    for i in range(6):
        (images / f"good{i}.jpg").write_bytes(jpeg)
    (images / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (images / "empty.jpg").write_bytes(b"")
    (images / "text.jpg").write_text("not an image")
    # Distinct answers, so each sample is recognisable by its tokens.
    good = [
        {
            "id": f"good{i}",
            "image": f"good{i}.jpg",
            "conversations": qa(answer=f"A {i}."),
        }
        for i in range(6)
    ]
    good += [{"id": f"text{i}", "conversations": qa("Hi?", f"Hello {i}.")} for i in range(3)]
    bad = {
        "missing_file": ({"image": "nope.jpg", "conversations": qa()}, "missing_image"),
        "truncated": (
            {"image": "truncated.jpg", "conversations": qa(answer="T.")},
            "corrupt_image",
        ),
        "zero_size": ({"image": "empty.jpg", "conversations": qa()}, "corrupt_image"),
        "not_image": (
            {"image": "text.jpg", "conversations": qa(answer="N.")},
            "corrupt_image",
        ),
        "no_conv": ({"image": "good0.jpg"}, "no_conversations"),
        "not_alt": (
            {"conversations": qa("Q?", "A.") + qa("Q?", "A.")[:1]},
            "not_alternating",
        ),
        "marker_text_only": ({"conversations": qa()}, "image_token_in_text_only"),
        "no_marker": (
            {"image": "good1.jpg", "conversations": qa("Q?")},
            "missing_image_token",
        ),
        "two_markers": (
            {"image": "good1.jpg", "conversations": qa("<image> <image> Q")},
            "multiple_image_tokens",
        ),
        "empty_answer": (
            {"image": "good2.jpg", "conversations": qa(answer="")},
            "empty_turn",
        ),
    }
    records = [json.dumps(e).encode() for e in good]
    records += [json.dumps({"id": k, **e}).encode() for k, (e, _) in bad.items()]
    # Invalid UTF-8 inside one record.
    records.append(
        b'{"id": "latin1", "conversations": [{"from": "human", "value": "caf\xe9?"}, {"from": "gpt", "value": "ok"}]}'
    )
    path = root / "data.json"
    path.write_bytes(b"[\n" + b",\n".join(records) + b"\n]")
    reasons = {k: r for k, (_, r) in bad.items()} | {"latin1": "non_utf8"}
    return str(path), str(images), {e["id"] for e in good}, reasons


@pytest.mark.parametrize("batching", ["pack", "pad"])
def test_skip_policy_counts_every_bad_sample(bad_dataset, tokenizer, batching):
    path, images, good_ids, reasons = bad_dataset
    source = JsonSource(path, images)
    config = dataclasses.replace(CONFIG, batching=batching)
    encode = EncodeFn(tokenizer, config)
    ids_of = {}
    for i in range(len(source)):
        out = encode(source[i])
        if "_skip" not in out:
            ids_of[tuple(out["input_ids"].tolist())] = out["id"]
    loader = create_loader(config, source, tokenizer)
    seen, skipped_rows = [], 0
    for batch in loader:
        check_layout(batch, config)  # placeholders == valid images, row by row
        skipped_rows += int(batch["skipped"].sum())
        seen += [ids_of[key] for _, key, _ in segments(batch)]
    assert sorted(seen) == sorted(good_ids)  # every good sample, once
    assert dict(loader.skipped) == dict(collections.Counter(reasons.values()))
    assert skipped_rows == len(reasons)
    assert sorted(i for i, _ in loader.recent_skips) == sorted(reasons)
    assert all(reasons[i] == r for i, r in loader.recent_skips)


def test_strict_policy_stops_with_id_and_reason(bad_dataset, tokenizer):
    path, images, _, reasons = bad_dataset
    config = dataclasses.replace(CONFIG, on_error="strict")
    with pytest.raises(DataError) as e:
        list(create_loader(config, JsonSource(path, images), tokenizer))
    assert e.value.sample_id in reasons and e.value.reason == reasons[e.value.sample_id]


def test_corrupt_image_is_blanked_out_of_its_row(bad_dataset, tokenizer):
    """A sample whose image fails after packing leaves padding, not orphan placeholders."""
    path, images, _, _ = bad_dataset
    source = JsonSource(path, images)
    # Only the truncated-image sample and good ones, packed two images per row.
    keep = [i for i in range(len(source)) if source[i]["id"] in ("truncated", "good0", "good1")]

    class Subset:
        def __len__(self):
            return len(keep)

        def __getitem__(self, i):
            return source[keep[i % len(keep)]]

    config = dataclasses.replace(CONFIG, global_batch_size=1, pack_window=3)
    loader = create_loader(config, Subset(), tokenizer)
    batches = list(loader)
    assert loader.skipped == {"corrupt_image": 1}
    n_images = sum(int(b["image_mask"].sum()) for b in batches)
    assert n_images == 2
    for batch in batches:
        check_layout(batch, config)
    assert os.path.exists(os.path.join(images, "truncated.jpg"))
    assert all(np.isfinite(b["images"]).all() for b in batches)


def test_skip_counts_survive_a_checkpoint(bad_dataset, tokenizer):
    """The counts a checkpoint stores are those of the batches returned so far, and a resumed loader goes on
    counting from them while it returns the same batches."""
    path, images, _, reasons = bad_dataset
    source = JsonSource(path, images)
    config = dataclasses.replace(CONFIG, num_epochs=None)
    loader = create_loader(config, source, tokenizer)
    first = [next(loader)]
    state = json.loads(json.dumps(loader.get_state()))  # what a checkpoint stores
    so_far = dict(loader.skipped)
    assert so_far == dict(collections.Counter(r for _, r in loader.recent_skips))
    assert sum(so_far.values()) == sum(int(b["skipped"].sum()) for b in first)
    assert 0 < sum(so_far.values()) < len(reasons)  # some, not all, of the bad samples met
    expected = [next(loader) for _ in range(8)]  # epochs on (22 samples): every bad one met again
    resumed = create_loader(config, source, tokenizer)
    resumed.set_state(state)
    assert dict(resumed.skipped) == so_far
    for a, b in zip([next(resumed) for _ in range(8)], expected):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert dict(resumed.skipped) == dict(loader.skipped)
    assert all(loader.skipped[r] > n for r, n in collections.Counter(reasons.values()).items())
