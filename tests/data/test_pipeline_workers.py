"""grain worker processes end with the trainer, even when it is SIGKILLed (`pipeline.exit_with_parent`)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TRAINER = textwrap.dedent(
    """
    import multiprocessing, sys, time
    from llava_jax.data.pipeline import DataConfig, create_loader
    from llava_jax.data.sources import open_source
    from llava_jax.demo.synthetic import synthetic_tokenizer, write_synthetic_dataset

    write_synthetic_dataset(sys.argv[1], num_captions=16, num_qa=4, num_eval=4, image_size=56, seed=0)
    config = DataConfig(template="plain", image_mode="square", image_size=56, image_seq_length=16,
                        image_token_index=768, max_length=256, global_batch_size=2, num_epochs=None,
                        num_workers=2, pad_token_id=0)
    source = open_source(f"{sys.argv[1]}/stage1_captions.json", f"{sys.argv[1]}/images")
    loader = create_loader(config, source, synthetic_tokenizer(), process_index=0, process_count=1)
    next(loader)
    print(*[p.pid for p in multiprocessing.active_children() if p.name.startswith("grain")], flush=True)
    time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited (its reaper may be slow)
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_trainer_is_killed(tmp_path):
    trainer = subprocess.Popen(
        [sys.executable, "-c", TRAINER, str(tmp_path / "data")],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = trainer.stdout.readline()
        assert line.strip(), trainer.stderr.read()[-3000:] if trainer.poll() is not None else "no worker pids"
        workers = [int(p) for p in line.split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(timeout=30)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        left = [p for p in workers if _alive(p)]
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
    for pid in left:  # leave nothing behind, then fail
        os.kill(pid, signal.SIGKILL)
    assert not left, f"grain workers {left} outlived the SIGKILLed trainer"
