"""Training guards: divergence (non-finite, loss spikes) with an honest last good checkpoint, and skipped data."""

import collections
import os

import jax.numpy as jnp
import numpy as np
import pytest

from llava_jax.train.guards import DivergenceGuard, SkipGuard, TooManySkipped, TrainingDiverged

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny.py")


def _feed(guard, losses, checkpoints=(), tokens=None):
    """Observe `losses` as steps 1.. (host values); returns the step that stopped, or None."""
    for step, loss in enumerate(losses, start=1):
        n = 1 if tokens is None else tokens[step - 1]
        guard.observe(step, loss, 1.0, n, checkpoints, "/ckpt")
    return None


def test_a_finite_divergence_stops_and_names_the_checkpoint_before_the_first_spike():
    # lr 1e2 on the tiny model (measured): 6.7, then 2.0e5, 3.5e5, 3.9e5, ...
    losses = [6.73, 6.70, 6.68, 2.0e5, 3.5e5, 3.9e5, 4.5e5]
    with pytest.raises(TrainingDiverged) as info:
        _feed(DivergenceGuard(), losses, checkpoints=[1, 2, 3, 4, 5])
    text = str(info.value)
    assert text.startswith("step 6: loss 3.9e+05 above 10 x its running median 6.7 for 3 steps in a row")
    # Step 4's loss was computed on the weights saved as step 3: the last good one is step 2.
    assert "The last good checkpoint is step 2 in /ckpt" in text and "loss spike to 2e+05 at step 4" in text


def test_noise_an_isolated_spike_and_small_losses_do_not_stop():
    rng = np.random.default_rng(0)
    losses = list(2.0 * np.exp(rng.normal(0, 0.3, 300)))  # +-30% noise around 2
    losses[100] = 60.0  # one bad batch, then back to normal
    losses[200:202] = [80.0, 90.0]  # two in a row: below spike_steps=3
    _feed(DivergenceGuard(), losses)
    # Near zero, a tenfold jump is not a divergence unless it is also spike_min_delta above the median.
    _feed(DivergenceGuard(), [0.01] * 50 + [0.5] * 50)
    # Steps without supervised tokens (loss 0) are not part of the median.
    _feed(DivergenceGuard(), [2.0, 0.0, 0.0, 0.0, 2.1, 2.2], tokens=[5, 0, 0, 0, 5, 5])
    # spike_factor 0: no spike guard at all.
    _feed(DivergenceGuard(spike_factor=0), [2.0] + [1e9] * 10)


def test_non_finite_names_the_spike_that_preceded_it():
    with pytest.raises(TrainingDiverged) as info:
        _feed(DivergenceGuard(), [5.0, 5.1, 5.0, 5e4, float("nan")], checkpoints=[1, 2, 3, 4])
    text = str(info.value)
    assert text.startswith("step 5: non-finite loss (nan)")
    assert "The last good checkpoint is step 2" in text and "loss spike to 5e+04 at step 4" in text


def test_non_finite_without_an_earlier_checkpoint_says_so():
    # lr 1e30 (test_loop): step 2 is already non-finite; checkpoint 1 holds the weights that produced it.
    with pytest.raises(TrainingDiverged) as info:
        _feed(DivergenceGuard(), [10.4, float("inf")], checkpoints=[1])
    text = str(info.value)
    assert text.startswith("step 2: non-finite loss (inf)")
    assert "No kept checkpoint precedes the first warning sign (non-finite loss or gradient norm at step 2)" in text


def test_recorded_device_values_are_all_judged_at_the_next_check():
    """The loop fetches metrics every log_every steps; the guard still sees each step in between."""
    guard = DivergenceGuard(spike_steps=1)
    for step, loss in enumerate([3.0, 3.1, 300.0, 3.0], start=1):
        metrics = {"train/loss": jnp.float32(loss), "train/grad_norm": jnp.float32(1.0), "train/tokens": jnp.int32(7)}
        guard.record(step, metrics)
    with pytest.raises(TrainingDiverged, match=r"^step 3: loss 300 above"):
        guard.check([1, 2], "/ckpt")
    guard.check()  # nothing left pending
    guard.record(9, {"train/loss": jnp.float32(np.nan), "train/grad_norm": jnp.float32(1.0)})
    with pytest.raises(TrainingDiverged, match="step 9: non-finite"):
        guard.check()


class FakeLoader:
    def __init__(self, samples, skips):
        self.samples = samples
        self.recent_skips = collections.deque(skips)
        self.skipped = collections.Counter(reason for _, reason in skips)


def _skips(n, reason="missing_image"):
    return [(f"ex{i}", reason) for i in range(n)]


def test_no_surviving_sample_stops_early_with_reasons_and_ids():
    guard = SkipGuard(check_after=1000)
    guard.check(FakeLoader(0, _skips(31)))  # too few to judge yet
    with pytest.raises(TooManySkipped) as info:
        guard.check(FakeLoader(0, _skips(32)))
    text = str(info.value)
    assert "no sample survived: all 32 read were skipped" in text
    assert "top reasons: missing_image 32" in text and "e.g. ex0 (missing_image), ex1" in text
    assert "data.image_root" in text


def test_the_skip_fraction_is_judged_after_check_after_and_at_the_end():
    guard = SkipGuard(max_fraction=0.05, check_after=100)
    guard.check(FakeLoader(40, _skips(10)))  # 20% of 50 read: too early to judge mid-run
    with pytest.raises(TooManySkipped, match=r"10 of 50 samples skipped \(20.0%, above data.max_skip_fraction=0.05\)"):
        guard.check(FakeLoader(40, _skips(10)), final=True)
    with pytest.raises(TooManySkipped, match="10 of 110 samples skipped"):
        guard.check(FakeLoader(100, _skips(10)))
    guard.check(FakeLoader(200, _skips(10)), final=True)  # 4.8%: accepted
    # max_fraction 1 accepts any fraction, never a run that used no sample.
    SkipGuard(max_fraction=1.0).check(FakeLoader(1, _skips(99)), final=True)
    with pytest.raises(TooManySkipped, match="no sample survived"):
        SkipGuard(max_fraction=1.0).check(FakeLoader(0, _skips(5)), final=True)
    with pytest.raises(TooManySkipped, match="the data of 5 examples yielded no batch"):
        guard.check(FakeLoader(0, []), final=True, num_examples=5)


# ------------------------------------------------------------------ through the trainer
@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    from llava_jax.demo.synthetic import write_synthetic_dataset

    out = str(tmp_path_factory.mktemp("guard_data"))
    write_synthetic_dataset(out, num_captions=32, num_qa=8, num_eval=2, image_size=56, seed=0)
    return out


def _config(synthetic_dir, *overrides):
    from llava_jax.train.experiment import load_config

    return load_config(
        f"{TINY}:pretrain",
        [
            f"--config.data.json={synthetic_dir}/stage1_captions.json",
            f"--config.data.image_root={synthetic_dir}/images",
            "--config.progress=False",
            "--config.batch_size=8",
            *overrides,
        ],
    )


@pytest.mark.slow
def test_unusable_images_stop_the_trainer_before_the_first_step(synthetic_dir, tmp_path):
    """Image files that exist but do not decode pass the up-front check; the skip guard stops the run."""
    import json
    import shutil

    from llava_jax.train.loop import run

    with open(f"{synthetic_dir}/stage1_captions.json") as f:
        refs = {e["image"] for e in json.load(f)}
    for ref in refs:
        (tmp_path / "broken" / ref).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "broken" / ref).write_text("not an image")
    cfg = _config(synthetic_dir, f"--config.data.image_root={tmp_path / 'broken'}", "--config.batch_size=32")
    with pytest.raises(
        TooManySkipped, match=r"no sample survived: all 32 read were skipped; top reasons: corrupt_image"
    ):
        run(cfg, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "final")
    assert not os.listdir(tmp_path / "run" / "checkpoints")
    shutil.rmtree(tmp_path / "broken")


@pytest.mark.slow
def test_a_finite_divergence_stops_the_trainer_before_final(synthetic_dir, tmp_path):
    """lr 1e2 with the LLM trained: 6.7 -> 2e5. Warmup keeps step 1's update at lr 0, so checkpoint 1 is good
    and checkpoint 2 (after the first real update, whose loss at step 3 spiked) is not."""
    from llava_jax.train.loop import run

    cfg = _config(
        synthetic_dir,
        "--config.trainable=('^projector/','^llm/')",
        "--config.optim.lr=1e2",
        "--config.optim.warmup_ratio=0.5",
        "--config.num_steps=8",
        "--config.checkpoint.every_steps=1",
        "--config.checkpoint.keep=10",
        "--config.checkpoint.async_save=False",
    )
    with pytest.raises(TrainingDiverged) as info:
        run(cfg, str(tmp_path / "run"))
    text = str(info.value)
    assert text.startswith("step 5: loss") and "for 3 steps in a row" in text
    assert "The last good checkpoint is step 1" in text and "at step 3" in text
    assert not os.path.exists(tmp_path / "run" / "final")
    kept = sorted(int(d) for d in os.listdir(tmp_path / "run" / "checkpoints") if d.isdigit())
    assert kept == [1, 2, 3, 4]  # saved while the spikes were fewer than spike_steps; none after the stop
