"""`adain-ext video`: frame count, frame rate, size and colours survive; PyAV stays optional."""
from __future__ import annotations

import sys
import warnings
from fractions import Fraction

import numpy as np
import pytest

pytest.importorskip("PIL", reason="the style-transfer tests need Pillow (pip install Pillow)")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import adain_ext  # noqa: F401
from style_helpers import one_thread, random_decoder, random_image, random_vgg, write_png  # noqa: F401

from adain_ext.cli import main
from adain_ext.style_transfer import models
from adain_ext.style_transfer.network import StyleTransfer

FRAMES, FPS, H, W = 6, 12, 40, 48


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    av = pytest.importorskip("av", reason="video needs PyAV (pip install av)")
    root = tmp_path_factory.mktemp("video")
    models.write_state_dict(random_vgg(num_modules=31).state_dict(), root / "vgg.pth")
    models.write_state_dict(random_decoder().state_dict(), root / "decoder.pth")
    write_png(root / "style.png", random_image(32, 32, 40))
    with av.open(str(root / "in.mp4"), "w") as sink:
        stream = sink.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(FRAMES):
            rgb = np.zeros((H, W, 3), np.uint8)
            rgb[..., 0] = 220  # red: a BGR/RGB swap would turn it blue
            rgb[:, : 8 * (i + 1), 1] = 60
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                sink.mux(packet)
        for packet in stream.encode():
            sink.mux(packet)
    return root


def _read(path):
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, stream.average_rate


def _argv(root, out, *extra):
    return ["video", "--content", str(root / "in.mp4"), "--style", str(root / "style.png"),
            "--vgg", str(root / "vgg.pth"), "--decoder", str(root / "decoder.pth"),
            "--output", str(out), "--no_progress", "--style_size", "32", *extra]


def test_video_frames_rate_size(setup, tmp_path):
    out = tmp_path / "styled.mp4"
    assert main(_argv(setup, out, "--batch_size", "4")) == 0
    frames, rate = _read(out)
    assert len(frames) == FRAMES and rate == Fraction(FPS)
    assert frames[0].shape == (H, W, 3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_video_colours_are_rgb(setup, tmp_path, monkeypatch):
    # An identity "stylization" isolates decoding, RGB handling, clamping and encoding.
    monkeypatch.setattr(StyleTransfer, "stylize", lambda self, content, *a, **k: content * 1.5 - 0.2)
    out = tmp_path / "identity.mp4"
    assert main(_argv(setup, out)) == 0
    frames, _ = _read(out)
    first = frames[0].astype(np.float32)
    assert first[..., 0].mean() > 240 and first[..., 2].mean() < 30  # red stays red, clamped


def test_video_errors(setup, tmp_path, capsys, monkeypatch):
    out = tmp_path / "x.mp4"
    (tmp_path / "not_a_video.mp4").write_bytes(b"garbage")
    argv = _argv(setup, out)
    argv[2] = str(tmp_path / "not_a_video.mp4")
    assert main(argv) == 1
    assert "cannot open video" in capsys.readouterr().err and not out.exists()
    assert not list(tmp_path.glob(".*"))
    monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
    assert main(_argv(setup, out)) == 1
    assert "pip install av" in capsys.readouterr().err
