"""The batcher in-process: which requests share a batch, the queue limits, and a cancelled row ending early."""

import numpy as np
import pytest

from llava_jax.data.conversation import get_template
from llava_jax.data.image import load_image
from llava_jax.infer.chat import load_pixels
from llava_jax.serve.batching import Engine, Job, NotReady, QueueFull, Sampling


def _job(sampling=Sampling(), max_tokens=8, sink=None, ids=(1, 2, 3)):
    return Job(np.asarray(ids, np.int32), None, max_tokens, sampling, (), sink or (lambda kind, payload: None))


def test_waiting_requests_are_grouped_by_sampling_settings(model):
    engine = Engine(model, template=get_template("vicuna_v1"), max_batch=3, max_queue=7, batch_wait_s=0)
    with pytest.raises(NotReady):
        engine.submit(_job())
    engine.ready.set()  # no worker thread: batches are taken by hand below
    greedy = [_job() for _ in range(4)]
    sampled = [_job(Sampling(0.7, 0.9)) for _ in range(2)]
    seeded = _job(Sampling(0.7, 0.9, seed=1))
    order = [greedy[0], sampled[0], greedy[1], seeded, greedy[2], sampled[1], greedy[3]]
    for job in order:
        engine.submit(job)
    with pytest.raises(QueueFull):
        engine.submit(_job())
    greedy[3].cancelled.set()  # cancelled while waiting: dropped when its turn comes
    assert engine._take_batch() == greedy[:3]
    assert engine._take_batch() == sampled  # same temperature and top_p
    assert engine._take_batch() == [seeded]  # a seeded request runs alone (its draw is Llava.chat's)
    assert engine._take_batch() == [] and engine.stats["cancelled"] == 1
    assert engine.queue_depth() == 0
    assert engine.buckets == [1, 2, 3]


def test_a_cancelled_row_stops_and_the_batch_ends_with_the_others(model):
    from tests.serve.conftest import png_bytes

    engine = Engine(model, template=get_template("vicuna_v1"), max_batch=4, chunk_tokens=1)
    image = load_image(png_bytes(np.random.default_rng(3).integers(0, 255, (30, 30, 3), dtype=np.uint8)))
    ids = engine.encode([("user", "What is in the image?")], has_image=True)
    text_ids = engine.encode([("user", "Who are you?")], has_image=False)
    events = {"long": [], "image": [], "text": []}
    long_job = None

    def long_sink(kind, payload):
        events["long"].append(kind)
        long_job.cancelled.set()  # the client went away after its first words

    def sink(name):
        return lambda kind, payload: events[name].append((kind, payload))

    pixels = load_pixels(image, model.config)
    long_job = Job(ids, pixels, 200, Sampling(), (), long_sink, stream=True)
    jobs = [
        long_job,
        Job(ids, pixels, 8, Sampling(), (), sink("image"), stream=True),
        Job(text_ids, None, 8, Sampling(), (), sink("text"), stream=True),
    ]
    steps = engine.run_batch(jobs)  # 3 rows in the 4-row bucket: one filler row
    assert steps < 200 and engine.stats["cancelled"] == 1 and engine.stats["completed"] == 2
    assert engine.batch_sizes == {3: 1}
    assert "done" not in events["long"] and events["long"]  # it got words, then nothing more
    for name, (img, question) in {"image": (image, "What is in the image?"), "text": (None, "Who are you?")}.items():
        kind, done = events[name][-1]
        assert kind == "done" and 1 <= done["completion_tokens"] <= 8
        assert done["text"] == model.chat(img, question, max_new_tokens=8)[0]
        assert "".join(p for k, p in events[name] if k == "delta") == done["text"]
