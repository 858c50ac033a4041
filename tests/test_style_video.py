"""`adain-ext video`: frame count, frame rate, size, colours and the audio track survive; PyAV
stays optional."""
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


AUDIO_RATE, AUDIO_SECONDS = 16000, FRAMES / FPS


def _write_video_with_audio(av, path, codec="aac", sample_format="fltp"):
    """FRAMES video frames and AUDIO_SECONDS of a 440 Hz tone, interleaved."""
    with av.open(str(path), "w") as sink:
        video = sink.add_stream("mpeg4", rate=FPS)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        audio = sink.add_stream(codec, rate=AUDIO_RATE)
        audio.layout = "mono"
        t = np.arange(int(AUDIO_RATE * AUDIO_SECONDS)) / AUDIO_RATE
        tone = 0.3 * np.sin(2 * np.pi * 440 * t)
        tone = (tone * 32767).astype(np.int16) if sample_format == "s16" else tone.astype(np.float32)
        for i in range(FRAMES):
            rgb = np.full((H, W, 3), 30 * i, np.uint8)
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                sink.mux(packet)
        for start in range(0, len(tone), 1024):
            chunk = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format=sample_format,
                                               layout="mono")
            chunk.sample_rate, chunk.pts = AUDIO_RATE, start
            for packet in audio.encode(chunk):
                sink.mux(packet)
        for stream in (video, audio):
            for packet in stream.encode():
                sink.mux(packet)


def _audio_packets(path):
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None, []
        stream = container.streams.audio[0]
        packets = [(p.pts, bytes(p)) for p in container.demux(stream) if p.dts is not None]
        return stream.codec_context.name, packets


def test_video_copies_the_audio_track(setup, tmp_path):
    av = pytest.importorskip("av")
    source = tmp_path / "with_audio.mp4"
    _write_video_with_audio(av, source)
    codec, packets = _audio_packets(source)
    assert codec == "aac" and len(packets) > 5
    out = tmp_path / "styled.mp4"
    argv = _argv(setup, out)
    argv[2] = str(source)
    assert main(argv) == 0
    frames, rate = _read(out)
    assert len(frames) == FRAMES and rate == Fraction(FPS)
    out_codec, out_packets = _audio_packets(out)
    # Copied, not re-encoded: the same compressed packets.
    assert out_codec == "aac" and [p for _, p in out_packets] == [p for _, p in packets]
    silent = tmp_path / "silent.mp4"
    assert main(_argv(setup, silent, "--no_audio")[:2] + [str(source)] +
                _argv(setup, silent, "--no_audio")[3:]) == 0
    assert _audio_packets(silent) == (None, [])
    assert len(_read(silent)[0]) == FRAMES


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


def test_video_drops_audio_the_output_cannot_hold(setup, tmp_path, capsys):
    av = pytest.importorskip("av")
    if "pcm_mulaw" not in av.codecs_available:
        pytest.skip("this PyAV's FFmpeg has no pcm_mulaw encoder to make the test input")
    source = tmp_path / "mulaw.avi"  # AVI holds mu-law audio; MP4 cannot
    _write_video_with_audio(av, source, codec="pcm_mulaw", sample_format="s16")
    assert _audio_packets(source)[0] == "pcm_mulaw"
    out = tmp_path / "styled.mp4"
    argv = _argv(setup, out)
    argv[2] = str(source)
    assert main(argv) == 0
    assert "written without it" in capsys.readouterr().err
    assert _audio_packets(out) == (None, [])
    assert len(_read(out)[0]) == FRAMES


def test_video_frames_match_the_reference_pipeline(setup, tmp_path, monkeypatch):
    """Every frame the command stylizes (--alpha and --style_interpolation_weights over two
    styles) is the reference pipeline's image of the decoded input frame: test.py's K AdaINs
    summed with the weights, blended with the content features by alpha, decoded."""
    import av
    import torch

    from adain_ext import reference
    from adain_ext.style_transfer import images
    from adain_ext.style_transfer.reference import reference_encoder

    style2 = write_png(tmp_path / "style2.png", random_image(40, 36, 41))
    seen = []
    stylize = StyleTransfer.stylize

    def recording(self, content, *args, **kwargs):
        out = stylize(self, content, *args, **kwargs)
        seen.extend(out.float())
        return out

    monkeypatch.setattr(StyleTransfer, "stylize", recording)
    out = tmp_path / "styled.mp4"
    argv = _argv(setup, out, "--alpha", "0.6", "--style_interpolation_weights", "1,3",
                 "--batch_size", "4")
    argv[4] = f"{setup / 'style.png'},{style2}"
    assert main(argv) == 0
    assert len(seen) == FRAMES
    encoder = reference_encoder(random_vgg(num_modules=31))
    decoder = random_decoder()
    style_fs = [encoder(images.load_image(p, 32)[None]) for p in (setup / "style.png", style2)]
    with av.open(str(setup / "in.mp4")) as container, torch.no_grad():
        for index, frame in enumerate(container.decode(container.streams.video[0])):
            content = torch.from_numpy(frame.to_ndarray(format="rgb24").transpose(2, 0, 1).copy())
            content_f = encoder(content.float().div(255)[None])
            feat = sum(w * reference.adaptive_instance_normalization(content_f, s)
                       for w, s in zip((0.25, 0.75), style_fs))
            want = decoder(0.6 * feat + 0.4 * content_f)[0, :, :H, :W]
            torch.testing.assert_close(seen[index], want, atol=1e-4, rtol=1e-4,
                                       msg=lambda m: f"frame {index}: {m}")
