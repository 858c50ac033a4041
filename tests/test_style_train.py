"""`adain-ext train`: the losses learn, DDP equals one process, a killed run resumes exactly."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("PIL", reason="the style-transfer tests need Pillow (pip install Pillow)")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import adain_ext  # noqa: F401
from style_helpers import one_thread, random_image, random_vgg, write_png  # noqa: F401

from adain_ext.style_transfer import models, train

ROOT = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    for i in range(4):
        write_png(root / "content" / f"c{i}.png", random_image(40, 48, 100 + i))
        write_png(root / "style" / f"s{i}.png", random_image(44, 40, 200 + i), "RGB" if i else "L")
    (root / "style" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    vgg = random_vgg(num_modules=31)  # a truncated encoder file: all that training runs
    models.write_state_dict(vgg.state_dict(), root / "vgg.pth")
    return root


def _argv(data, save_dir, *extra):
    return ["--content_dir", str(data / "content"), "--style_dir", str(data / "style"),
            "--vgg", str(data / "vgg.pth"), "--save_dir", str(save_dir),
            "--image_size", "40", "--crop_size", "32", "--batch_size", "2", "--n_threads", "0",
            "--no_tensorboard", "--no_progress", "--log_interval", "1", *extra]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def test_defaults_follow_the_reference():
    args = train.build_parser().parse_args(["--content_dir", "c", "--style_dir", "s"])
    assert (args.lr, args.lr_decay, args.max_iter, args.batch_size, args.style_weight,
            args.content_weight, args.image_size, args.crop_size) == \
        (1e-4, 5e-5, 160000, 8, 10.0, 1.0, 512, 256)


def test_a_few_steps_reduce_the_loss(data, tmp_path):
    args = train.build_parser().parse_args(_argv(data, tmp_path, "--max_iter", "24", "--lr", "1e-3",
                                                 "--save_model_interval", "12"))
    with pytest.warns(RuntimeWarning, match="skipping unreadable training image"):
        result = train.train(args)
    history = result["history"]
    assert len(history) == 24 and all(math.isfinite(h) for h in history)
    assert sum(history[-4:]) / 4 < 0.7 * sum(history[:4]) / 4, history
    # Checkpoints and decoder files in the published layout, loadable by stylize.
    assert (tmp_path / "checkpoint.pt").is_file()
    models.load_decoder(tmp_path / "decoder_iter_12.pth")
    models.load_decoder(tmp_path / "decoder_iter_24.pth")
    assert not list(tmp_path.glob(".*"))


def test_losses_and_gradients_match_the_reference_net(data):
    from adain_ext.style_transfer.reference import ReferenceNet

    vgg = models.load_vgg(data / "vgg.pth")
    torch.manual_seed(0)
    dec = models.decoder()
    content = torch.stack([random_image(32, 32, 3), random_image(32, 32, 4)])
    style = torch.stack([random_image(32, 32, 5), random_image(32, 32, 6)])
    ref = ReferenceNet(vgg, dec)
    ref_c, ref_s = ref(content, style)
    (ref_c + 10 * ref_s).backward()
    ref_grads = [p.grad.clone() for p in dec.parameters()]
    dec.zero_grad()
    ours_c, ours_s = train.AdaINLoss(vgg, dec)(content, style)
    (ours_c + 10 * ours_s).backward()
    torch.testing.assert_close(ours_c, ref_c, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours_s, ref_s, rtol=1e-4, atol=1e-6)
    for ours, theirs in zip((p.grad for p in dec.parameters()), ref_grads):
        # fp32 rounding through 22 convs (see the DDP test); float64 agrees to 1e-12.
        torch.testing.assert_close(ours, theirs, rtol=1e-2, atol=1e-2 * theirs.abs().max().item())


def test_style_loss_gradients_flow_through_mean_std(data):
    vgg, dec = models.load_vgg(data / "vgg.pth"), models.decoder()
    net = train.AdaINLoss(vgg, dec)
    content, style = random_image(32, 32, 1)[None], random_image(32, 32, 2)[None]
    _, loss_s = net(content, style)
    loss_s.backward()
    assert dec[1].weight.grad is not None and dec[1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.encoder.parameters())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:skipping unreadable training image")
def test_ddp_two_processes_equal_one(data, tmp_path):
    """Same global batch: 2 gloo processes x 1 image == 1 process x 2 images.

    The comparison is on Adam's moment estimates, which accumulate every iteration's gradient,
    with lr 0 so that all three iterations see the same weights: weights after real Adam steps
    are ill-conditioned in gradients near 0 (the update is about lr * sign(g)), so one rounding
    of the gradient all-reduce could flip them, and that would test Adam, not DDP.
    """
    steps = ["--max_iter", "3", "--save_model_interval", "3", "--seed", "7", "--lr", "0"]
    train.train(train.build_parser().parse_args(_argv(data, tmp_path / "one", *steps)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "adain_ext.cli", "train", *_argv(data, tmp_path / "two", *steps)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240, cwd=ROOT,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    assert one["iteration"] == two["iteration"] == 3
    for key, value in one["decoder"].items():  # the same seeded init in every process
        torch.testing.assert_close(two["decoder"][key], value, rtol=0, atol=0)
    # fp32 gradients of a random decoder through 22 convs and std-of-near-flat-channel losses
    # carry ~1e-3 relative rounding noise (in float64 the two paths agree to 1e-16); any real
    # bug (unaveraged gradients, other data) is an O(1) difference.
    for key, state in one["optimizer"]["state"].items():
        other = two["optimizer"]["state"][key]
        for moment in ("exp_avg", "exp_avg_sq"):
            scale = state[moment].abs().max().item()
            torch.testing.assert_close(other[moment], state[moment], rtol=1e-2, atol=1e-2 * scale)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:skipping unreadable training image")
def test_kill_and_resume_gives_the_same_state(data, tmp_path):
    steps = ["--max_iter", "8", "--save_model_interval", "2", "--seed", "3"]
    train.train(train.build_parser().parse_args(_argv(data, tmp_path / "straight", *steps)))
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "adain_ext.cli", "train", *_argv(data, killed, *steps)]
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (killed / "checkpoint.pt").is_file() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-run, possibly mid-write of the next checkpoint
    proc.wait()
    at = torch.load(killed / "checkpoint.pt", weights_only=True)["iteration"]
    assert 2 <= at < 8  # it really was cut off mid-run
    train.train(train.build_parser().parse_args(_argv(data, killed, *steps, "--resume", "auto")))
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert a["iteration"] == b["iteration"] == 8
    for key, value in a["decoder"].items():
        torch.testing.assert_close(b["decoder"][key], value, rtol=0, atol=0)
    exp_a, exp_b = a["optimizer"]["state"], b["optimizer"]["state"]
    for key in exp_a:
        torch.testing.assert_close(exp_b[key]["exp_avg"], exp_a[key]["exp_avg"], rtol=0, atol=0)


def test_bad_training_inputs(data, tmp_path, capsys):
    from adain_ext.cli import main

    assert main(["train", *_argv(data, tmp_path, "--max_iter", "1"), "--style_dir",
                 str(tmp_path / "missing")]) == 2
    assert "--style_dir" in capsys.readouterr().err
    assert main(["train", *_argv(data, tmp_path, "--max_iter", "1"), "--resume",
                 str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["train", *_argv(data, tmp_path, "--max_iter", "1", "--crop_size", "64")]) == 2
    assert "--crop_size 64 is larger than --image_size 40" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:skipping unreadable training image")
def test_mixed_precision_and_keep_aspect_run(data, tmp_path):
    """bf16 autocast gives the losses of the float32 run (same seed, same batches) to bf16
    accuracy."""
    common = ("--max_iter", "2", "--keep_aspect", "--no-channels_last")
    args = train.build_parser().parse_args(_argv(data, tmp_path / "bf16", *common, "--amp", "bf16"))
    result = train.train(args)
    full = train.train(train.build_parser().parse_args(_argv(data, tmp_path / "fp32", *common)))
    assert result["iteration"] == 2
    assert result["history"] == pytest.approx(full["history"], rel=0.02)  # measured: 0.4%
    assert result["history"] != pytest.approx(full["history"], rel=1e-6)  # autocast did run in bf16


class _RecordingWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter: tensorboard is an optional dependency
    (the `train` extra), not a test one, so the logging path is checked against this recorder."""

    calls: list = []

    def __init__(self, log_dir):
        self.calls.append(("open", log_dir))

    def add_scalar(self, tag, value, step):
        self.calls.append((tag, step, value))

    def close(self):
        self.calls.append(("close",))


def test_tensorboard_logs_every_interval(data, tmp_path, monkeypatch):
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = _RecordingWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    monkeypatch.setattr(_RecordingWriter, "calls", [])
    argv = [a for a in _argv(data, tmp_path / "ckpt", "--max_iter", "4", "--log_interval", "2",
                             "--log_dir", str(tmp_path / "logs")) if a != "--no_tensorboard"]
    train.train(train.build_parser().parse_args(argv))
    calls = _RecordingWriter.calls
    assert calls[0] == ("open", str(tmp_path / "logs")) and calls[-1] == ("close",)
    scalars = {(tag, step): value for tag, step, value in calls[1:-1]}
    assert set(scalars) == {(tag, step) for tag in ("loss_content", "loss_style", "lr")
                            for step in (2, 4)}
    assert all(math.isfinite(v) and v > 0 for v in scalars.values())
    # The logged rate is the one the step used: lr / (1 + lr_decay * iteration), iteration 0-based.
    assert scalars["lr", 2] == pytest.approx(1e-4 / (1 + 5e-5 * 1))
    assert scalars["lr", 4] == pytest.approx(1e-4 / (1 + 5e-5 * 3))


def test_training_without_tensorboard_says_so_and_runs(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    argv = [a for a in _argv(data, tmp_path / "ckpt", "--max_iter", "1") if a != "--no_tensorboard"]
    result = train.train(train.build_parser().parse_args(argv))
    assert result["iteration"] == 1
    assert "tensorboard is not installed" in capsys.readouterr().err
