"""The `llava-jax` dispatcher: expected errors in one line and exit status 2, tracebacks only with --debug."""

import io
import struct
import zlib

import pytest
from PIL import Image

from llava_jax import cli
from llava_jax.cli import main


def test_an_expected_error_is_one_line_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "nope.json"
    assert main(["data", "pack", str(missing), str(tmp_path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == f"llava-jax data: error: {missing}: No such file or directory (--debug for the traceback)\n"


@pytest.mark.parametrize("how", ["flag_first", "flag_last", "env"])
def test_debug_shows_the_traceback(tmp_path, monkeypatch, how):
    argv = ["data", "pack", str(tmp_path / "nope.json"), str(tmp_path), str(tmp_path / "out")]
    if how == "flag_first":
        argv = ["--debug", *argv]
    elif how == "flag_last":
        argv = [*argv, "--debug"]
    else:
        monkeypatch.setenv("LLAVA_JAX_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(argv)


def _patch_run(monkeypatch, error):
    from llava_jax.cli import export

    def run(args):
        raise error

    monkeypatch.setattr(export, "run", run)
    return ["export", "a", "b"]


def test_a_bug_keeps_its_traceback(monkeypatch):
    with pytest.raises(KeyError, match="bug"):
        main(_patch_run(monkeypatch, KeyError("bug")))


def test_a_diverged_run_is_an_expected_error(monkeypatch, capsys):
    from llava_jax.train.guards import TrainingDiverged

    argv = _patch_run(monkeypatch, TrainingDiverged("step 3: non-finite loss (nan)\n  detail"))
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "llava-jax export: error: step 3: non-finite loss (nan) detail (--debug for the traceback)\n"
    )
    assert cli.is_expected(ValueError()) and not cli.is_expected(RuntimeError())


def _huge_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_chat_with_a_400_megapixel_image_is_one_line_with_the_way_out(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    image = tmp_path / "huge.png"
    image.write_bytes(_huge_png(20_000, 20_000))
    # The image is checked before the model loads: no model needed to see the error.
    assert main(["chat", "--model", str(tmp_path / "no_model"), "--image", str(image), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("llava-jax chat: error: cannot read image")
    assert "400000000 pixels" in err and "exceeds limit of 178956970 pixels" in err and "--max-image-pixels" in err
    # --max-image-pixels moves the limit both ways.
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 30)).save(photo)
    argv = ["chat", "--model", str(tmp_path / "no_model"), "--image", str(photo), "--prompt", "hi"]
    assert main([*argv, "--max-image-pixels", "1000"]) == 2
    assert "1200 pixels" in capsys.readouterr().err
    assert main([*argv, "--max-image-pixels", "1200"]) == 2
    assert "cannot load model" in capsys.readouterr().err  # past the image, on to the (missing) model
