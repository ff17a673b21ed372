"""The engine in-process: which requests share the running state, rows joining it mid-decode, cancelled rows
freed and reused, and no compilation in steady state after the warm-up."""

import numpy as np
import pytest

from llava_jax.data.conversation import get_template
from llava_jax.data.image import load_image
from llava_jax.infer import continuous, decode
from llava_jax.infer.chat import load_pixels
from llava_jax.serve.batching import Engine, Job, NotReady, QueueFull, Sampling, _Run

QUESTIONS = ["What is in the image?", "Describe it.", "Which colour?", "Is it round?"]


def _job(sampling=Sampling(), max_tokens=8, sink=None, ids=(1, 2, 3)):
    return Job(np.asarray(ids, np.int32), None, max_tokens, sampling, (), sink or (lambda kind, payload: None))


def _image(seed: int):
    from tests.serve.conftest import png_bytes

    return load_image(png_bytes(np.random.default_rng(seed).integers(0, 255, (30, 30, 3), dtype=np.uint8)))


class _Answers:
    """Sinks that keep each request's events."""

    def __init__(self):
        self.events: dict[str, list] = {}

    def sink(self, name):
        self.events[name] = []
        return lambda kind, payload: self.events[name].append((kind, payload))

    def done(self, name) -> dict:
        kind, payload = self.events[name][-1]
        assert kind == "done", self.events[name]
        return payload


def _ask(engine, answers, name, image, question, max_tokens, **kwargs):
    ids = engine.encode([("user", question)], has_image=image is not None)
    pixels = None if image is None else load_pixels(image, engine.config)
    return Job(ids, pixels, max_tokens, Sampling(), (), answers.sink(name), **kwargs)


def _drain(engine) -> None:
    while engine._run is not None:
        engine._decode_chunk()


def test_waiting_requests_are_grouped_by_sampling_settings(model):
    engine = Engine(model, template=get_template("vicuna_v1"), max_batch=3, max_queue=7, batch_wait_s=0)
    with pytest.raises(NotReady):
        engine.submit(_job())
    engine.ready.set()  # no worker thread: requests are taken by hand below
    greedy = [_job() for _ in range(4)]
    sampled = [_job(Sampling(0.7, 0.9)) for _ in range(2)]
    seeded = _job(Sampling(0.7, 0.9, seed=1))
    order = [greedy[0], sampled[0], greedy[1], seeded, greedy[2], sampled[1], greedy[3]]
    for job in order:
        engine.submit(job)
    with pytest.raises(QueueFull):
        engine.submit(_job())
    greedy[3].cancelled.set()  # cancelled while waiting: dropped when the queue is looked through
    assert engine._take(None) == greedy[:3]
    assert engine._take(None) == sampled  # same temperature and top_p
    assert engine.stats["cancelled"] == 1 and engine.queue_depth() == 1
    assert engine._take(None) == [seeded]  # a seeded request runs alone (its draw is Llava.chat's)
    assert engine.queue_depth() == 0
    assert engine.buckets == [1, 2, 3]

    # A running greedy state with one live row of three: only greedy requests join it, oldest first,
    # and none while the oldest waiting request is a sampled one (the state drains for it first).
    run = _Run({"valid": np.zeros((2, 16), bool)}, [object(), None], ("greedy",), None, {})
    for job in [sampled[0], greedy[0]]:
        engine.submit(job)
    assert engine._take(run) == []
    assert engine._take(None) == [sampled[0]]
    for job in greedy[1:3] + [sampled[1], _job()]:
        engine.submit(job)
    assert engine._take(run) == [greedy[0], greedy[1]]  # two free rows (max_batch 3)
    seeded_run = _Run({"valid": np.zeros((1, 16), bool)}, [object()], seeded.sampling.batch_key(), None, {})
    assert engine._take(seeded_run) == []


def test_a_cancelled_row_stops_and_the_others_finish(model):
    engine = Engine(model, template=get_template("vicuna_v1"), max_batch=4, chunk_tokens=1)
    answers, image = _Answers(), _image(3)
    long_job = _ask(engine, answers, "long", image, "What is in the image?", 200, stream=True)
    sink = long_job.sink

    def long_sink(kind, payload):
        sink(kind, payload)
        long_job.cancelled.set()  # the client went away after its first words

    long_job.sink = long_sink
    jobs = [
        long_job,
        _ask(engine, answers, "image", image, "What is in the image?", 8, stream=True),
        _ask(engine, answers, "text", None, "Who are you?", 8, stream=True),
    ]
    engine._admit(jobs)  # 3 rows in the 4-row bucket: one filler prompt
    assert engine._run.shape[0] == 4
    _drain(engine)
    assert engine.stats["decode_steps"] < 200
    assert engine.stats["cancelled"] == 1 and engine.stats["completed"] == 2
    assert answers.events["long"] and all(kind == "delta" for kind, _ in answers.events["long"])
    for name, (img, question) in {"image": (image, "What is in the image?"), "text": (None, "Who are you?")}.items():
        done = answers.done(name)
        assert 1 <= done["completion_tokens"] <= 8
        assert done["text"] == model.chat(img, question, max_new_tokens=8)[0]
        assert "".join(p for k, p in answers.events[name] if k == "delta") == done["text"]


def test_rows_admitted_mid_decode_answer_as_chat(model):
    engine = Engine(model, template=get_template("vicuna_v1"), max_batch=4, chunk_tokens=2)
    answers, images = _Answers(), [_image(5), _image(6)]
    cases = {
        "first": (images[0], QUESTIONS[0], 14),
        "text": (None, "Tell me a long story about a cat and a dog.", 9),  # another prompt length
        "second": (images[1], QUESTIONS[1], 11),
        "late": (images[0], QUESTIONS[3], 6),
    }
    jobs = {name: _ask(engine, answers, name, *case) for name, case in cases.items()}
    engine._admit([jobs["first"]])
    engine._decode_chunk(steps=3)
    assert engine._run.shape[0] == 1 and engine._run.rows[0] is not None  # 4 tokens made, going on
    engine._admit([jobs["text"], jobs["second"]])  # joins: the state grows to 4 rows, row 0 goes on
    assert engine._run.shape[0] == 4 and engine._run.rows[0].job is jobs["first"]
    engine._decode_chunk(steps=2)
    engine._admit([jobs["late"]])  # into the free fourth row
    assert engine._run.live() == 4
    _drain(engine)
    assert engine.batch_sizes[4] >= 1 and engine.stats["completed"] == 4
    for name, (image, question, max_tokens) in cases.items():
        done = answers.done(name)
        assert done["text"] == model.chat(image, question, max_new_tokens=max_tokens)[0], name
        assert done["completion_tokens"] <= max_tokens


def test_a_cancelled_rows_slot_is_reused(model):
    engine = Engine(model, template=get_template("vicuna_v1"), max_batch=2, chunk_tokens=1)
    answers, image = _Answers(), _image(8)
    long_job = _ask(engine, answers, "long", image, "Describe it in great detail, please.", 100)
    short = _ask(engine, answers, "short", None, "Hi", 8)
    engine._admit([long_job, short])
    engine._decode_chunk(steps=5)
    long_job.cancelled.set()
    engine._decode_chunk(steps=1)
    assert engine._run.rows[0] is None and engine.stats["cancelled"] == 1
    shape = engine._run.shape
    late = _ask(engine, answers, "late", _image(9), QUESTIONS[2], 8)
    engine._admit([late])
    # The freed row (its cache still holding the cancelled answer's slots) serves the new request.
    assert engine._run.rows[0].job is late and engine._run.shape == shape
    _drain(engine)
    assert all(kind != "done" for kind, _ in answers.events["long"])
    assert answers.done("late")["text"] == model.chat(_image(9), QUESTIONS[2], max_new_tokens=8)[0]
    assert answers.done("short")["text"] == model.chat(None, "Hi", max_new_tokens=8)[0]


def test_steady_state_compiles_nothing_after_warmup(model):
    engine = Engine(model, template=get_template("vicuna_v1"), max_batch=4, chunk_tokens=1)
    engine.warmup(max_tokens=8)
    functions = [decode.prefill, continuous.empty_rows, continuous.admit, continuous.decode_rows]
    functions += [continuous.resize_rows, continuous.end_rows]
    compiled = [f._cache_size() for f in functions]
    answers = _Answers()
    jobs = [_ask(engine, answers, str(k), _image(20 + k), QUESTIONS[0], 8) for k in range(7)]
    engine._admit(jobs[:1])
    engine._decode_chunk(steps=2)
    engine._admit(jobs[1:3])  # 1 -> 4 rows
    engine._decode_chunk(steps=1)
    jobs[1].cancelled.set()  # the host ends a row the device still runs
    engine._decode_chunk(steps=1)
    engine._admit(jobs[3:5])
    _drain(engine)
    engine._admit(jobs[5:7])  # a new two-row state
    _drain(engine)
    assert [f._cache_size() for f in functions] == compiled
    assert engine.stats["completed"] == 6 and engine.stats["cancelled"] == 1


def test_a_seeded_sampled_request_draws_what_chat_draws(model):
    engine = Engine(model, template=get_template("vicuna_v1"), max_batch=4)
    answers, image = _Answers(), _image(11)
    ids = engine.encode([("user", QUESTIONS[1])], has_image=True)
    settings = Sampling(0.9, 0.95, seed=7)
    engine._admit([Job(ids, load_pixels(image, engine.config), 12, settings, (), answers.sink("seeded"))])
    assert engine._run.shape[0] == 1  # alone, in row 0: its keys are Llava.chat's
    _drain(engine)
    expected = model.chat(image, QUESTIONS[1], max_new_tokens=12, temperature=0.9, top_p=0.95, seed=7)[0]
    assert answers.done("seeded")["text"] == expected


def test_the_worker_admits_requests_into_its_running_decode(model):
    """The worker thread's own loop (a chunk queued ahead of the host): requests sent while a long
    answer streams join its decode, and every answer is Llava.chat's."""
    import threading

    engine = Engine(model, template=get_template("vicuna_v1"), max_batch=4, chunk_tokens=1)
    answers, image = _Answers(), _image(30)
    started = threading.Event()
    long_job = _ask(engine, answers, "long", image, QUESTIONS[0], 40, stream=True)
    sink = long_job.sink

    def long_sink(kind, payload):
        sink(kind, payload)
        started.set()

    long_job.sink = long_sink
    cases = {"long": (image, QUESTIONS[0], 40)}
    engine.start(warmup=False)
    try:
        assert engine.ready.wait(30)
        engine.submit(long_job)
        assert started.wait(120)  # its first words are out: it is decoding
        for k, question in enumerate(QUESTIONS[1:]):
            cases[question] = (_image(31 + k), question, 6 + k)
            engine.submit(_ask(engine, answers, question, *cases[question]))
        for name in cases:
            for _ in range(1200):
                if any(kind in ("done", "error") for kind, _ in answers.events[name]):
                    break
                threading.Event().wait(0.1)
    finally:
        engine.stop()
    assert max(engine.batch_sizes) >= 2 and engine.stats["completed"] == 4
    assert answers.done("long")["completion_tokens"] > 6  # the others joined while it went on
    for name, (img, question, max_tokens) in cases.items():
        assert answers.done(name)["text"] == model.chat(img, question, max_new_tokens=max_tokens)[0], name
