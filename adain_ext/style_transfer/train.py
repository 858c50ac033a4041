"""`adain-ext train`: trains the decoder with the paper's losses (the reference train.py).

    adain-ext train --content_dir coco/train2014 --style_dir wikiart/train --vgg models/vgg_normalised.pth
    torchrun --nproc_per_node 4 -m adain_ext.cli train ...      # DistributedDataParallel

Defaults are the PyTorch reference's: Adam, lr 1e-4 decayed as lr / (1 + 5e-5 * iteration),
batch 8, 160000 iterations, style weight 10, content weight 1, images resized to 512x512 and
randomly cropped to 256 (`--keep_aspect` resizes the shorter side instead).

Reproducibility: sample k of iteration i is drawn from a shuffled epoch order and cropped with a
generator seeded by (seed, stream, global position), so a run is the same function of the seed
whatever the number of processes, and `--resume` continues exactly (decoder, Adam state,
iteration, grad-scaler and RNG states are in the checkpoint). `--batch_size` is the GLOBAL batch:
each of W processes takes batch_size / W of it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

import adain_ext
from adain_ext.style_transfer import _checks, images, models
from adain_ext.style_transfer._output import atomic_output
from adain_ext.style_transfer._runtime import (
    CommandFailed,
    UsageError,
    progress,
    remove_stale_temps,
    resolve_device,
    run_command,
    warn,
)

CHECKPOINT = "checkpoint.pt"
DECODER_SNAPSHOTS = "decoder_iter_*.pth"  # decoder_iter_{N}.pth: the published layout, per save
LOCK = ".adain-ext-train.lock"  # held (flock) by the one run that writes into a SAVE_DIR


def _default_workers() -> int:
    """The reference's 16 loader processes, but no more than the cores this process may use
    (more only contend, and DataLoader warns about them)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(16, cores or 1)


def build_parser(prog: str = "adain-ext train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Train an AdaIN decoder "
                                "(option names follow the PyTorch reference's train.py).")
    p.add_argument("--content_dir", type=str, required=True)
    p.add_argument("--style_dir", type=str, required=True)
    p.add_argument("--vgg", type=str, default="models/vgg_normalised.pth",
                   help="encoder weights (vgg_normalised or torchvision vgg19; .pth or .safetensors)")
    p.add_argument("--decoder", type=str, default=None,
                   help="start from these decoder weights instead of a random init")
    p.add_argument("--save_dir", default="./experiments")
    p.add_argument("--log_dir", default="./logs", help="TensorBoard logs (if tensorboard is installed)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr_decay", type=float, default=5e-5)
    p.add_argument("--max_iter", type=int, default=160000)
    p.add_argument("--batch_size", type=int, default=8, help="global batch over all processes")
    p.add_argument("--style_weight", type=float, default=10.0)
    p.add_argument("--content_weight", type=float, default=1.0)
    p.add_argument("--n_threads", type=int, default=_default_workers(),
                   help="data-loading worker processes (default: min(16, cores), here %(default)s)")
    p.add_argument("--save_model_interval", type=int, default=10000)
    p.add_argument("--image_size", type=int, default=512, help="resize before cropping")
    p.add_argument("--crop_size", type=int, default=256, help="random crop fed to the network")
    p.add_argument("--keep_aspect", action="store_true",
                   help="resize the shorter side to --image_size (the reference squashes to a square)")
    p.add_argument("--ext", type=str, default=",".join(e[1:] for e in images.IMAGE_EXTENSIONS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", type=str, default=None,
                   help=f"a checkpoint to continue from, or 'auto' for SAVE_DIR/{CHECKPOINT} if present")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in a SAVE_DIR that holds another one; its "
                   f"{CHECKPOINT} and {DECODER_SNAPSHOTS} are deleted once the new run has written "
                   "its first checkpoint (without it such a SAVE_DIR is refused)")
    p.add_argument("--amp", type=str, default="none", choices=["none", "fp16", "bf16"],
                   help="mixed precision (autocast; fp16 uses a gradient scaler)")
    p.add_argument("--device", type=str, default="auto")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format (default: on; faster convs)")
    p.add_argument("--backend", type=str, default="auto",
                   choices=adain_ext.BACKENDS, help="AdaIN op backend")
    p.add_argument("--log_interval", type=int, default=10)
    p.add_argument("--no_tensorboard", action="store_true")
    p.add_argument("--no_progress", action="store_true")
    return p


# ---------------------------------------------------------------------------------------------
# Data

def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class TrainImages(Dataset):
    """Item p (a global sample position) = image perm_epoch[p mod n], resized and randomly cropped.

    A file that cannot be read is skipped with one warning: the next image in the epoch order
    takes its place, the same in every process.
    """

    def __init__(self, paths: list[Path], image_size: int, crop_size: int, keep_aspect: bool,
                 seed: int, stream: int):
        self.paths, self.image_size, self.crop_size = paths, image_size, crop_size
        self.keep_aspect, self.seed, self.stream = keep_aspect, seed, stream
        self._perm: tuple[int, torch.Tensor] | None = None
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def _order(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(_seed_of(self.seed, self.stream, epoch))
            self._perm = (epoch, torch.randperm(len(self.paths), generator=g))
        return self._perm[1]

    def _load(self, index: int, position: int) -> torch.Tensor:
        img = images.as_8bit(images.open_image(self.paths[index]))
        if self.keep_aspect:
            img = images.resize_shorter(img, self.image_size)
        else:
            img = images.resize_square(img, self.image_size)
        x = images.to_tensor(img)
        g = torch.Generator().manual_seed(_seed_of(self.seed, self.stream, 1 << 40, position))
        h, w = x.shape[1:]
        top = int(torch.randint(0, h - self.crop_size + 1, (1,), generator=g))
        left = int(torch.randint(0, w - self.crop_size + 1, (1,), generator=g))
        return x[:, top : top + self.crop_size, left : left + self.crop_size]

    def __getitem__(self, position: int) -> torch.Tensor:
        epoch, k = divmod(position, len(self.paths))
        order = self._order(epoch)
        for step in range(len(self.paths)):
            index = int(order[(k + step) % len(self.paths)])
            if index in self._bad:
                continue
            try:
                return self._load(index, position)
            except (images.ImageError, OSError) as error:
                self._bad.add(index)
                warnings.warn(f"skipping unreadable training image: {error}", RuntimeWarning,
                              stacklevel=1)
        raise RuntimeError(f"no readable images among the {len(self.paths)} files")


class GlobalBatchSampler(Sampler[int]):
    """Positions of this process's share of every global batch, from `start` to `stop` iterations."""

    def __init__(self, start: int, stop: int, global_batch: int, rank: int, world: int):
        self.start, self.stop, self.rank = start, stop, rank
        self.global_batch, self.local = global_batch, global_batch // world

    def __iter__(self):
        for it in range(self.start, self.stop):
            base = it * self.global_batch + self.rank * self.local
            yield from range(base, base + self.local)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.local


# ---------------------------------------------------------------------------------------------
# Losses

class AdaINLoss(nn.Module):
    """The paper's losses: content = MSE(relu4_1(g(t)), t); style = sum over relu1_1..relu4_1 of
    MSE(means) + MSE(stds), the statistics from adain_ext.mean_std (gradients through the op)."""

    def __init__(self, vgg: nn.Sequential, decoder: nn.Sequential, backend: str = "auto",
                 eps: float = 1e-5):
        super().__init__()
        self.encoder = models.Encoder(vgg)
        self.decoder = decoder
        self.backend, self.eps = backend, eps

    def _stats(self, feat: torch.Tensor):
        return adain_ext.mean_std(feat, self.eps, backend=self.backend)

    def forward(self, content: torch.Tensor, style: torch.Tensor):
        with torch.no_grad():
            style_feats = self.encoder.taps(style)
            style_stats = [self._stats(f) for f in style_feats]
            content_feat = self.encoder(content)
            t = adain_ext.adain(content_feat, style_feats[-1], 1.0, self.eps, backend=self.backend)
        g_t = self.decoder(t)
        g_feats = self.encoder.taps(g_t)
        loss_c = F.mse_loss(g_feats[-1].float(), t.float())
        loss_s = g_t.new_zeros((), dtype=torch.float32)
        for feat, (s_mean, s_std) in zip(g_feats, style_stats):
            mean, std = self._stats(feat)
            loss_s = loss_s + F.mse_loss(mean.float(), s_mean.float()) + F.mse_loss(std.float(), s_std.float())
        return loss_c, loss_s


# ---------------------------------------------------------------------------------------------
# Checkpoints

def save_checkpoint(path: Path, decoder: nn.Module, optimizer, scaler, iteration: int, args) -> None:
    """Atomic: written to a temp file in the same directory, fsynced, then renamed over `path`
    (_output.atomic_output)."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    state = {
        "format": 1,
        "iteration": iteration,
        "decoder": {k: v.detach().cpu() for k, v in decoder.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng,
        "config": {k: getattr(args, k) for k in ("seed", "batch_size", "lr", "lr_decay",
                                                  "crop_size", "image_size", "keep_aspect")},
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_output(path) as f:  # a temp file no planted symlink can redirect, then a rename
        f.write(buffer.getbuffer())


def load_checkpoint(path: Path) -> dict:
    """The checkpoint's state, every part checked: a damaged file (unreadable, missing parts, a
    decoder of another layout, NaN or infinite numbers) is a CommandFailed naming what is wrong,
    never a traceback halfway through the resume."""
    if not path.is_file():
        raise UsageError(f"--resume: checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (pickle, zip and weights_only errors alike)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CommandFailed(f"--resume: cannot read checkpoint {path} (damaged or truncated: "
                            f"{first})") from None
    if not isinstance(state, dict) or state.get("format") != 1:
        raise UsageError(f"--resume: {path} is not an adain-ext training checkpoint")

    def damaged(what: str):
        return CommandFailed(f"--resume: checkpoint {path} is damaged: {what}")

    iteration = state.get("iteration")
    if not isinstance(iteration, int) or iteration < 0:
        raise damaged(f"its iteration is {iteration!r}")
    decoder_state = state.get("decoder")
    if not isinstance(decoder_state, dict) or \
            not all(isinstance(v, torch.Tensor) for v in decoder_state.values()):
        raise damaged("it holds no decoder state dict")
    try:
        models._check_keys(decoder_state, models._expected(models.decoder()),
                           "decoder (29-module layout)", "its decoder")
        models.check_finite(decoder_state, "its decoder")
    except models.WeightsError as error:
        raise damaged(str(error)) from None
    optimizer = state.get("optimizer")
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict) or \
            not isinstance(optimizer.get("param_groups"), list):
        raise damaged("it holds no optimizer state")
    for index, moments in optimizer["state"].items():
        for name, value in (moments.items() if isinstance(moments, dict) else ()):
            if isinstance(value, torch.Tensor) and value.is_floating_point() and \
                    not bool(torch.isfinite(value).all()):
                raise damaged(f"the optimizer's {name!r} of parameter {index} holds NaN or "
                              "infinite values")
    rng = state.get("rng")
    if not isinstance(rng, dict) or not isinstance(rng.get("torch"), torch.Tensor) or \
            rng["torch"].dtype != torch.uint8:
        raise damaged("it holds no random-number state")
    config = state.get("config")
    if not isinstance(config, dict) or not {"seed", "batch_size"} <= set(config):
        raise damaged("it holds no run configuration")
    return state


def _restore(state: dict, path: str, decoder: nn.Module, optimizer, scaler) -> int:
    """Loads a checked checkpoint into the run; the iteration to continue from."""
    try:
        decoder.load_state_dict(state["decoder"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CommandFailed(f"--resume: checkpoint {path} does not fit this run: {first}") from None
    return int(state["iteration"])


def lock_holder(save_dir: Path) -> str | None:
    """The PID written in SAVE_DIR's lock while another process holds it, else None."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(save_dir / LOCK, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return os.read(fd, 32).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)
    return None


@contextlib.contextmanager
def run_lock(save_dir: Path):
    """Holds SAVE_DIR's lock for the run (an flock, so a killed run releases it): a second run
    on the same folder is refused with the first one's PID. SAVE_DIR is created here; if the
    run ends without writing anything into it, it is removed again."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no lock
        yield
        return
    created = []  # the folders made here, deepest first
    probe = save_dir
    while not probe.exists() and probe.parent != probe:
        created.append(probe)
        probe = probe.parent
    save_dir.mkdir(parents=True, exist_ok=True)
    path = save_dir / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) |
                     getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UsageError(f"--save_dir: another training run (PID {holder}) is writing into "
                             f"{save_dir}; wait for it to end or choose another --save_dir") from None
        try:  # the file may have been unlinked by a run that just ended: lock the one in place
            same = os.path.samestat(os.fstat(fd), os.lstat(path))
        except OSError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
        for folder in created:  # only while empty: nothing of this run was written there
            try:
                folder.rmdir()
            except OSError:
                break


def _run_files(save_dir: Path) -> list[Path]:
    """The files a run leaves in SAVE_DIR (its checkpoint and decoder snapshots)."""
    if not save_dir.is_dir():
        return []
    return sorted([p for p in [save_dir / CHECKPOINT] if p.is_file()] + list(save_dir.glob(DECODER_SNAPSHOTS)))


def _first_readable(option: str, root: str, paths: list[Path]) -> None:
    """At least one image of the folder opens (it is usually the first one tried)."""
    for path in paths:
        try:
            images.open_image(path)
            return
        except (images.ImageError, OSError):
            continue
    raise CommandFailed(f"{option}: none of the {len(paths)} images in {root} can be read")


def check_options(args) -> tuple[list[Path], list[Path]]:
    """Every option checked before any model loads; returns the content and style images."""
    for option in ("max_iter", "batch_size", "save_model_interval", "log_interval"):
        _checks.at_least(f"--{option}", getattr(args, option), 1)
    _checks.at_least("--n_threads", args.n_threads, 0)
    _checks.image_size("--crop_size", args.crop_size, zero_keeps=False)
    if args.crop_size > args.image_size:
        raise UsageError(f"--crop_size {args.crop_size} is larger than --image_size {args.image_size}")
    _checks.finite("--lr", args.lr, 0.0)
    _checks.finite("--lr_decay", args.lr_decay, 0.0)
    _checks.finite("--style_weight", args.style_weight, 0.0)
    _checks.finite("--content_weight", args.content_weight, 0.0)
    _checks.weights_file("--vgg", args.vgg)
    if args.decoder:
        _checks.weights_file("--decoder", args.decoder)
    save_dir = _checks.output_dir("--save_dir", args.save_dir)
    if args.resume and args.overwrite:
        raise UsageError("--overwrite: cannot be combined with --resume")
    if args.resume not in (None, "auto"):
        _checks.input_file("--resume", args.resume, "checkpoint")
    resuming = args.resume == "auto" and (save_dir / CHECKPOINT).is_file() or \
        args.resume not in (None, "auto")
    holder = lock_holder(save_dir)
    if holder:
        raise UsageError(f"--save_dir: another training run (PID {holder}) is writing into "
                         f"{save_dir}; wait for it to end or choose another --save_dir")
    existing = _run_files(save_dir)
    if existing and not resuming and not args.overwrite:
        raise UsageError(f"--save_dir: {save_dir} already holds a run ({existing[-1].name}, ...); "
                         "pass --resume auto to continue it or --overwrite to start over")
    weights = {"--vgg": [Path(args.vgg)], "--decoder": [Path(args.decoder)] if args.decoder else []}
    for run_file in existing + [save_dir / CHECKPOINT]:
        _checks.not_an_input("--save_dir", run_file, weights)
    exts = [e.strip() for e in args.ext.split(",") if e.strip()]
    found = []
    for option in ("content_dir", "style_dir"):
        root = _checks.input_dir(f"--{option}", getattr(args, option))
        paths = images.scan_images(root, exts)
        if not paths:
            raise UsageError(f"--{option}: no images with extensions {','.join(exts)} in {root}")
        _first_readable(f"--{option}", str(root), paths)
        found.append(paths)
    return found[0], found[1]


# ---------------------------------------------------------------------------------------------
# The loop

def _distributed(device_arg: str):
    """(rank, world, device), initialising torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, resolve_device(device_arg)
    use_cuda = torch.cuda.is_available() and device_arg in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _tensorboard(log_dir: str, disabled: bool):
    if disabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("note: tensorboard is not installed, so no TensorBoard logs "
              "(pip install tensorboard to get them)", file=sys.stderr)
        return None
    return SummaryWriter(log_dir)


def train_step(model: nn.Module, optimizer, content: torch.Tensor, style: torch.Tensor,
               content_weight: float, style_weight: float, autocast_dtype=None, scaler=None):
    """One optimisation step of the paper's loss; returns (loss, content loss, style loss).
    autocast_dtype runs the forward under torch.autocast; scaler (a GradScaler, for float16)
    scales the loss."""
    with torch.autocast(content.device.type, dtype=autocast_dtype,
                        enabled=autocast_dtype is not None):
        loss_c, loss_s = model(content, style)
    loss = content_weight * loss_c + style_weight * loss_s
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss, loss_c, loss_s


def _check_training_memory(args, device) -> None:
    """A training batch surely fits: the network's peak per crop, times three for the
    activations the backward pass keeps (a lower bound)."""
    local = args.batch_size // max(1, int(os.environ.get("WORLD_SIZE", "1")))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.amp, torch.float32)
    _checks.fits_memory("--crop_size", f"a batch of {local} crops of {args.crop_size}x"
                        f"{args.crop_size} pixels", args.crop_size ** 2 * local, dtype, device,
                        factor=3.0)


def _nonfinite(module: nn.Module) -> str | None:
    """The name of the first parameter of `module` holding NaN or Inf, else None."""
    for name, value in module.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def train(args) -> dict:
    """Runs training; returns the last iteration's {"iteration", "loss_c", "loss_s"}, the run's
    wall time ("seconds") and every iteration's weighted loss on this process ("history")."""
    content_paths, style_paths = check_options(args)
    rank, world, device = _distributed(args.device)
    if args.batch_size % world:
        raise UsageError(f"--batch_size {args.batch_size} (the global batch) must be divisible by "
                         f"the number of processes ({world})")
    _checks.backend("--backend", args.backend, device)
    _check_training_memory(args, device)
    save_dir = Path(args.save_dir)
    with run_lock(save_dir) if rank == 0 else contextlib.nullcontext():
        return _train(args, content_paths, style_paths, rank, world, device, save_dir)


def _train(args, content_paths, style_paths, rank, world, device, save_dir: Path) -> dict:
    if rank == 0:
        remove_stale_temps(save_dir)
    # Every input is read and checked before anything of an earlier run is touched; with
    # --overwrite its files go only once this run has written its first checkpoint.
    resume = args.resume
    if resume == "auto":
        resume = str(save_dir / CHECKPOINT) if (save_dir / CHECKPOINT).is_file() else None
    state = load_checkpoint(Path(resume)) if resume else None
    torch.manual_seed(args.seed)  # the decoder's random init: the same in every process and run
    vgg = _checks.load_weights("--vgg", models.load_vgg, args.vgg)
    decoder = _checks.load_weights("--decoder", models.load_decoder, args.decoder) if args.decoder \
        else models.decoder()
    replaced = _run_files(save_dir) if args.overwrite and rank == 0 else []

    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    net = AdaINLoss(vgg, decoder, backend=args.backend).to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(net.decoder.parameters(), lr=args.lr)
    use_scaler = args.amp == "fp16" and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None
    start = 0
    if state is not None:
        start = _restore(state, resume, net.decoder, optimizer, scaler)
        if state["config"]["batch_size"] != args.batch_size or state["config"]["seed"] != args.seed:
            warn(f"resuming with another batch size or seed than the checkpoint's "
                 f"({state['config']}); the run will not match an uninterrupted one")
    model = net
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)

    def loader(paths, stream):
        data = TrainImages(paths, args.image_size, args.crop_size, args.keep_aspect, args.seed, stream)
        sampler = GlobalBatchSampler(start, args.max_iter, args.batch_size, rank, world)
        return iter(DataLoader(data, batch_size=args.batch_size // world, sampler=sampler,
                               num_workers=args.n_threads, pin_memory=device.type == "cuda",
                               persistent_workers=False))

    content_iter, style_iter = loader(content_paths, 0), loader(style_paths, 1)
    autocast_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.amp)
    writer = _tensorboard(args.log_dir, args.no_tensorboard) if rank == 0 else None
    last = {"iteration": start, "loss_c": float("nan"), "loss_s": float("nan")}
    history: list[float] = []
    bar = progress(args.max_iter, "train", args.no_progress or rank != 0, initial=start)
    started = time.perf_counter()
    kept = "the files of earlier saves are kept" if start or not replaced else \
        "the earlier run's files are kept"
    for it in range(start, args.max_iter):
        lr = args.lr / (1.0 + args.lr_decay * it)
        for group in optimizer.param_groups:
            group["lr"] = lr
        content = next(content_iter).to(device, non_blocking=True, memory_format=memory_format)
        style = next(style_iter).to(device, non_blocking=True, memory_format=memory_format)
        loss, loss_c, loss_s = train_step(model, optimizer, content, style, args.content_weight,
                                          args.style_weight, autocast_dtype, scaler)
        done = it + 1
        last = {"iteration": done, "loss_c": loss_c.item(), "loss_s": loss_s.item()}
        history.append(loss.item())
        if not math.isfinite(history[-1]):
            bar.close()
            raise CommandFailed(f"the loss is {history[-1]} at iteration {done}: the training "
                                f"diverged (try a smaller --lr); stopped, nothing of iteration "
                                f"{done} saved, {kept}")
        bar.update(1)
        if done % args.log_interval == 0 or done == args.max_iter:
            bar.set_postfix_str(f"loss_c {last['loss_c']:.3f} loss_s {last['loss_s']:.3f}")
            if writer is not None:
                writer.add_scalar("loss_content", last["loss_c"], done)
                writer.add_scalar("loss_style", last["loss_s"], done)
                writer.add_scalar("lr", lr, done)
        if rank == 0 and (done % args.save_model_interval == 0 or done == args.max_iter):
            bad = _nonfinite(net.decoder)
            if bad is not None:
                bar.close()
                raise CommandFailed(f"the decoder's {bad!r} became NaN or infinite at iteration "
                                    f"{done}: the training diverged (try a smaller --lr); "
                                    f"stopped without saving it, {kept}")
            snapshot = save_dir / f"decoder_iter_{done}.pth"
            save_checkpoint(save_dir / CHECKPOINT, net.decoder, optimizer, scaler, done, args)
            models.write_state_dict(net.decoder.state_dict(), snapshot)
            # --overwrite: the earlier run's files go now that this run has its own.
            for old in replaced:
                if old not in (save_dir / CHECKPOINT, snapshot):
                    old.unlink(missing_ok=True)
            replaced = []
            kept = "the files of earlier saves are kept"
    bar.close()
    if writer is not None:
        writer.close()
    last["seconds"] = time.perf_counter() - started
    last["history"] = history
    if world > 1:
        dist.barrier()
    return last


def main(argv: list[str] | None = None) -> int:
    def run(args) -> int:
        train(args)
        return 0

    try:
        return run_command("train", build_parser, run, argv)
    finally:
        if dist.is_available() and dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.destroy_process_group()
