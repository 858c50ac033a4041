"""The paper's networks in the exact layouts of the published weight files, and their loading.

`vgg_normalised()` and `decoder()` build the same `nn.Sequential`s as the PyTorch reference
(naoto0804/pytorch-AdaIN `net.py`), so its `vgg_normalised.pth` and `decoder.pth` load with
`load_state_dict(strict=True)` and keep their key names ("0.weight", "2.weight", ...).

Weight files are read with `torch.load(weights_only=True)` (no pickled code runs) or, for
`.safetensors`, with the optional `safetensors` package. Nothing is ever downloaded.
"""
from __future__ import annotations

import io
import itertools
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from adain_ext.style_transfer._output import atomic_output

# Encoder (normalised VGG-19): index -> (in, out) channels of each conv. Index 0 is the 1x1
# preprocessing conv (RGB in [0, 1] -> Caffe's mean-subtracted BGR * 255); the others are 3x3
# convs with padding=0 behind a ReflectionPad2d(1).
ENCODER_CONVS = {
    0: (3, 3), 2: (3, 64), 5: (64, 64), 9: (64, 128), 12: (128, 128),
    16: (128, 256), 19: (256, 256), 22: (256, 256), 25: (256, 256),
    29: (256, 512), 32: (512, 512), 35: (512, 512), 38: (512, 512),
    42: (512, 512), 45: (512, 512), 48: (512, 512), 51: (512, 512),
}
ENCODER_POOLS = (7, 14, 27, 40)
ENCODER_MODULES = 53
# relu1_1, relu2_1, relu3_1, relu4_1: the style-loss layers; relu4_1 is the AdaIN layer.
ENCODER_TAPS = (3, 10, 17, 30)
ENCODER_USED = ENCODER_TAPS[-1] + 1  # modules 0..30 are all that ever run

DECODER_CONVS = {
    1: (512, 256), 5: (256, 256), 8: (256, 256), 11: (256, 256), 14: (256, 128),
    18: (128, 128), 21: (128, 64), 25: (64, 64), 28: (64, 3),
}
DECODER_UPSAMPLES = (3, 16, 23)
DECODER_MODULES = 29

# torchvision.models.vgg19().features: conv indices in order, mapped onto ours (all but index 0).
TORCHVISION_VGG19_CONVS = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


WEIGHTS_HINT = ("the published vgg_normalised.pth and decoder.pth are not downloaded by this "
                "package: get them from the naoto0804/pytorch-AdaIN release (or convert Xun Huang's "
                "original Torch7 models) and pass --vgg/--decoder; see docs/style_transfer.md, 'Weights'")


class WeightsError(ValueError):
    """A weights file that does not fit the network; the message names every problem."""


class DamagedWeights(WeightsError):
    """A weights file of the right layout whose numbers cannot be used (NaN or infinite values)."""


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """DamagedWeights naming the first tensor that holds NaN or infinite values (such weights
    turn every image black without any other sign)."""
    for key, value in state.items():
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise DamagedWeights(f"{source} is damaged: tensor {key!r} holds {bad} NaN or "
                                     f"infinite value{'s' if bad > 1 else ''} (of {value.numel()})")


def _load_failure(path: Path, error: Exception) -> str:
    """One line saying why torch.load(weights_only=True) refused `path`."""
    text = str(error).strip()
    detail = text.split("WeightsUnpickler error:", 1)[-1].strip() if "WeightsUnpickler error:" in text \
        else text
    detail = next((line.strip() for line in detail.splitlines() if line.strip()), "")
    if "Unsupported global" in detail:
        name = detail.split("GLOBAL", 1)[-1].strip().split()[0] if "GLOBAL" in detail else "an object"
        return (f"{path} holds pickled Python objects besides tensors ({name.rstrip(',.')}); it is "
                "refused because loading it could run code (only plain state dicts are read)")
    if len(detail) < 12:  # "5", ")", "": a parser's detail, no explanation
        detail = f"{type(error).__name__}{': ' + detail if detail else ''}"
    return (f"{path} is not a readable PyTorch weights file (damaged, truncated or another format;"
            f" torch.load says: {detail})")


def _encoder_module(index: int) -> nn.Module:
    if index == 0:
        return nn.Conv2d(3, 3, kernel_size=1)
    if index in ENCODER_CONVS:
        return nn.Conv2d(*ENCODER_CONVS[index], kernel_size=3)
    if index in ENCODER_POOLS:
        return nn.MaxPool2d(2, 2, 0, ceil_mode=True)
    if index + 1 in ENCODER_CONVS:
        return nn.ReflectionPad2d(1)
    return nn.ReLU()


def vgg_normalised(num_modules: int = ENCODER_MODULES) -> nn.Sequential:
    """The encoder: the reference's 53-module `net.vgg`, or its first `num_modules` modules.

    Only modules 0..30 (up to relu4_1) run; a truncated encoder of 31 modules holds just those.
    """
    if not ENCODER_USED <= num_modules <= ENCODER_MODULES:
        raise ValueError(f"the encoder has {ENCODER_USED} to {ENCODER_MODULES} modules, "
                         f"got {num_modules}")
    return nn.Sequential(*(_encoder_module(i) for i in range(num_modules)))


def decoder() -> nn.Sequential:
    """The decoder: the reference's 29-module `net.decoder` (no final activation)."""
    layers = []
    for i in range(DECODER_MODULES):
        if i in DECODER_CONVS:
            layers.append(nn.Conv2d(*DECODER_CONVS[i], kernel_size=3))
        elif i in DECODER_UPSAMPLES:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        elif i + 1 in DECODER_CONVS:
            layers.append(nn.ReflectionPad2d(1))
        else:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Runs modules 0..30 of a `vgg_normalised` Sequential and returns relu1_1..relu4_1.

    The Sequential is held as `vgg` and shared, not copied; the encoder is frozen (eval mode,
    no parameter gradients) because the paper never trains it.
    """

    def __init__(self, vgg: nn.Sequential):
        super().__init__()
        if len(vgg) < ENCODER_USED:
            raise ValueError(f"the encoder needs at least {ENCODER_USED} modules, got {len(vgg)}")
        self.vgg = vgg
        bounds = (0,) + tuple(t + 1 for t in ENCODER_TAPS)
        self.slices = nn.ModuleList(nn.Sequential(*list(vgg)[a:b]) for a, b in itertools.pairwise(bounds))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # frozen; there is no dropout or batch norm anyway

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu4_1 features."""
        for block in self.slices:
            x = block(x)
        return x

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[relu1_1, relu2_1, relu3_1, relu4_1]."""
        out = []
        for block in self.slices:
            x = block(x)
            out.append(x)
        return out


# ---------------------------------------------------------------------------------------------
# Reading and writing weights

def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a `.pth`/`.pt`/`.tar` (torch.load, weights_only) or `.safetensors` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path} ({WEIGHTS_HINT})")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise ImportError(f"reading {path} needs safetensors: pip install safetensors "
                              "(or pip install 'adain_ext[style]')") from error
        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types
            raise WeightsError(f"{path} is not a readable safetensors file: {error}") from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights_only errors all mean the same here
        raise WeightsError(_load_failure(path, error)) from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    elif isinstance(state, Mapping) and state.get("format") == 1 and isinstance(state.get("decoder"), Mapping):
        state = state["decoder"]  # an `adain-ext train` checkpoint.pt: its decoder
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors) but "
                           f"a {type(state).__name__}")
    odd = next(((k, v) for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise WeightsError(f"{path} does not hold a state dict: its entry {odd[0]!r} is a "
                           f"{type(odd[1]).__name__}, not a tensor")
    return dict(state)


def write_state_dict(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Writes atomically (temp file + rename): a crash never leaves a half-written file."""
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import save
        except ImportError as error:
            raise ImportError("writing .safetensors needs safetensors: pip install safetensors") from error
        data = save(state)
    else:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getbuffer()
    with atomic_output(path) as f:  # a temp file no planted symlink can redirect, then a rename
        f.write(data)


def _check_keys(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], what: str,
                source: str) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: file has {list(state[k].shape)}, the {what} needs {list(expected[k])}"
                  for k in expected if k in state and state[k].shape != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    if problems:
        raise WeightsError(f"{source} does not fit the {what}: " + "; ".join(problems))


def _expected(module: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items()}


def _is_torchvision_vgg19(state: Mapping[str, torch.Tensor]) -> bool:
    keys = {k.removeprefix("features.") for k in state}
    w0 = state.get("features.0.weight", state.get("0.weight"))
    return (any(k.startswith("features.") for k in state) or
            (w0 is not None and tuple(w0.shape) == (64, 3, 3, 3) and "7.weight" in keys))


def torchvision_vgg19_to_normalised(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps torchvision's vgg19 state dict (`features.N` keys, or `vgg19().features` keys) onto
    our indices, adding the 1x1 conv that does torchvision's ImageNet mean/std normalisation.

    The classifier keys are ignored. Missing convs are reported; a file with only the first
    relu4_1 convs becomes a truncated encoder.
    """
    features = {}
    for key, value in state.items():
        if key.startswith("classifier."):
            continue
        features[key.removeprefix("features.")] = value
    ours = [i for i in ENCODER_CONVS if i != 0]
    out: dict[str, torch.Tensor] = {}
    unexpected = set(features)
    for tv_index, our_index in zip(TORCHVISION_VGG19_CONVS, ours):
        for name in ("weight", "bias"):
            key = f"{tv_index}.{name}"
            if key in features:
                out[f"{our_index}.{name}"] = features[key]
                unexpected.discard(key)
    if unexpected:
        raise WeightsError(f"torchvision vgg19 state dict has unexpected keys {sorted(unexpected)}")
    dtype = next(iter(out.values())).dtype if out else torch.float32
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype)
    std = torch.tensor(IMAGENET_STD, dtype=dtype)
    # (x - mean) / std as a 1x1 conv on RGB input in [0, 1].
    out["0.weight"] = torch.diag(1.0 / std).reshape(3, 3, 1, 1)
    out["0.bias"] = -mean / std
    return out


def encoder_state_from(state: Mapping[str, torch.Tensor], source: str = "state dict"):
    """Validates an encoder state dict in our layout (or torchvision's, which it maps) and
    returns (state, num_modules): 53 for the full file, fewer for a truncated one.

    A truncated file must be a prefix of the full layout that reaches relu4_1 (conv 29).
    """
    if _is_torchvision_vgg19(state):
        state = torchvision_vgg19_to_normalised(state)
    indices = []
    for key in state:
        head = key.split(".", 1)[0]
        if not head.isdigit():
            raise WeightsError(f"{source} does not fit the encoder: unexpected keys "
                               f"{[k for k in state if not k.split('.', 1)[0].isdigit()]}")
        indices.append(int(head))
    last_conv = max((i for i in indices if i in ENCODER_CONVS), default=-1)
    # The full file has 53 modules; a truncated one ends with the ReLU after its last conv.
    num_modules = ENCODER_MODULES if last_conv == max(ENCODER_CONVS) else max(last_conv + 2, ENCODER_USED)
    num_modules = min(num_modules, ENCODER_MODULES)
    expected = _expected(vgg_normalised(num_modules))
    _check_keys(state, expected, "encoder (vgg_normalised, "
                f"{'full' if num_modules == ENCODER_MODULES else 'truncated'} "
                f"{num_modules}-module layout)", source)
    return dict(state), num_modules


def load_vgg(source, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """The encoder Sequential from a weights file path or a state dict, loaded strictly.

    Accepts the published `vgg_normalised.pth` (53 modules), a truncated copy (at least modules
    0..30), `.safetensors` of either, and torchvision vgg19 state dicts.
    """
    name = str(source) if not isinstance(source, Mapping) else "state dict"
    state = read_state_dict(source) if not isinstance(source, Mapping) else source
    state, num_modules = encoder_state_from(state, name)
    check_finite(state, name)
    vgg = vgg_normalised(num_modules)
    vgg.load_state_dict(state, strict=True)
    return vgg.to(dtype)


def load_decoder(source, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """The decoder Sequential from a weights file path or a state dict, loaded strictly."""
    name = str(source) if not isinstance(source, Mapping) else "state dict"
    state = read_state_dict(source) if not isinstance(source, Mapping) else dict(source)
    net = decoder()
    _check_keys(state, _expected(net), "decoder (29-module layout)", name)
    check_finite(state, name)
    net.load_state_dict(state, strict=True)
    return net.to(dtype)
