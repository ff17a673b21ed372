"""notebooks/inference.ipynb runs top to bottom on the tiny model it builds, with the expected outputs."""

import os

import pytest

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "..", "notebooks", "inference.ipynb")


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")


@pytest.mark.slow
def test_inference_notebook_runs(monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.delenv("LLAVA_MODEL", raising=False)  # the tiny model path of the notebook
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # One CPU device in the kernel (a faster start); the suite's other XLA flags stay.
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    monkeypatch.setenv("XLA_FLAGS", " ".join(flags))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}
    ).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    texts = [_text(c) for c in code]
    everything = "\n".join(texts)
    assert "tokens per image" in everything
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs)  # the photos are shown
    assert "ASSISTANT:" in everything
    assert "batch == one-at-a-time: True" in everything
    assert "same seed, same answer: True" in everything
    assert "new tokens (2, 8)" in everything
