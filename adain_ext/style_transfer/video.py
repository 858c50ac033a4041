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
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from adain_ext import functional
from adain_ext.style_transfer import _checks, images, models
from adain_ext.style_transfer._runtime import (
    CommandFailed,
    UsageError,
    progress,
    remove_stale_temps,
    resolve_device,
    resolve_dtype,
    run_command,
    warn,
)
from adain_ext.style_transfer._output import OutputError, atomic_output, is_write_failure, name_too_long
from adain_ext.style_transfer.network import StyleTransfer, normalize_weights

INSTALL = "stylizing video needs PyAV: pip install av   (or pip install 'adain_ext[video]')"


def _av():
    try:
        import av
    except ImportError:
        raise CommandFailed(INSTALL) from None
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
    p.add_argument("--overwrite", action="store_true",
                   help="replace the output file if it exists (without it an existing file is refused)")
    p.add_argument("--codec", default="libx264",
                   help="video encoder (default libx264, or mpeg4 where FFmpeg lacks it)")
    p.add_argument("--crf", type=int, default=18, help="quality for libx264")
    p.add_argument("--no_audio", action="store_true",
                   help="drop the audio track (default: copy the first one unchanged)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format (default: on)")
    p.add_argument("--batch_size", type=int, default=4, help="frames stylized together")
    p.add_argument("--backend", default="auto", choices=functional.BACKENDS)
    p.add_argument("--no_progress", action="store_true")
    return p


def _frame_tensor(frame, size: int) -> torch.Tensor:
    rgb = images.resize_shorter_array(frame.to_ndarray(format="rgb24"), size)
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255)


def _check_output(av, args, source: Path, styles: list[Path], output: Path) -> str:
    """The output can be written, is none of the inputs, does not exist (unless --overwrite), and
    its container can hold the codec; returns the container format's name."""
    _checks.output_file("--output", output)
    if _checks.same_file(source, output) or source.resolve() == output.resolve():
        raise UsageError(f"--output: {output} is the input video; choose another file name")
    _checks.not_an_input("--output", output, {"--style": styles, "--vgg": [Path(args.vgg)],
                                              "--decoder": [Path(args.decoder)]})
    if name_too_long(output):
        raise UsageError(f"--output: the file name {output.name[:40]}... is longer than the file "
                         "system allows")
    if os.path.lexists(output) and not args.overwrite:
        raise UsageError(f"--output: {output} exists; pass --overwrite to replace it")
    if args.codec != "libx264" or args.codec in av.codecs_available:
        try:
            codec = av.Codec(args.codec, "w")
        except Exception:  # noqa: BLE001  (av.codec.codec.UnknownCodecError and kin)
            raise UsageError(f"--codec: FFmpeg here has no {args.codec!r} encoder "
                             "(try libx264 or mpeg4)") from None
        if codec.type != "video":
            raise UsageError(f"--codec: {args.codec} is an {codec.type} codec, not a video one")
    # Opening for writing is lazy (nothing is created until a stream is added): FFmpeg picks the
    # container from the name, in a folder that does not exist so that nothing can be created.
    probe = Path("/nonexistent-adain-ext-probe") / f"probe{output.suffix}"
    try:
        sink = av.open(str(probe), mode="w", format=None if output.suffix else "mp4")
    except ValueError:
        raise UsageError(f"--output: FFmpeg knows no container for {output.suffix!r} files "
                         "(use .mp4, .mkv, .mov, ...)") from None
    with sink:
        codec = _codec_name(av, args)
        supported = getattr(sink, "supported_codecs", None)
        if supported is not None and codec not in supported:
            raise UsageError(f"--codec: {sink.format.name} files cannot hold {codec} video")
        return sink.format.name


def _codec_name(av, args) -> str:
    return args.codec if args.codec in av.codecs_available else "mpeg4"


def _expected_frames(stream, container) -> int | None:
    """How many frames the container says the stream has (None when it does not say)."""
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate
    if stream.duration and stream.time_base and rate:
        return round(stream.duration * stream.time_base * rate)
    if container.duration and rate:
        return round(container.duration / 1_000_000 * rate)  # av.time_base is microseconds
    return None


def run(args) -> int:
    av = _av()
    source = _checks.input_file("--content", args.content, "video")
    styles = [_checks.input_file("--style", s.strip(), "style image")
              for s in args.style.split(",") if s.strip()]
    _checks.finite("--alpha", args.alpha, 0.0, 1.0)
    _checks.image_size("--content_size", args.content_size)
    _checks.image_size("--style_size", args.style_size)
    _checks.at_least("--batch_size", args.batch_size, 1)
    _checks.finite("--crf", args.crf, 0, 51)
    try:
        weights = normalize_weights(_checks.weights("--style_interpolation_weights",
                                                    args.style_interpolation_weights), len(styles))
    except ValueError as error:
        raise UsageError(f"--style_interpolation_weights: {error}") from None
    output = Path(args.output) if args.output else Path("output") / (
        f"{source.stem}_stylized_{'_'.join(s.stem for s in styles)}.mp4")
    container_format = _check_output(av, args, source, styles, output)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    _checks.backend("--backend", args.backend, device)
    if args.content_size:
        _checks.fits_memory("--content_size", f"{args.batch_size} frame(s) of at least "
                            f"{args.content_size}x{args.content_size} pixels",
                            args.content_size ** 2 * args.batch_size, dtype, device)
    _checks.weights_file("--vgg", args.vgg)
    _checks.weights_file("--decoder", args.decoder)
    try:
        style_images = [images.load_image(s, args.style_size, args.crop) for s in styles]
    except images.ImageError as error:
        raise CommandFailed(f"--style: {error}") from None
    for path, style in zip(styles, style_images):
        if _checks.too_small(style.shape[-1], style.shape[-2]):
            raise UsageError(f"--style_size: style {path} is {style.shape[-1]}x{style.shape[-2]}, "
                             f"below the encoder's smallest side ({_checks.MIN_IMAGE_SIDE} pixels)")
    try:
        container = av.open(str(source))
    except Exception as error:  # noqa: BLE001  (PyAV raises its own types, av.error.*)
        raise CommandFailed(f"cannot open video {source}: {error}") from None
    with container:
        if not container.streams.video:
            raise CommandFailed(f"{source} has no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if not args.content_size and width and height and _checks.too_small(width, height):
            raise UsageError(f"--content_size: the frames are {width}x{height}, below the encoder's "
                             f"smallest side; give --content_size {_checks.MIN_IMAGE_SIDE} or more")
        channels_last = args.channels_last
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        net = StyleTransfer(_checks.load_weights("--vgg", models.load_vgg, args.vgg),
                            _checks.load_weights("--decoder", models.load_decoder, args.decoder),
                            backend=args.backend).to(device, dtype).eval()
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        _stylize(av, args, net, prepare=lambda x: x.to(device, dtype).contiguous(memory_format=memory_format),
                 container=container, stream=stream, style_images=style_images, weights=weights,
                 source=source, output=output, container_format=container_format)
    print(f"wrote {output}", file=sys.stderr)
    return 0


def _stylize(av, args, net, prepare, container, stream, style_images, weights, source: Path,
             output: Path, container_format: str) -> None:
    """Decodes, stylizes and encodes every frame into a temp file (_output.atomic_output) renamed
    to `output` only when every frame the container announces was read."""
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(output.parent)
    undecodable = 0
    try:
        with torch.inference_mode(), atomic_output(output, overwrite=args.overwrite) as file:
            audio_in = None if args.no_audio or not container.streams.audio else \
                container.streams.audio[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            stats = [net.style_stats(prepare(s[None])) for s in style_images]
            expected = _expected_frames(stream, container)
            total = expected or 0
            read = 0
            with av.open(file, mode="w", format=container_format) as sink, \
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
                    try:
                        frames = packet.decode()
                    except av.error.FFmpegError:  # a corrupt packet: counted, the rest still read
                        undecodable += 1
                        continue
                    for frame in frames:
                        read += 1
                        pending.append(_frame_tensor(frame, args.content_size))
                        if len(pending) >= args.batch_size:
                            flush()
                if pending:
                    flush()
                if out_stream is None:
                    raise CommandFailed(f"{source} has no decodable frames")
                if undecodable or (expected is not None and read < expected):
                    raise CommandFailed(
                        f"{source} is damaged: read {read} of {expected if expected else '?'} "
                        f"frames ({undecodable} packets could not be decoded); no output written")
                for packet in out_stream.encode():
                    sink.mux(packet)
    except OutputError:
        raise
    except Exception as error:  # noqa: BLE001  (FFmpeg's errors while writing: av.error.*)
        if is_write_failure(error):
            raise OutputError(getattr(error, "errno", 0) or 28, f"cannot write {output}: "
                              "no space left on the device (or the file size limit reached); "
                              "nothing was written there") from None
        raise


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
    codec = _codec_name(av, args)
    stream = sink.add_stream(codec, rate=rate)
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p"
    if codec == "libx264":
        stream.options = {"crf": str(args.crf)}
    return stream


def main(argv: list[str] | None = None) -> int:
    return run_command("video", build_parser, run, argv)
