"""The style-transfer subcommands of the `adain-ext` console script: one `main(argv)` each.

Each module is imported only when its subcommand runs, so `adain-ext bench` never pays for
Pillow or PyAV imports.
"""
from __future__ import annotations


def stylize_main(argv: list[str] | None = None) -> int:
    from adain_ext.style_transfer import stylize

    return stylize.main(argv)


def video_main(argv: list[str] | None = None) -> int:
    from adain_ext.style_transfer import video

    return video.main(argv)


def train_main(argv: list[str] | None = None) -> int:
    from adain_ext.style_transfer import train

    return train.main(argv)


SUBCOMMANDS = {
    "stylize": (stylize_main, "stylize images (the reference test.py options)"),
    "video": (video_main, "stylize a video frame by frame (needs PyAV)"),
    "train": (train_main, "train a decoder (the reference train.py options; torchrun for DDP)"),
}
