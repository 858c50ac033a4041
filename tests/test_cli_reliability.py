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
}
# Runs that do their work: (expected exit status, argv).
WORK = {
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
}

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
    # Leftovers of killed runs (a dead process's temp files) and one of a live process.
    dead, live = _dead_pid(), os.getpid()
    (r.parent / "dead.pid").write_text(str(dead))
    for folder, name in (("work/run", "checkpoint.pt"), ("work/video", "out.mp4"),
                         ("work/exts", "x_stylized_s.png")):
        (r / folder).mkdir(parents=True, exist_ok=True)
        suffix = Path(name).suffix
        (r / folder / f".{name}.{dead}.tmp{suffix}").write_bytes(b"stale")
    (r / "work" / "run" / f".checkpoint.pt.{dead}.tmp").write_bytes(b"stale, earlier name")
    (r / "work" / "exts" / f".y_stylized_s.png.{live}.tmp.png").write_bytes(b"a live run's")
    (r / "work" / "exts" / f".other.png.{dead}.tmp.png").write_bytes(b"not a name this run writes")
    return r


@pytest.fixture(scope="module")
def results(root):
    """Every table row run once, in one driver process; the inputs' bytes before and after."""
    inputs = _digest(root)
    cases = [(name, argv.replace("{R}", str(root)).split()) for name, (_, _, argv) in USAGE.items()]
    cases += [(name, argv.replace("{R}", str(root)).split()) for name, (_, argv) in WORK.items()]
    (root.parent / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(root.parent / "cases.json")],
                          env=_env(), cwd=root.parent, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), inputs, (root.parent / "dead.pid").read_text()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("name", list(USAGE))
def test_each_mistake_is_one_line_before_the_models_load(name, root, results):
    status, says, _ = USAGE[name]
    got, err, loads = results[0][name]
    assert "Traceback" not in err, err
    assert got == status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"adain-ext {name.split('_')[0]}: error: "), err
    assert says in lines[0]
    if status == 2 and name != "stylize_wrong_weights_file":
        assert loads == 0  # refused before any weights were read
    assert _files(root / "out") == []  # no output, partial file or folder left behind


def test_no_input_changed(root, results):
    """Refused and failed runs left every input and every file of an earlier run as it was (the
    work runs only wrote into their own work/ folders)."""
    before = {k: v for k, v in results[1].items() if not k.startswith("work/")}
    after = {k: v for k, v in _digest(root).items() if not k.startswith("work/")}
    assert after == before


def test_two_inputs_with_one_output_name_both_survive(root, results):
    for name in ("stylize_same_names", "stylize_x_jpg_and_x_png"):
        status, err, _ = results[0][name]
        assert status == 0 and "Traceback" not in err, err
        assert "note:" in err and "_2.png" in err  # and it says so
    # a/x.png and b/x.png, each with sdir/a/s.png and sdir/b/s.png: four outputs, none lost.
    assert _files(root / "work" / "names") == [
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
    assert _files(root / "work" / "run") == ["checkpoint.pt", "decoder_iter_1.pth"]


def test_stale_temp_files_are_removed_at_start(root, results):
    """A dead run's temp files of the names a run writes are gone after it; a live process's
    stays, and so does a temp file of a name the run does not write."""
    leftovers = [f for folder in ("run", "video", "exts") for f in _files(root / "work" / folder)
                 if f.startswith(".")]
    assert sorted(leftovers) == sorted([f".y_stylized_s.png.{os.getpid()}.tmp.png",
                                        f".other.png.{results[2]}.tmp.png"])


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
    proc = subprocess.Popen([sys.executable, "-m", "adain_ext.cli", *argv, "--output", str(out),
                             "--batch_size", "1"], env=_env(), stderr=subprocess.PIPE, text=True)
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
