"""`adain-ext video`: stylizes a video frame by frame (needs PyAV: pip install av).

The style statistics are computed once; frames are decoded as RGB (the Torch7 script's BGR/RGB
swap does not happen here), stylized in batches, clamped to [0, 1], and encoded at the source
frame rate. The first audio track is copied unchanged (no re-encoding) when the output container
can hold its codec (else it is dropped with a warning; --no_audio drops it). The output is written
to a temp file and renamed, so an error leaves no partial video.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from adain_ext.style_transfer import images, models
from adain_ext.style_transfer._runtime import (
    UsageError,
    progress,
    resolve_device,
    resolve_dtype,
    run_command,
    warn,
)
from adain_ext.style_transfer.network import StyleTransfer, normalize_weights

INSTALL = "stylizing video needs PyAV: pip install av   (or pip install 'adain_ext[video]')"


def _av():
    try:
        import av
    except ImportError:
        raise UsageError(INSTALL) from None
    return av


def build_parser(prog: str = "adain-ext video") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Stylize a video frame by frame with AdaIN.")
    p.add_argument("--content", "--input", dest="content", required=True, help="input video")
    p.add_argument("--style", required=True, help="style image, or a comma-separated list")
    p.add_argument("--style_interpolation_weights", type=str, default="")
    p.add_argument("--vgg", default="models/vgg_normalised.pth")
    p.add_argument("--decoder", default="models/decoder.pth")
    p.add_argument("--content_size", type=int, default=0,
                   help="shorter side of the frames (0 keeps the video's size)")
    p.add_argument("--style_size", type=int, default=512)
    p.add_argument("--crop", action="store_true", help="centre-crop the style to a square")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--output", default=None,
                   help="output file (default: output/{video}_stylized_{style}.mp4)")
    p.add_argument("--codec", default="libx264", help="video codec (falls back to mpeg4)")
    p.add_argument("--crf", type=int, default=18, help="quality for libx264")
    p.add_argument("--no_audio", action="store_true",
                   help="drop the audio track (default: copy the first one unchanged)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format (default: on)")
    p.add_argument("--batch_size", type=int, default=4, help="frames stylized together")
    p.add_argument("--backend", default="auto", choices=["auto", "cpp", "triton", "reference"])
    p.add_argument("--no_progress", action="store_true")
    return p


def _frame_tensor(frame, size: int) -> torch.Tensor:
    rgb = frame.to_ndarray(format="rgb24")
    if size > 0:
        Image, _ = images._pil()
        rgb = np.asarray(images.resize_shorter(Image.fromarray(rgb), size))
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255)


def run(args) -> int:
    av = _av()
    source = Path(args.content)
    if not source.is_file():
        raise UsageError(f"video not found: {source}")
    styles = [Path(s.strip()) for s in args.style.split(",") if s.strip()]
    for s in styles:
        if not s.is_file():
            raise UsageError(f"style image not found: {s}")
    if not 0.0 <= args.alpha <= 1.0:
        raise UsageError(f"--alpha must be in [0, 1], got {args.alpha}")
    try:
        weights = normalize_weights([float(w) for w in args.style_interpolation_weights.split(",")]
                                    if args.style_interpolation_weights else None, len(styles))
    except ValueError as error:
        raise UsageError(f"--style_interpolation_weights: {error}") from None
    output = Path(args.output) if args.output else Path("output") / (
        f"{source.stem}_stylized_{'_'.join(s.stem for s in styles)}.mp4")
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    channels_last = args.channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    try:
        net = StyleTransfer(models.load_vgg(args.vgg), models.load_decoder(args.decoder),
                            backend=args.backend).to(device, dtype).eval()
        style_images = [images.load_image(s, args.style_size, args.crop) for s in styles]
    except (FileNotFoundError, models.WeightsError, images.ImageError) as error:
        raise UsageError(str(error)) from None
    if channels_last:
        net = net.to(memory_format=torch.channels_last)

    def prepare(x):
        return x.to(device, dtype).contiguous(memory_format=memory_format)

    try:
        container = av.open(str(source))
    except Exception as error:  # noqa: BLE001  (PyAV raises its own types, av.error.*)
        raise UsageError(f"cannot open video {source}: {error}") from None
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.stem}.", suffix=output.suffix or ".mp4")
    os.close(fd)
    try:
        with container, torch.inference_mode():
            if not container.streams.video:
                raise UsageError(f"{source} has no video stream")
            stream = container.streams.video[0]
            audio_in = None if args.no_audio or not container.streams.audio else \
                container.streams.audio[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            stats = [net.style_stats(prepare(s[None])) for s in style_images]
            total = stream.frames or 0
            with av.open(tmp, mode="w", format=None if output.suffix else "mp4") as sink, \
                    progress(total, "video", args.no_progress) as bar:
                out_stream = audio_out = None
                pending: list[torch.Tensor] = []
                audio_backlog: list = []  # audio packets demuxed before the output streams exist

                def flush():
                    nonlocal out_stream, audio_out
                    batch = prepare(torch.stack(pending))
                    frames = net.stylize(batch, stats, weights, args.alpha).float().clamp_(0, 1)
                    for frame in frames:
                        rgb = frame.mul(255).add_(0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
                        # yuv420p needs even sizes: drop at most one last row/column.
                        rgb = np.ascontiguousarray(rgb[: rgb.shape[0] // 2 * 2, : rgb.shape[1] // 2 * 2])
                        if out_stream is None:
                            # Every stream is added before the first packet writes the header.
                            out_stream = _open_stream(av, sink, args, rate, rgb.shape[1], rgb.shape[0])
                            audio_out = _copy_stream(sink, audio_in, output)
                            for packet in audio_backlog:
                                mux_audio(packet)
                            audio_backlog.clear()
                        for packet in out_stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                            sink.mux(packet)
                    bar.update(len(pending))
                    pending.clear()

                def mux_audio(packet):
                    if out_stream is None:
                        audio_backlog.append(packet)
                    elif audio_out is not None:
                        packet.stream = audio_out  # copied as is; the muxer interleaves by time
                        sink.mux(packet)

                for packet in container.demux(*[s for s in (stream, audio_in) if s is not None]):
                    if packet.stream.index != stream.index:
                        if packet.dts is not None:  # a demuxer's flush packet carries nothing
                            mux_audio(packet)
                        continue
                    for frame in packet.decode():
                        pending.append(_frame_tensor(frame, args.content_size))
                        if len(pending) >= max(1, args.batch_size):
                            flush()
                if pending:
                    flush()
                if out_stream is None:
                    raise UsageError(f"{source} has no decodable frames")
                for packet in out_stream.encode():
                    sink.mux(packet)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"wrote {output}", file=sys.stderr)
    return 0


def _copy_stream(sink, audio_in, output: Path):
    """An output stream that takes audio_in's packets unchanged, or None (no audio, or a codec
    the output container cannot hold: then the video is still written, without sound)."""
    if audio_in is None:
        return None
    codec = audio_in.codec_context.name
    supported = getattr(sink, "supported_codecs", None)  # PyAV >= 13; older ones fail at the mux
    if supported is not None and codec not in supported:
        warn(f"the audio track ({codec}) cannot be stored in {output.suffix or 'mp4'} files; "
             "the video is written without it (choose another --output extension, e.g. .mkv)")
        return None
    if hasattr(sink, "add_stream_from_template"):  # PyAV >= 14
        return sink.add_stream_from_template(audio_in)
    return sink.add_stream(template=audio_in)


def _open_stream(av, sink, args, rate, width, height):
    codec = args.codec if args.codec in av.codecs_available else "mpeg4"
    stream = sink.add_stream(codec, rate=rate)
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p"
    if codec == "libx264":
        stream.options = {"crf": str(args.crf)}
    return stream


def main(argv: list[str] | None = None) -> int:
    return run_command("video", build_parser, run, argv)
