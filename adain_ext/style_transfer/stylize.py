"""`adain-ext stylize`: the reference test.py, with its option names, on the fused ops.

    adain-ext stylize --content input/content/cornell.jpg --style input/style/woman_with_hat_matisse.jpg
    adain-ext stylize --content_dir input/content --style_dir input/style --output out
    adain-ext stylize --content c.jpg --style a.jpg,b.jpg --style_interpolation_weights 0.3,0.7
    adain-ext stylize --content c.jpg --style fg.jpg,bg.jpg --mask mask.png
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adain_ext import functional
from adain_ext.style_transfer import _checks, images, models
from adain_ext.style_transfer._output import name_too_long
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
from adain_ext.style_transfer.network import StyleTransfer, coral, normalize_weights


def build_parser(prog: str = "adain-ext stylize") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Arbitrary style transfer with AdaIN "
                                "(option names follow the PyTorch reference's test.py).")
    g = p.add_argument_group("inputs")
    g.add_argument("--content", type=str, help="a content image (or a comma-separated list)")
    g.add_argument("--content_dir", type=str, help="a directory of content images")
    g.add_argument("--style", type=str, help="a style image, or a comma-separated list of them "
                   "(interpolated with --style_interpolation_weights, or fg,bg with --mask)")
    g.add_argument("--style_dir", type=str, help="a directory of style images")
    g.add_argument("--mask", type=str, help="spatial control: a mask image the size of the "
                   "content, white = first style, black = second style")
    g.add_argument("--ext", type=str, default=",".join(e[1:] for e in images.IMAGE_EXTENSIONS),
                   help="comma-separated extensions scanned in directories (default: %(default)s)")
    g.add_argument("--no_recursive", action="store_true", help="scan directories non-recursively")
    g.add_argument("--vgg", type=str, default="models/vgg_normalised.pth",
                   help=".pth or .safetensors encoder weights (vgg_normalised, or torchvision vgg19)")
    g.add_argument("--decoder", type=str, default="models/decoder.pth")
    g = p.add_argument_group("processing")
    g.add_argument("--content_size", type=int, default=512,
                   help="shorter side of the content; 0 keeps the original size")
    g.add_argument("--style_size", type=int, default=512,
                   help="shorter side of the style; 0 keeps the original size")
    g.add_argument("--crop", action="store_true", help="centre-crop to size x size squares")
    g.add_argument("--preserve_color", action="store_true",
                   help="keep the content's colours (CORAL colour transfer onto the styles)")
    g.add_argument("--alpha", type=float, default=1.0,
                   help="content-style trade-off in [0, 1] (1 = full style)")
    g.add_argument("--style_interpolation_weights", type=str, default="",
                   help="comma-separated floats, one per style; they are normalised to sum to 1")
    g = p.add_argument_group("output")
    g.add_argument("--save_ext", type=str, default=".jpg")
    g.add_argument("--output", type=str, default="output", help="output directory")
    g.add_argument("--overwrite", action="store_true",
                   help="replace outputs that exist (without it a run that would replace a file "
                        "is refused before anything is loaded)")
    g = p.add_argument_group("performance")
    g.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--dtype", type=str, default="fp32", choices=["fp32", "fp16", "bf16"])
    g.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format (default: on; faster convs on CPU and GPU)")
    g.add_argument("--batch_size", type=int, default=4,
                   help="contents of the same size stylized together")
    g.add_argument("--backend", type=str, default="auto",
                   choices=functional.BACKENDS, help="AdaIN op backend")
    g.add_argument("--no_progress", action="store_true", help="no progress bar")
    return p


@dataclass
class Job:
    """One output: a content image, the style indices it uses, how they combine, where it goes."""

    content: Path
    styles: tuple[int, ...]
    output: Path
    weights: list[float] | None = None
    masked: bool = False


@dataclass
class Plan:
    contents: list[Path]
    styles: list[Path]
    jobs_per_content: dict[Path, list[Job]] = field(default_factory=dict)


def _paths(single: str | None, directory: str | None, kind: str, exts, recursive: bool):
    if single and directory:
        raise UsageError(f"--{kind}: give --{kind} or --{kind}_dir, not both")
    if single:
        paths = [_checks.input_file(f"--{kind}", s.strip(), f"{kind} image")
                 for s in single.split(",") if s.strip()]
        return paths, [None] * len(paths)
    if directory:
        root = _checks.input_dir(f"--{kind}_dir", directory)
        paths = images.scan_images(root, exts, recursive)
        if not paths:
            raise UsageError(f"--{kind}_dir: no images with extensions {','.join(exts)} in {root}")
        return paths, [root] * len(paths)
    raise UsageError(f"--{kind}: give --{kind} or --{kind}_dir")


def _check_output(args) -> Path:
    """--output is a folder that can be written, and not one the content or style scan would
    read back."""
    out_root = _checks.output_dir("--output", args.output)
    out = out_root.resolve()
    for option, folder, what in (("--content_dir", args.content_dir, "stylize these outputs"),
                                 ("--style_dir", args.style_dir, "take these outputs for styles")):
        if not folder:
            continue
        root = Path(folder).resolve()
        if out == root or (not args.no_recursive and root in out.parents):
            raise UsageError(f"--output: {args.output} is inside {option} {folder}, so the next "
                             f"run would {what}; choose a folder outside it")
    return out_root


def _check_outputs_against_inputs(args, plan: "Plan") -> None:
    """No output name is longer than the file system allows, and none is (by inode) one of the
    run's inputs: a style, mask or weights file lying in --output under an output's name would
    be replaced by the result."""
    inputs = {"--content": plan.contents, "--style": plan.styles,
              "--mask": [Path(args.mask)] if args.mask else [],
              "--vgg": [Path(args.vgg)], "--decoder": [Path(args.decoder)]}
    for jobs in plan.jobs_per_content.values():
        for job in jobs:
            limit = name_too_long(job.output)
            if limit:
                raise UsageError(f"--output: the output name {job.output.name[:40]}... is "
                                 f"{len(os.fsencode(job.output.name))} bytes, more than the {limit} "
                                 "the file system allows (shorten the content or style file names)")
            _checks.not_an_input("--output", job.output, inputs)


def _check_existing_outputs(args, plan: "Plan") -> None:
    """Without --overwrite, no output may exist already: a file of the user's under an output's
    name (or a previous run's result) is never replaced silently."""
    if args.overwrite:
        return
    existing = [job.output for jobs in plan.jobs_per_content.values() for job in jobs
                if os.path.lexists(job.output)]
    if existing:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise UsageError(f"--output: {existing[0]}{more} exist; pass --overwrite to replace them, "
                         "or choose another --output")


def _check_memory(args, device, dtype) -> None:
    """The sizes asked for fit in memory (at least the square of the shorter side, per batch)."""
    for option, size, batch in (("--content_size", args.content_size, args.batch_size),
                                ("--style_size", args.style_size, 1)):
        if size > 0:
            what = f"{batch} image{'s' if batch > 1 else ''} of at least {size}x{size} pixels"
            _checks.fits_memory(option, what, size * size * batch, dtype, device)


def _unique_outputs(plan: Plan) -> None:
    """Two inputs that map to one output name (a/x.jpg and b/x.jpg, x.jpg and x.png, two styles
    s.jpg in different folders) keep both: the later one in plan order gets _2, _3, ... before the
    extension, and a note says which."""
    taken: set[Path] = set()
    for content, jobs in plan.jobs_per_content.items():
        for job in jobs:
            wanted, k = job.output, 1
            while job.output in taken:
                k += 1
                job.output = wanted.with_name(f"{wanted.stem}_{k}{wanted.suffix}")
            if k > 1:
                styles = ",".join(str(plan.styles[i]) for i in job.styles)
                print(f"note: {content} with {styles} would also be named {wanted}; "
                      f"writing it as {job.output.name}", file=sys.stderr)
            taken.add(job.output)


def make_plan(args) -> Plan:
    """The jobs of a run, after every option has been checked (nothing is loaded yet)."""
    exts = [e.strip() for e in args.ext.split(",") if e.strip()]
    contents, content_roots = _paths(args.content, args.content_dir, "content", exts,
                                     not args.no_recursive)
    styles, _ = _paths(args.style, args.style_dir, "style", exts, not args.no_recursive)
    save_ext = _checks.image_extension("--save_ext", args.save_ext)
    _checks.finite("--alpha", args.alpha, 0.0, 1.0)
    _checks.image_size("--content_size", args.content_size)
    _checks.image_size("--style_size", args.style_size)
    _checks.at_least("--batch_size", args.batch_size, 1)
    weights = _checks.weights("--style_interpolation_weights", args.style_interpolation_weights)
    if weights is not None:
        try:
            weights = normalize_weights(weights, len(styles))
        except ValueError as error:
            raise UsageError(f"--style_interpolation_weights: {error}") from None
    if args.mask:
        if len(styles) != 2:
            raise UsageError(f"--mask: needs exactly two styles (foreground,background), got {len(styles)}")
        if weights is not None:
            raise UsageError("--mask: cannot be combined with --style_interpolation_weights")
        _checks.input_file("--mask", args.mask, "mask image")
    out_root = _check_output(args)
    plan = Plan(contents, styles)
    for content, root in zip(contents, content_roots):
        sub = content.parent.relative_to(root) if root is not None else Path()
        out_dir = out_root / sub
        if weights is not None:
            jobs = [Job(content, tuple(range(len(styles))),
                        out_dir / f"{content.stem}_interpolation{save_ext}", weights)]
        elif args.mask:
            jobs = [Job(content, (0, 1), out_dir / f"{content.stem}_stylized_{styles[0].stem}_"
                        f"{styles[1].stem}_masked{save_ext}", masked=True)]
        else:
            jobs = [Job(content, (i,), out_dir / f"{content.stem}_stylized_{s.stem}{save_ext}")
                    for i, s in enumerate(styles)]
        plan.jobs_per_content[content] = jobs
    _unique_outputs(plan)
    _check_outputs_against_inputs(args, plan)
    _check_existing_outputs(args, plan)
    return plan


class Stylizer:
    """Runs a plan: styles encoded once (statistics cached), contents batched by size."""

    def __init__(self, args, net: StyleTransfer, device, dtype, channels_last: bool,
                 style_images: dict[int, torch.Tensor] | None = None):
        self.args, self.net, self.device, self.dtype = args, net, device, dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._style_images: dict[int, torch.Tensor] = dict(style_images or {})
        self._style_stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _prepare(self, image: torch.Tensor) -> torch.Tensor:
        return image.to(self.device, self.dtype).contiguous(memory_format=self.memory_format)

    def style_image(self, index: int, path: Path) -> torch.Tensor:
        if index not in self._style_images:
            self._style_images[index] = images.load_image(path, self.args.style_size, self.args.crop)
        return self._style_images[index]

    def style_stats(self, index: int, path: Path):
        if index not in self._style_stats:
            image = self._prepare(self.style_image(index, path)[None])
            self._style_stats[index] = self.net.style_stats(image)
        return self._style_stats[index]

    def run_batch(self, plan: Plan, contents: list[tuple[Path, torch.Tensor]], job_index: int,
                  mask: torch.Tensor | None) -> None:
        jobs = [plan.jobs_per_content[path][job_index] for path, _ in contents]
        batch = self._prepare(torch.stack([image for _, image in contents]))
        job = jobs[0]
        if self.args.preserve_color:
            # CORAL depends on each content, so these statistics are per image, not cached.
            per_style = []
            for s in job.styles:
                style = self.style_image(s, plan.styles[s])
                recoloured = torch.stack([coral(style, image) for _, image in contents])
                per_style.append(self.net.style_stats(self._prepare(recoloured)))
            stats = per_style
        else:
            stats = [self.style_stats(s, plan.styles[s]) for s in job.styles]
        if mask is not None:
            mask = mask.to(self.device)[None]
        out = self.net.stylize(batch, stats, job.weights, self.args.alpha, mask)
        for j, image in zip(jobs, out):
            images.save_image(image, j.output, overwrite=self.args.overwrite)


def _load_mask(path: str, content: Path, content_image: torch.Tensor, size: int,
               crop: bool) -> torch.Tensor:
    """The mask at the content's size in this run: drawn on the content image as given, it takes
    the content's own resize and crop (a crop cuts, it does not squeeze); drawn at the run's
    content size, it is used as it is."""
    mask = images.load_mask(path)
    with images.open_image(content) as original:
        original_size = original.size[::-1]
    mh, mw = mask.shape[-2:]
    if (mh, mw) == tuple(content_image.shape[-2:]):
        return mask
    if (mh, mw) != tuple(original_size):
        raise UsageError(f"mask {path} is {mw}x{mh} but content {content} is "
                         f"{original_size[1]}x{original_size[0]} (the mask must match the content image)")
    return images.fit_mask(mask, size, crop)


def run(args) -> int:
    plan = make_plan(args)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    _checks.backend("--backend", args.backend, device)
    _checks.weights_file("--vgg", args.vgg)
    _checks.weights_file("--decoder", args.decoder)
    _check_memory(args, device, dtype)
    for folder in {job.output.parent for jobs in plan.jobs_per_content.values() for job in jobs}:
        if folder.is_dir():
            remove_stale_temps(folder)
    channels_last = args.channels_last
    # Every style is read before the models load: a bad style fails before any output is written.
    style_images = {}
    for i, path in enumerate(plan.styles):
        try:
            style_images[i] = style = images.load_image(path, args.style_size, args.crop)
        except (images.ImageError, FileNotFoundError) as error:
            raise CommandFailed(f"--{'style_dir' if args.style_dir else 'style'}: {error}") from None
        if _checks.too_small(style.shape[-1], style.shape[-2]):
            raise UsageError(f"--style_size: style {path} is {style.shape[-1]}x{style.shape[-2]}, "
                             f"below the encoder's smallest side ({_checks.MIN_IMAGE_SIDE} pixels); "
                             f"give --style_size {_checks.MIN_IMAGE_SIDE} or more")
    vgg = _checks.load_weights("--vgg", models.load_vgg, args.vgg)
    dec = _checks.load_weights("--decoder", models.load_decoder, args.decoder)
    net = StyleTransfer(vgg, dec, backend=args.backend).to(device, dtype).eval()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    stylizer = Stylizer(args, net, device, dtype, channels_last, style_images)

    failures = 0
    total = sum(len(j) for j in plan.jobs_per_content.values())
    batch_size = args.batch_size
    # Contents wait in buckets by (size, job slot) until a bucket fills a batch.
    buckets: dict[tuple, list[tuple[Path, torch.Tensor]]] = {}
    masks: dict[tuple, torch.Tensor] = {}
    with torch.inference_mode(), progress(total, "stylize", args.no_progress) as bar:
        def flush(key):
            batch = buckets.pop(key)
            stylizer.run_batch(plan, batch, key[1], masks.pop(key, None))
            bar.update(len(batch))

        for content in plan.contents:
            try:
                image = images.load_image(content, args.content_size, args.crop)
                if _checks.too_small(image.shape[-1], image.shape[-2]):
                    raise images.ImageError(
                        f"content {content} is {image.shape[-1]}x{image.shape[-2]}, below the "
                        f"encoder's smallest side ({_checks.MIN_IMAGE_SIDE} pixels; see --content_size)")
                mask = _load_mask(args.mask, content, image, args.content_size, args.crop) if args.mask else None
            except (images.ImageError, FileNotFoundError, UsageError) as error:
                print(f"error: {error}", file=sys.stderr)
                failures += 1
                bar.update(len(plan.jobs_per_content[content]))
                continue
            for slot in range(len(plan.jobs_per_content[content])):
                # Masked contents never share a batch unless their masks are identical objects.
                key = (tuple(image.shape), slot, id(mask) if mask is not None else None)
                buckets.setdefault(key, []).append((content, image))
                if mask is not None:
                    masks[key] = mask
                if len(buckets[key]) >= batch_size:
                    flush(key)
        for key in list(buckets):
            flush(key)
    if failures:
        warn(f"{failures} of {len(plan.contents)} content images failed; the others were written")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("stylize", build_parser, run, argv)
