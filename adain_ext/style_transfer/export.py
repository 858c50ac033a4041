"""`adain-ext export`: the style-transfer network (encoder to relu4_1, AdaIN, decoder) as one ONNX
file, for onnxruntime, TensorRT or the browser.

    adain-ext export --vgg models/vgg_normalised.pth --decoder models/decoder.pth --output adain.onnx

The file's inputs are `content` (N, 3, H, W) and `style` (1, 3, h, w), RGB in [0, 1], of any
sizes (N, H, W, h and w are dynamic), and `alpha`, a float32 scalar (1 = full style, 0 = the
content's own features); its output `stylized` (N, 3, H, W) is the network's image clamped to
[0, 1], as `adain-ext stylize` saves it. The AdaIN layer goes through the ONNX translations of
adain_ext.onnx: plain ONNX ops, no custom kernel needed at run time.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import torch
from torch import nn

from adain_ext.style_transfer import _checks, models
from adain_ext.style_transfer._output import OutputError, atomic_output, name_too_long, remove_stale_temps
from adain_ext.style_transfer._runtime import UsageError, _exit_on_sigterm
from adain_ext.style_transfer.network import StyleTransfer

INPUT_NAMES = ["content", "style", "alpha"]
OUTPUT_NAMES = ["stylized"]


class ExportableStyleTransfer(nn.Module):
    """T(c, s) with alpha as a tensor input, so one file serves every alpha.

    The same computation as `StyleTransfer.forward` for one style: the AdaIN of the content
    features to the style's statistics, blended with the content features by alpha (exact, as in
    `StyleTransfer.transform`), decoded and cropped to the content's size; then clamped.
    """

    def __init__(self, net: StyleTransfer):
        super().__init__()
        self.net = net

    def forward(self, content: torch.Tensor, style: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        content_feat = self.net.encode(content)
        target = self.net.transform(content_feat, self.net.style_stats(style))
        blended = torch.lerp(content_feat, target, alpha.to(content_feat.dtype))
        return self.net.decode(blended, content.shape[-2:]).clamp(0, 1)


def example_inputs(size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs to trace with; every image dim but the style's batch is dynamic in the file.
    A batch of 2, not 1: export would take a size-1 dim for a constant."""
    return (torch.rand(2, 3, size, size), torch.rand(1, 3, size + 8, size - 8),
            torch.tensor(1.0))


def export_onnx(net: StyleTransfer) -> torch.onnx.ONNXProgram:
    """The ONNX program of `ExportableStyleTransfer(net)`, float32 on the CPU."""
    import adain_ext.onnx  # needs onnx and onnxscript: imported only here

    model = ExportableStyleTransfer(net.float().cpu()).eval()
    # Named dims: dynamic, and the file's inputs carry these names.
    dynamic_shapes = {"content": {0: "batch", 2: "height", 3: "width"},
                      "style": {2: "style_height", 3: "style_width"}, "alpha": None}
    # The exporter logs a warning for every torchvision op it cannot find: noise here.
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    try:
        return adain_ext.onnx.export(model, example_inputs(), dynamic_shapes=dynamic_shapes,
                                     input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
                                     verbose=False)
    finally:
        registration_log.setLevel(level)


def _onnx_bytes(program: torch.onnx.ONNXProgram) -> bytes:
    """The file's bytes: one self-contained ONNX model (weights inside)."""
    import io

    buffer = io.BytesIO()
    try:
        program.save(buffer, external_data=False)
        return buffer.getvalue()
    except (TypeError, AttributeError, OSError):  # an exporter whose save() wants a path
        return program.model_proto.SerializeToString()


def write_onnx(program: torch.onnx.ONNXProgram, path: Path, overwrite: bool) -> None:
    """Writes one self-contained file atomically (_output.atomic_output: a temp file no planted
    symlink can redirect, then a rename with `overwrite`, else a hard link that raises
    FileExistsError if the path appeared meanwhile)."""
    data = _onnx_bytes(program)
    with atomic_output(path, overwrite=overwrite) as f:
        f.write(data)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(prog: str = "adain-ext export") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Write the AdaIN style-transfer network (encoder to "
                "relu4_1, AdaIN, decoder) as one ONNX file with dynamic image sizes; inputs "
                "content (N, 3, H, W), style (1, 3, h, w), alpha (float32 scalar).")
    p.add_argument("--vgg", type=str, default="models/vgg_normalised.pth",
                   help=".pth or .safetensors encoder weights (vgg_normalised, or torchvision vgg19)")
    p.add_argument("--decoder", type=str, default="models/decoder.pth")
    p.add_argument("--output", type=str, default="adain_style_transfer.onnx",
                   help="the ONNX file to write (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    return p


def _check_output(parser, args) -> Path:
    """Everything about --output that can be known before the export (a minute on a CPU)."""
    output = Path(args.output)
    if output.is_dir():
        parser.error(f"--output {output} is a directory; give a file name")
    if os.path.lexists(output) and not args.overwrite:
        parser.error(f"{output} exists; pass --overwrite to replace it")
    try:
        _checks.output_file("--output", output)
        if name_too_long(output):
            raise UsageError(f"--output: the file name {output.name[:40]}... is longer than the "
                             "file system allows")
        _checks.not_an_input("--output", output, {"--vgg": [Path(args.vgg)],
                                                  "--decoder": [Path(args.decoder)]})
    except UsageError as error:
        parser.error(str(error))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    output = _check_output(parser, args)
    previous = None
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        try:
            previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        except ValueError:  # not the main thread
            pass
    try:
        return _run(parser, args, output)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; nothing was written", file=sys.stderr)
        return 128 + signal.SIGINT
    except SystemExit as stop:
        if stop.code == 128 + signal.SIGTERM:
            print(f"{parser.prog}: terminated; nothing was written", file=sys.stderr)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(parser, args, output: Path) -> int:
    if output.parent.is_dir():
        remove_stale_temps(output.parent)  # a killed export's temp file (its marker proves it)
    try:
        net = StyleTransfer(models.load_vgg(args.vgg), models.load_decoder(args.decoder))
    except models.DamagedWeights as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    except (OSError, models.WeightsError) as error:
        parser.error(str(error))
    try:
        program = export_onnx(net)
    except ImportError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    try:
        write_onnx(program, output, args.overwrite)
    except FileExistsError:
        parser.error(f"{output} appeared during the export; pass --overwrite to replace it")
    except OutputError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    size_mb = output.stat().st_size / 2**20
    print(f"wrote {output} ({size_mb:.1f} MiB): inputs content (N, 3, H, W), style (1, 3, h, w), "
          "alpha (float32 scalar); output stylized (N, 3, H, W) in [0, 1]")
    return 0
