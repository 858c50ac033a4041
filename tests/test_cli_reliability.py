"""The style commands as a user meets them: every mistake is one line before any model loads,
nothing is overwritten or lost silently, and files look like other tools' files.

The command lines run in child processes: one driver process runs the whole table through
`adain_ext.cli.main` (the console script's own entry), so the table costs one torch import; the
checks that need a process of their own (exit status seen by the shell, SIGTERM) start one each.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL", reason="the style-transfer tests need Pillow (pip install Pillow)")
av = pytest.importorskip("av", reason="the video cases need PyAV (pip install av)")

from style_helpers import random_decoder, random_image, random_vgg, write_png  # noqa: E402

from adain_ext.style_transfer import models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FRAMES = 8

# name -> (expected exit status, what the message must contain, argv with {R} = the fixture root).
# Status 2: a usage error, caught before any model loads. Status 1: a damaged input.
STYLIZE = "stylize --vgg {R}/vgg.pth --decoder {R}/dec.pth --no_progress --content_size 16 " \
          "--style_size 16 --save_ext .png"
ONE = STYLIZE + " --content {R}/a/x.png --style {R}/s.png"
VIDEO = "video --vgg {R}/vgg.pth --decoder {R}/dec.pth --no_progress --style {R}/s.png " \
        "--style_size 16 --content {R}/in.mp4"
TRAIN = "train --content_dir {R}/cdir --style_dir {R}/cdir --vgg {R}/vgg.pth --image_size 20 " \
        "--crop_size 16 --batch_size 2 --no_tensorboard --no_progress --n_threads 0 --max_iter 1"
USAGE = {
    "stylize_output_is_a_file": (2, "--output", ONE + " --output {R}/afile"),
    "stylize_output_cannot_be_created": (2, "--output", ONE + " --output {R}/afile/sub"),
    "stylize_unknown_save_ext": (2, "--save_ext", ONE + " --output {R}/out/e --save_ext .xyz"),
    "stylize_device_gpu0": (2, "--device", ONE + " --output {R}/out/d --device gpu0"),
    "stylize_device_mps": (2, "--device", ONE + " --output {R}/out/d --device mps"),
    "stylize_triton_without_driver": (2, "--backend", ONE + " --output {R}/out/d --backend triton"),
    "stylize_content_size_4": (2, "--content_size", ONE + " --output {R}/out/d --content_size 4"),
    "stylize_style_size_4": (2, "--style_size", ONE + " --output {R}/out/d --style_size 4"),
    "stylize_negative_size": (2, "--content_size", ONE + " --output {R}/out/d --content_size -3"),
    "stylize_infinite_weight": (2, "--style_interpolation_weights",
                                STYLIZE + " --content {R}/a/x.png --style {R}/s.png,{R}/s.png "
                                "--style_interpolation_weights inf,1 --output {R}/out/d"),
    "stylize_batch_size_0": (2, "--batch_size", ONE + " --output {R}/out/d --batch_size 0"),
    "stylize_alpha_nan": (2, "--alpha", ONE + " --output {R}/out/d --alpha nan"),
    "stylize_missing_content": (2, "--content", STYLIZE + " --content {R}/nope.png --style {R}/s.png "
                                "--output {R}/out/d"),
    "stylize_missing_vgg": (2, "--vgg", ONE.replace("{R}/vgg.pth", "{R}/nope.pth") + " --output {R}/out/d"),
    "stylize_output_inside_content_dir": (2, "--output", STYLIZE + " --content_dir {R}/cdir "
                                          "--style {R}/s.png --output {R}/cdir/out"),
    "stylize_mask_needs_two_styles": (2, "--mask", ONE + " --mask {R}/s.png --output {R}/out/d"),
    "stylize_wrong_weights_file": (2, "--vgg", ONE.replace("{R}/vgg.pth", "{R}/dec.pth") +
                                   " --output {R}/out/d"),
    "video_output_is_its_input": (2, "--output", VIDEO + " --output {R}/in.mp4"),
    "video_output_is_a_folder": (2, "--output", VIDEO + " --output {R}/cdir"),
    "video_codec_aac": (2, "--codec", VIDEO + " --output {R}/out/v.mp4 --codec aac"),
    "video_codec_unknown": (2, "--codec", VIDEO + " --output {R}/out/v.mp4 --codec nope"),
    "video_unknown_container": (2, "--output", VIDEO + " --output {R}/out/v.xyz"),
    "video_batch_size_0": (2, "--batch_size", VIDEO + " --output {R}/out/v.mp4 --batch_size 0"),
    "video_content_size_4": (2, "--content_size", VIDEO + " --output {R}/out/v.mp4 --content_size 4"),
    "video_crf_99": (2, "--crf", VIDEO + " --output {R}/out/v.mp4 --crf 99"),
    "train_save_model_interval_0": (2, "--save_model_interval", TRAIN + " --save_dir {R}/out/t "
                                    "--save_model_interval 0"),
    "train_log_interval_0": (2, "--log_interval", TRAIN + " --save_dir {R}/out/t --log_interval 0"),
    "train_batch_size_0": (2, "--batch_size", TRAIN + " --save_dir {R}/out/t --batch_size 0"),
    "train_crop_size_8": (2, "--crop_size", TRAIN + " --save_dir {R}/out/t --crop_size 8 --image_size 8"),
    "train_n_threads_negative": (2, "--n_threads", TRAIN + " --save_dir {R}/out/t --n_threads -1"),
    "train_lr_nan": (2, "--lr", TRAIN + " --save_dir {R}/out/t --lr nan"),
    "train_device_gpu0": (2, "--device", TRAIN + " --save_dir {R}/out/t --device gpu0"),
    "train_save_dir_is_a_file": (2, "--save_dir", TRAIN + " --save_dir {R}/afile"),
    "train_missing_style_dir": (2, "--style_dir", TRAIN.replace("--style_dir {R}/cdir",
                                "--style_dir {R}/nope") + " --save_dir {R}/out/t"),
    "train_existing_run_folder": (2, "--save_dir", TRAIN + " --save_dir {R}/oldrun"),
    "train_resume_and_overwrite": (2, "--overwrite", TRAIN + " --save_dir {R}/oldrun --resume auto "
                                   "--overwrite"),
    "train_style_dir_all_unreadable": (1, "--style_dir", TRAIN.replace("--style_dir {R}/cdir",
                                       "--style_dir {R}/badstyles") + " --save_dir {R}/out/t"),
    "stylize_style_unreadable": (1, "--style_dir: cannot read image", STYLIZE + " --content {R}/a/x.png "
                                 "--style_dir {R}/badstyles --output {R}/out/d"),
    "video_truncated": (1, "read 6 of 8 frames (0 packets", VIDEO.replace("{R}/in.mp4", "{R}/trunc.avi") +
                        " --output {R}/out/v.mp4"),
    "video_corrupt_packet": (1, "1 packets could not be decoded",
                             VIDEO.replace("{R}/in.mp4", "{R}/corrupt.mp4") + " --output {R}/out/v.mp4"),
    # Inputs that an output would replace: refused by inode, before anything is written.
    "stylize_style_is_an_output": (2, "same file as --style", STYLIZE + " --content {R}/c0.png "
                                   "--style {R}/il/c0_interpolation.png,{R}/s2.png "
                                   "--style_interpolation_weights 1,3 --output {R}/il"),
    "stylize_mask_is_an_output": (2, "same file as --mask", STYLIZE + " --content {R}/c0.png "
                                  "--style {R}/s.png,{R}/s2.png --mask {R}/ml/c0_stylized_s_s2_masked.png "
                                  "--output {R}/ml"),
    # A file of the user's under an output's name: refused without --overwrite, bytes kept.
    "stylize_output_exists": (2, "exist; pass --overwrite", ONE + " --output {R}/ex"),
    "stylize_output_is_style_dir": (2, "--style_dir", STYLIZE + " --content {R}/a/x.png "
                                    "--style_dir {R}/sdir --output {R}/sdir"),
    "video_output_exists": (2, "exists; pass --overwrite", VIDEO + " --output {R}/afile"),
    "video_output_is_a_style": (2, "same file as --style", VIDEO + " --output {R}/s.png --overwrite"),
    "export_output_is_the_vgg": (2, "same file as --vgg", "export --vgg {R}/vgg.pth --decoder "
                                 "{R}/dec.pth --output {R}/vgg.pth --overwrite"),
    "export_output_parent_is_a_file": (2, "afile is a file, not a folder", "export --vgg {R}/vgg.pth --decoder "
                                       "{R}/dec.pth --output {R}/afile/m.onnx"),
    "train_overwrite_with_a_wrong_vgg": (2, "--vgg", TRAIN.replace("{R}/vgg.pth", "{R}/dec.pth") +
                                         " --save_dir {R}/oldrun --overwrite"),
    "train_decoder_is_a_file_of_the_run": (2, "same file as --decoder", TRAIN + " --decoder "
                                           "{R}/oldrun/decoder_iter_60.pth --save_dir {R}/oldrun --overwrite"),
    "train_save_dir_in_use": (2, "another training run (PID ", TRAIN + " --save_dir {R}/locked"),
    # Numbers that cannot be right: refused at load, naming the tensor (exit 1: a damaged file).
    "stylize_vgg_with_nan": (1, "tensor '2.bias' holds 1 NaN", ONE.replace("{R}/vgg.pth", "{R}/vgg_nan.pth")
                             + " --output {R}/out/d"),
    "stylize_decoder_with_inf": (1, "tensor '28.weight' holds 1 NaN or infinite",
                                 ONE.replace("{R}/dec.pth", "{R}/dec_inf.pth") + " --output {R}/out/d"),
    "train_decoder_with_inf": (1, "--decoder", TRAIN + " --decoder {R}/dec_inf.pth --save_dir {R}/out/t"),
    "train_resume_truncated": (1, "cannot read checkpoint", TRAIN + " --resume {R}/bad/truncated.pt "
                               "--save_dir {R}/out/t"),
    "train_resume_missing_parts": (1, "is damaged: its iteration", TRAIN + " --resume "
                                   "{R}/bad/missing.pt --save_dir {R}/out/t"),
    "train_resume_wrong_shape": (1, "is damaged: its decoder does not fit", TRAIN + " --resume "
                                 "{R}/bad/shape.pt --save_dir {R}/out/t"),
    "train_resume_nan": (1, "holds 1 NaN", TRAIN + " --resume {R}/bad/nan.pt --save_dir {R}/out/t"),
    "train_resume_other_optimizer": (1, "does not fit this run", TRAIN + " --resume "
                                     "{R}/bad/optimizer.pt --save_dir {R}/out/t"),
    # Weight files that are not weights: one line that says what the file is.
    "stylize_weights_text_file": (2, "is not a readable PyTorch weights file (damaged",
                                  ONE.replace("{R}/dec.pth", "{R}/text.pth") + " --output {R}/out/d"),
    "stylize_weights_of_strings": (2, "entry 'a' is a str, not a tensor",
                                   ONE.replace("{R}/dec.pth", "{R}/strs.pth") + " --output {R}/out/d"),
    "stylize_weights_pickled_code": (2, "pickled Python objects",
                                     ONE.replace("{R}/dec.pth", "{R}/pickled.pth") + " --output {R}/out/d"),
    # Asked for what cannot work: said before any heavy work.
    "stylize_content_size_40000": (2, "would need about", ONE + " --output {R}/out/d --content_size 40000"),
    "stylize_output_name_too_long": (2, "bytes, more than the", STYLIZE + " --content {R}/longbad/" +
                                     "d" * 245 + ".png --style {R}/s.png --output {R}/out/d"),
    "bench_shape_too_big": (2, "would need about", "bench --device cpu --shapes 1x1x100000x100000"),
    **{f"stylize_save_ext_{ext}": (2, "--save_ext", ONE + f" --output {{R}}/out/e --save_ext .{ext}")
       for ext in ("xbm", "msp", "palm", "blp", "h5", "wmf")},
}
# The rows above that read weights before they refuse (the refusal is about the weights).
READS_WEIGHTS = {"stylize_wrong_weights_file", "train_overwrite_with_a_wrong_vgg",
                 "stylize_weights_text_file", "stylize_weights_of_strings",
                 "stylize_weights_pickled_code"}
# Runs that do their work: (expected exit status, argv).
WORK = {
    "stylize_overwrite_replaces": (0, ONE + " --output {R}/work/ow --overwrite"),
    "stylize_same_names": (0, STYLIZE + " --content {R}/a/x.png,{R}/b/x.png --style_dir {R}/sdir "
                           "--output {R}/work/names"),
    "stylize_x_jpg_and_x_png": (0, STYLIZE + " --content_dir {R}/cdir --style {R}/s.png "
                                "--output {R}/work/exts"),
    "stylize_one_bad_image": (1, STYLIZE + " --content_dir {R}/mixed --style {R}/s.png "
                              "--content_size 0 --output {R}/work/mixed"),
    "video_ok": (0, VIDEO + " --output {R}/work/video/out.mp4"),
    "train_ok": (0, TRAIN.replace("--max_iter 1", "--max_iter 2") + " --save_dir {R}/work/run"),
    "train_again_refused": (2, TRAIN + " --save_dir {R}/work/run"),
    "train_overwrite": (0, TRAIN + " --save_dir {R}/work/run --overwrite"),
    "train_diverges": (1, TRAIN.replace("--max_iter 1", "--max_iter 6") + " --lr 1e8 "
                       "--save_model_interval 1 --save_dir {R}/work/diverge"),
    "stylize_huge_weights": (0, STYLIZE + " --content {R}/a/x.png --style {R}/s.png,{R}/s2.png "
                             "--style_interpolation_weights 1e308,1e308 --output {R}/work/huge"),
    "stylize_long_name": (0, STYLIZE + " --content {R}/long/" + "c" * 235 + ".png --style {R}/s.png "
                          "--output {R}/work/long"),
    "stylize_nan_pixel": (0, STYLIZE + " --content {R}/nanpix.tif --style {R}/s.png "
                          "--output {R}/work/nanpix"),
}
# Full disk: these run with a file size limit (RLIMIT_FSIZE) smaller than their outputs.
FULL = {
    "full_stylize": STYLIZE + " --content {R}/a/x.png --style {R}/s.png --save_ext .bmp --content_size 64 "
                    "--output {R}/full/st",
    "full_train": TRAIN + " --save_dir {R}/full/tr",
    "full_video": VIDEO + " --output {R}/full/v.mp4",
}
FILE_SIZE_LIMIT = 1000
# The temp names (.NAME.PID.tmp.EXT) that earlier versions wrote through: symlinks to a victim
# file are planted under them for the driver's PID before it starts (folder, output name).
PLANTED = (("work/names", "x_stylized_s.png"), ("work/run", "checkpoint.pt"),
           ("work/run", "decoder_iter_1.pth"), ("work/video", "out.mp4"))

DRIVER = r"""
import contextlib, io, json, os, sys, traceback
os.umask(0o022)
from adain_ext.cli import main
from adain_ext.style_transfer import models
loads = []
for name in ("load_vgg", "load_decoder"):
    def wrapped(*a, _f=getattr(models, name), **k):
        loads.append(1)
        return _f(*a, **k)
    setattr(models, name, wrapped)
results = {}
for name, argv in json.load(open(sys.argv[1])):
    err = io.StringIO()
    del loads[:]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as exit:
            status = exit.code
        except BaseException:
            status = "raised"
            traceback.print_exc(file=err)
    results[name] = [status, err.getvalue(), len(loads)]
json.dump(results, sys.stdout)
"""


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("TRITON_INTERPRET", None)  # the triton case needs the plain CPU machine's view
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _write_video(path: Path, frames: int, noise_seed: int | None = None) -> Path:
    rng = np.random.default_rng(noise_seed)
    with av.open(str(path), "w") as sink:
        stream = sink.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for i in range(frames):
            rgb = (rng.integers(0, 255, (24, 32, 3), dtype=np.uint8) if noise_seed is not None
                   else np.full((24, 32, 3), 20 * i % 256, np.uint8))
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                sink.mux(packet)
        for packet in stream.encode():
            sink.mux(packet)
    return path


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("reliability")
    models.write_state_dict(random_vgg(num_modules=31).state_dict(), r / "vgg.pth")
    models.write_state_dict(random_decoder().state_dict(), r / "dec.pth")
    write_png(r / "s.png", random_image(24, 24, 9))
    write_png(r / "a" / "x.png", random_image(24, 24, 1))
    write_png(r / "b" / "x.png", random_image(24, 24, 2))
    write_png(r / "cdir" / "x.png", random_image(24, 24, 3))
    write_png(r / "cdir" / "y.png", random_image(24, 24, 4))
    from PIL import Image

    Image.open(r / "cdir" / "x.png").save(r / "cdir" / "x.jpg")
    write_png(r / "sdir" / "a" / "s.png", random_image(24, 24, 7))
    write_png(r / "sdir" / "b" / "s.png", random_image(24, 24, 8))
    write_png(r / "mixed" / "big.png", random_image(24, 24, 5))
    write_png(r / "mixed" / "tiny.png", random_image(4, 4, 6))
    good = (r / "mixed" / "big.png").read_bytes()
    (r / "mixed" / "broken.png").write_bytes(good[: len(good) // 2])
    (r / "badstyles").mkdir()
    (r / "badstyles" / "s.png").write_bytes(b"\x89PNG not really")
    (r / "afile").write_text("a file where a folder is expected")
    _write_video(r / "in.mp4", FRAMES)
    whole = _write_video(r / "whole.avi", FRAMES, noise_seed=0)
    with av.open(str(whole)) as container:  # cut where packet 6 starts: 6 whole frames remain
        cut = [packet.pos for packet in container.demux(video=0) if packet.size][6]
    (r / "trunc.avi").write_bytes(whole.read_bytes()[:cut])  # AVI: its header comes first
    corrupt = bytearray(_write_video(r / "whole.mp4", FRAMES, noise_seed=1).read_bytes())
    middle = len(corrupt) // 2
    corrupt[middle : middle + 300] = b"\xab" * 300  # one packet the decoder rejects (measured)
    (r / "corrupt.mp4").write_bytes(bytes(corrupt))
    (r / "oldrun").mkdir()
    (r / "oldrun" / "checkpoint.pt").write_bytes(b"iteration 60 of another run")
    (r / "oldrun" / "decoder_iter_60.pth").write_bytes(b"weights of another run")
    _inputs_at_output_names(r)
    _damaged_weights(r)
    _damaged_checkpoints(r)
    (r / "victim").write_bytes(b"the victim's own bytes")
    # Leftovers: a killed run's temp file with its marker (provably ours: removed), and hidden
    # files that only look like temp files of a dead or a live process (someone else's: kept).
    dead, live = _dead_pid(), os.getpid()
    (r.parent / "dead.pid").write_text(str(dead))
    for folder in ("work/run", "work/video", "work/exts", "work/names"):
        (r / folder).mkdir(parents=True, exist_ok=True)
    token = "0123456789abcdef"
    killed = f".x_stylized_s.png.{token}.tmp.png"
    (r / "work" / "exts" / killed).write_bytes(b"a killed run's half image")
    (r / "work" / "exts" / f".adain-ext-{token}.pending").write_text(
        json.dumps({"pid": dead, "start": "", "temp": killed}))
    for folder, name in (("work/run", ".checkpoint.pt.{dead}.tmp.pt"), ("work/run", ".checkpoint.pt.{dead}.tmp"),
                         ("work/run", ".results.csv.4242.tmp.csv"), ("work/run", ".draft.txt.31337.tmp"),
                         ("work/video", ".out.mp4.{dead}.tmp.mp4"),
                         ("work/exts", ".y_stylized_s.png.{live}.tmp.png"),
                         ("work/exts", ".other.png.{dead}.tmp.png")):
        (r / folder / name.format(dead=dead, live=live)).write_bytes(b"someone else's file")
    # A marker that names a file which is not a temp file of its token: never followed.
    (r / "work" / "exts" / f".adain-ext-{'f' * 16}.pending").write_text(
        json.dumps({"pid": dead, "start": "", "temp": ".y_stylized_s.png.{live}.tmp.png"}))
    return r


def _inputs_at_output_names(r: Path) -> None:
    """Inputs that lie where a run would write an output, and inputs with long names."""
    write_png(r / "c0.png", random_image(24, 24, 10))
    write_png(r / "s2.png", random_image(24, 24, 11))
    write_png(r / "il" / "c0_interpolation.png", random_image(24, 24, 12))
    write_png(r / "ml" / "c0_stylized_s_s2_masked.png", random_image(24, 24, 13))
    write_png(r / "ex" / "x_stylized_s.png", random_image(24, 24, 16))  # the user's own file
    write_png(r / "work" / "ow" / "x_stylized_s.png", random_image(24, 24, 16))
    write_png(r / "long" / ("c" * 235 + ".png"), random_image(24, 24, 14))
    write_png(r / "longbad" / ("d" * 245 + ".png"), random_image(24, 24, 15))
    from PIL import Image

    pixels = np.linspace(0.1, 0.9, 24 * 24, dtype=np.float32).reshape(24, 24)
    pixels[5, 5] = np.nan
    Image.fromarray(pixels, "F").save(r / "nanpix.tif")


def _damaged_weights(r: Path) -> None:
    import datetime

    import torch

    vgg = random_vgg(num_modules=31).state_dict()
    vgg["2.bias"][3] = float("nan")
    models.write_state_dict(vgg, r / "vgg_nan.pth")
    dec = random_decoder().state_dict()
    dec["28.weight"][0, 0, 0, 0] = float("inf")
    models.write_state_dict(dec, r / "dec_inf.pth")
    (r / "text.pth").write_bytes(b"5")
    torch.save({"a": "b"}, r / "strs.pth")
    torch.save({"when": datetime.date(2020, 1, 1)}, r / "pickled.pth")


def _damaged_checkpoints(r: Path) -> None:
    import torch

    (r / "bad").mkdir()
    decoder = random_decoder().state_dict()
    good = {"format": 1, "iteration": 2, "decoder": decoder,
            "optimizer": {"state": {}, "param_groups": [{"params": [0, 1], "lr": 1e-4}]},
            "rng": {"torch": torch.get_rng_state()}, "scaler": None,
            "config": {"seed": 0, "batch_size": 2}}
    torch.save(good, r / "bad" / "optimizer.pt")  # a parameter group of 2, the decoder has 18
    data = (r / "bad" / "optimizer.pt").read_bytes()
    (r / "bad" / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save({"format": 1}, r / "bad" / "missing.pt")
    shape = dict(good, decoder=dict(decoder, **{"28.weight": torch.zeros(3, 64, 1, 1)}))
    torch.save(shape, r / "bad" / "shape.pt")
    nan = dict(decoder)
    nan["1.bias"] = nan["1.bias"].clone()
    nan["1.bias"][0] = float("nan")
    torch.save(dict(good, decoder=nan), r / "bad" / "nan.pt")


def _drive(root: Path, table: dict, name: str, prefix=(), preexec_fn=None) -> dict:
    cases = [(case, argv.replace("{R}", str(root)).split()) for case, argv in table.items()]
    (root.parent / f"{name}.json").write_text(json.dumps(cases))
    proc = subprocess.run([*prefix, sys.executable, "-c", DRIVER, str(root.parent / f"{name}.json")],
                          env=_env(), cwd=root.parent, capture_output=True, text=True, timeout=600,
                          preexec_fn=preexec_fn)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


# Plants the symlinks of PLANTED for the shell's PID, which `exec` hands to the driver.
PLANT = 'R="$1"; shift; for spec in {specs}; do ln -s "$R/victim" "$R/${{spec%%:*}}/.${{spec#*:}}.$$.tmp.${{spec##*.}}"; done; exec "$@"'


@pytest.fixture(scope="module")
def results(root):
    """Every table row run once, in one driver process; the inputs' bytes before and after.
    Meanwhile this process holds the lock of {R}/locked, as a training run would."""
    from adain_ext.style_transfer import train

    inputs = _digest(root)
    table = {name: argv for name, (_, _, argv) in USAGE.items()}
    table.update({name: argv for name, (_, argv) in WORK.items()})
    specs = " ".join(f"'{folder}:{name}'" for folder, name in PLANTED)
    with train.run_lock(root / "locked"):
        got = _drive(root, table, "cases", prefix=("sh", "-c", PLANT.format(specs=specs), "sh", str(root)))
    return got, inputs, (root.parent / "dead.pid").read_text()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _visible(folder: Path) -> list[str]:
    return [f for f in _files(folder) if not Path(f).name.startswith(".")]


@pytest.mark.parametrize("name", list(USAGE))
def test_each_mistake_is_one_line_before_the_models_load(name, root, results):
    status, says, _ = USAGE[name]
    got, err, loads = results[0][name]
    assert "Traceback" not in err, err
    assert got == status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"adain-ext {name.split('_')[0]}: error: "), err
    assert says in lines[0]
    if status == 2 and name not in READS_WEIGHTS:
        assert loads == 0  # refused before any weights were read
    assert _files(root / "out") == []  # no output, partial file or folder left behind


def test_no_input_changed(root, results):
    """Refused and failed runs left every input and every file of an earlier run as it was (the
    work runs only wrote into their own work/ folders)."""
    before = {k: v for k, v in results[1].items() if not k.startswith("work/")}
    after = {k: v for k, v in _digest(root).items() if not k.startswith("work/")}
    assert after == before


def test_overwrite_replaces_an_existing_output(root, results):
    status, err, _ = results[0]["stylize_overwrite_replaces"]
    assert status == 0 and "Traceback" not in err, err
    assert (root / "work" / "ow" / "x_stylized_s.png").read_bytes() != (
        root / "ex" / "x_stylized_s.png").read_bytes()  # the stylized image, not the planted one


def test_two_inputs_with_one_output_name_both_survive(root, results):
    for name in ("stylize_same_names", "stylize_x_jpg_and_x_png"):
        status, err, _ = results[0][name]
        assert status == 0 and "Traceback" not in err, err
        assert "note:" in err and "_2.png" in err  # and it says so
    # a/x.png and b/x.png, each with sdir/a/s.png and sdir/b/s.png: four outputs, none lost.
    assert _visible(root / "work" / "names") == [
        "x_stylized_s.png", "x_stylized_s_2.png", "x_stylized_s_3.png", "x_stylized_s_4.png"]
    exts = root / "work" / "exts"
    assert [f for f in _files(exts) if not f.startswith(".")] == [
        "x_stylized_s.png", "x_stylized_s_2.png", "y_stylized_s.png"]


def test_one_bad_image_does_not_stop_the_others(root, results):
    status, err, _ = results[0]["stylize_one_bad_image"]
    assert status == 1 and "Traceback" not in err, err
    assert "broken.png" in err and "tiny.png" in err and "2 of 3 content images failed" in err
    assert _files(root / "work" / "mixed") == ["big_stylized_s.png"]


def test_outputs_follow_the_umask(root, results):
    """Under umask 022 every output is 0644, as `cp` or Pillow alone would make it."""
    for name in ("video_ok", "train_ok"):
        assert results[0][name][0] == 0, results[0][name][1]
    written = [root / "work" / "names" / "x_stylized_s.png", root / "work" / "video" / "out.mp4",
               root / "work" / "run" / "checkpoint.pt", root / "work" / "run" / "decoder_iter_1.pth"]
    assert {str(p): oct(p.stat().st_mode & 0o777) for p in written} == \
        {str(p): "0o644" for p in written}


def test_a_run_folder_is_never_mixed_with_another_run(root, results):
    status, err, _ = results[0]["train_again_refused"]
    assert status == 2 and "--resume auto" in err and "--overwrite" in err
    status, err, _ = results[0]["train_overwrite"]
    assert status == 0, err
    # --overwrite started over: the first run's decoder_iter_2.pth is gone, not left beside.
    assert _visible(root / "work" / "run") == ["checkpoint.pt", "decoder_iter_1.pth"]


def test_stale_temp_files_are_removed_only_when_proven_ours(root, results):
    """A killed run's temp file named in its marker is gone after the next run into that folder,
    with the marker. Hidden files that only look like temp files (of a dead process, a live one,
    or old-style names) are someone else's and stay, as do the symlinks planted under the old
    predictable names, and a marker naming a file that is not its own temp file."""
    dead, live = results[2], os.getpid()
    for folder in ("run", "video", "exts"):
        for name in _files(root / "work" / folder):
            path = root / "work" / folder / name
            if path.name.startswith(".") and not path.is_symlink() and not path.name.startswith(".adain-ext"):
                assert path.read_bytes() == b"someone else's file", path
    named = [f".checkpoint.pt.{dead}.tmp.pt", f".checkpoint.pt.{dead}.tmp", ".results.csv.4242.tmp.csv",
             ".draft.txt.31337.tmp"]
    assert all((root / "work" / "run" / name).is_file() for name in named)
    assert (root / "work" / "video" / f".out.mp4.{dead}.tmp.mp4").is_file()
    exts = root / "work" / "exts"
    assert (exts / f".y_stylized_s.png.{live}.tmp.png").is_file()
    assert (exts / f".other.png.{dead}.tmp.png").is_file()
    assert (exts / f".adain-ext-{'f' * 16}.pending").is_file()  # not proven: left alone
    assert not (exts / ".x_stylized_s.png.0123456789abcdef.tmp.png").exists()  # proven: removed
    assert not (exts / ".adain-ext-0123456789abcdef.pending").exists()


def test_planted_symlinks_redirect_nothing(root, results):
    """Symlinks to a victim file planted under every temp name the earlier versions used (the
    run's PID is known to whoever starts it): the victim keeps its bytes, and every output is a
    regular file of its own."""
    for name in ("video_ok", "train_ok", "stylize_same_names"):
        assert results[0][name][0] == 0, results[0][name][1]
    assert (root / "victim").read_bytes() == b"the victim's own bytes"
    for output in (root / "work" / "names" / "x_stylized_s.png", root / "work" / "run" / "checkpoint.pt",
                   root / "work" / "run" / "decoder_iter_1.pth", root / "work" / "video" / "out.mp4"):
        assert output.is_file() and not output.is_symlink(), output
        assert output.read_bytes() != b"the victim's own bytes"


def test_training_that_diverges_stops_and_saves_nothing_non_finite(root, results):
    import torch

    status, err, _ = results[0]["train_diverges"]
    assert status == 1 and "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("adain-ext train: error: ") and "at iteration " in line, err
    run = root / "work" / "diverge"
    for path in [run / "checkpoint.pt", *run.glob("decoder_iter_*.pth")]:
        state = torch.load(path, weights_only=True)
        state = state.get("decoder", state)
        assert all(bool(torch.isfinite(v).all()) for v in state.values()), path


def test_the_other_run_is_named_by_its_pid(results):
    assert f"(PID {os.getpid()})" in results[0]["train_save_dir_in_use"][1]


def test_odd_but_legal_requests_work(root, results):
    """Weights whose sum overflows (1e308,1e308), an output name whose temp name would pass 255
    bytes, a float image with a NaN pixel (replaced, with a note naming the file)."""
    from PIL import Image

    for name, folder in (("stylize_huge_weights", "huge"), ("stylize_long_name", "long"),
                         ("stylize_nan_pixel", "nanpix")):
        status, err, _ = results[0][name]
        assert status == 0 and "Traceback" not in err, (name, err)
        assert len(_visible(root / "work" / folder)) == 1, name
    err = results[0]["stylize_nan_pixel"][1]
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "nanpix.tif" in notes[0] and "NaN" in notes[0], err
    (out,) = (root / "work" / "nanpix").glob("*.png")
    assert np.asarray(Image.open(out)).std() > 1  # not the all-black image a NaN makes


def _limit_file_size():
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def test_a_full_disk_is_one_line_and_leaves_nothing(root):
    """Outputs larger than the space left (a file size limit, which the kernel enforces like a
    full disk): one line naming the file, exit status 1, no file left, partial or temp."""
    got = _drive(root, FULL, "full", preexec_fn=_limit_file_size)
    for name in FULL:
        status, err, _ = got[name]
        assert "Traceback" not in err, err
        lines = err.strip().splitlines()
        assert status == 1 and len(lines) == 1 and "cannot write " in lines[0], (name, err)
        assert "nothing was written" in lines[0]
    assert [p for p in (root / "full").rglob("*") if not p.is_dir()] == []


def test_export_on_a_full_disk_leaves_nothing(tmp_path):
    """write_onnx (export's writer) under a file size limit: OutputError naming the file, no
    temp file or marker left."""
    import resource

    from adain_ext.style_transfer import _output
    from adain_ext.style_transfer.export import write_onnx

    class Program:  # the part of torch.onnx.ONNXProgram that write_onnx uses
        def save(self, destination, external_data=False):
            destination.write(b"x" * (4 * FILE_SIZE_LIMIT))

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, hard))
    try:
        with pytest.raises(_output.OutputError, match=r"cannot write .*m\.onnx: the file size limit"):
            write_onnx(Program(), tmp_path / "m.onnx", overwrite=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(tmp_path.iterdir()) == []


def test_env_into_a_closed_pipe_is_quiet():
    proc = subprocess.run(["sh", "-c", f"'{sys.executable}' -m adain_ext.cli env | head -1"], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def _fake_bench(monkeypatch, after_first_row):
    from adain_ext import bench, bench_harness

    def measure(shapes, device, dtype, repeats, directions, runners, channels_last, progress):
        yield shapes[0], "forward", {name: 1e-3 for name in runners}
        after_first_row()
        yield shapes[1], "forward", {name: 1e-3 for name in runners}

    monkeypatch.setattr(bench, "check", lambda device, dtype: 0.0)
    monkeypatch.setattr(bench, "contenders", lambda device, peers: {bench_harness.OURS: None, "peer": None})
    monkeypatch.setattr(bench_harness, "measure", measure)
    return bench


@pytest.mark.parametrize("stop", ["SIGTERM", "error"])
def test_bench_keeps_the_rows_that_finished(tmp_path, monkeypatch, stop):
    """The JSON is written after every row: a SIGTERM (exit 143) or a later shape that fails
    leaves the rows that finished in it."""
    def after_first_row():
        assert json.loads((tmp_path / "b.json").read_text())["rows"]  # already on disk
        if stop == "SIGTERM":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        raise RuntimeError("out of memory for the next shape")

    bench = _fake_bench(monkeypatch, after_first_row)
    argv = ["--device", "cpu", "--shapes", "2x3x16;2x3x32", "--no-backward", "--json", str(tmp_path / "b.json")]
    if stop == "SIGTERM":
        assert bench.main(argv) == 143
    else:
        with pytest.raises(RuntimeError):
            bench.main(argv)
    saved = json.loads((tmp_path / "b.json").read_text())
    assert [row["shape"] for row in saved["rows"]] == [[2, 3, 16]]
    assert saved.get("interrupted" if stop == "SIGTERM" else "failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]


def test_export_checks_its_output_first_and_stops_quietly(root, tmp_path, monkeypatch, capsys):
    """A Ctrl-C during the (long) export: one line, exit status 130, nothing written."""
    from adain_ext.style_transfer import export

    def interrupted(net):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_onnx", interrupted)
    argv = ["--vgg", str(root / "vgg.pth"), "--decoder", str(root / "dec.pth"), "--output",
            str(tmp_path / "m.onnx")]
    assert export.main(argv) == 130
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_temp_files_cannot_be_redirected(tmp_path, monkeypatch):
    """Even with the random name guessed, a symlink (or any file) planted under the temp name or
    the marker's name makes the write fail, and the victim keeps its bytes."""
    from adain_ext.style_transfer import _output

    victim = tmp_path / "victim"
    victim.write_bytes(b"victim")
    monkeypatch.setattr(_output.secrets, "token_hex", lambda n: "ab" * n)
    out = tmp_path / "out" / "image.png"
    out.parent.mkdir()
    for planted in (_output.temp_name(out, "ab" * 8), ".adain-ext-" + "ab" * 8 + ".pending"):
        (out.parent / planted).symlink_to(victim)
        with pytest.raises(_output.OutputError, match="cannot write .*image.png"):
            with _output.atomic_output(out) as f:
                f.write(b"data")
        assert victim.read_bytes() == b"victim" and not out.exists()
        (out.parent / planted).unlink()
    with _output.atomic_output(out) as f:
        f.write(b"data")
    assert out.read_bytes() == b"data" and sorted(os.listdir(out.parent)) == ["image.png"]


def test_a_tensor_alpha_or_non_finite_scalars_are_refused():
    import torch

    from adain_ext._validation import check_scalars
    from adain_ext.style_transfer import StyleTransfer

    for alpha, eps in ((float("nan"), 1e-5), (float("inf"), 1e-5), (1.0, float("inf"))):
        with pytest.raises(ValueError, match="finite"):
            check_scalars(alpha, eps)
    with pytest.raises(TypeError, match="requires grad"):
        check_scalars(torch.tensor(0.5, requires_grad=True))
    net = StyleTransfer(random_vgg(num_modules=31), random_decoder())
    with pytest.raises(ValueError, match="alpha must be a finite"):
        net(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), alpha=float("nan"))


def test_exit_statuses_reach_the_shell(root):
    """The console entry point passes the statuses on (argparse's own errors are 2 too)."""
    def run(argv):
        proc = subprocess.run([sys.executable, "-m", "adain_ext.cli", *argv.replace("{R}", str(root))
                               .split()], env=_env(), capture_output=True, text=True, timeout=120)
        assert "Traceback" not in proc.stderr
        return proc.returncode

    assert run(ONE + " --output {R}/out/d --batch_size 0") == 2
    assert run(ONE + " --output {R}/out/d --batch_size x") == 2  # argparse
    assert run(VIDEO.replace("{R}/in.mp4", "{R}/trunc.avi") + " --output {R}/out/v.mp4") == 1


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stopped_run_leaves_no_partial_video(root, tmp_path, stop):
    long = _write_video(tmp_path / "long.mp4", 400)
    out = tmp_path / "out" / "styled.mp4"
    argv = VIDEO.replace("{R}/in.mp4", str(long)).replace("{R}", str(root)).split()
    # A test run in the background of a shell without job control (nohup ... &) inherits an
    # ignored SIGINT, and Python keeps it ignored: the run as a terminal starts it, with Ctrl-C live.
    proc = subprocess.Popen([sys.executable, "-m", "adain_ext.cli", *argv, "--output", str(out),
                             "--batch_size", "1"], env=_env(), stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list(out.parent.glob(".*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no temp file appeared"
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + stop and "Traceback" not in err, err
    assert _files(out.parent) == []  # neither the output nor its hidden temp file


def test_smallest_image_side_is_the_encoders():
    """MIN_IMAGE_SIDE, derived from the layout, is exactly where the encoder starts to work."""
    import torch

    from adain_ext.style_transfer import _checks

    encoder = models.Encoder(random_vgg(num_modules=31))
    side = _checks.MIN_IMAGE_SIDE
    assert encoder(torch.rand(1, 3, side, side + 5)).shape[-2] == 2
    with pytest.raises(RuntimeError, match="[Pp]adding"):
        encoder(torch.rand(1, 3, side - 1, side + 5))


def test_default_loader_workers_fit_the_machine():
    """The reference's 16 data-loading processes, but never more than the cores available (more
    only contend, and DataLoader warns about each)."""
    from adain_ext.style_transfer import train

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    args = train.build_parser().parse_args(["--content_dir", "c", "--style_dir", "s"])
    assert args.n_threads == min(16, cores)


def test_two_ranks_probing_one_new_save_dir_both_pass(tmp_path, monkeypatch):
    """The ranks of one distributed run check --save_dir at the same moment: a folder the other
    created (or already wrote into) between our look and our mkdir is not an error, and is left."""
    from adain_ext.style_transfer import _checks

    target = tmp_path / "new" / "run"
    real_mkdir = Path.mkdir

    def other_rank_first(self, *args, **kwargs):
        real_mkdir(self, exist_ok=True)  # the other rank wins the race ...
        if self == target:
            (self / "checkpoint.pt").write_bytes(b"")  # ... and has begun writing
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", other_rank_first)
    assert _checks.output_dir("--save_dir", target) == target
    assert (target / "checkpoint.pt").exists()
