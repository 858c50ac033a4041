"""accelerate() on the AdaIN idioms public models write, in 1-D, 2-D and 3-D.

Each model below is written the way its family writes the layer (no code is copied):
- a one-shot voice-conversion decoder (AdaIN-VC, jjery2243542/adaptive_voice_conversion): one
  shared nn.InstanceNorm1d and the modulation in a free function,
  `x * std.unsqueeze(dim=2) + mean.unsqueeze(dim=2)`; and a StyleTTS / StarGANv2-VC AdaIN1d,
  `(1 + gamma) * self.norm(x) + beta` with gamma, beta a `chunk` of a `view` of a linear layer;
- a MUNIT / FUNIT decoder (NVlabs/MUNIT networks.py): AdaptiveInstanceNorm2d written as the
  batch_norm trick, its weight and bias assigned by the generator from an MLP before each decode;
- a 3-D block: nn.InstanceNorm3d with `x * (style[:, 0] + 1.0) + style[:, 1]` after
  `view([-1, 2, C, 1, 1, 1])`, an affine InstanceNorm3d, F.instance_norm of a 5-D tensor, and the
  batch_norm trick on a clip.

Every test compares the accelerated model with an unchanged deep copy: the output and the
gradient of every input and parameter, in train and in eval mode, over several calls.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from model_fixtures import assert_same
from torch import nn

from adain_ext import functional
from adain_ext.rewrite import accelerate, find_fusable


def _count_fused_calls(monkeypatch) -> list:
    calls = []
    fused = functional.adain_affine
    monkeypatch.setattr(functional, "adain_affine",
                        lambda x, *a, **k: calls.append(tuple(x.shape)) or fused(x, *a, **k))
    return calls


def _check_accelerated(model: nn.Module, make_inputs, monkeypatch, calls_per_forward: int,
                       modes=(True, False), steps: int = 2):
    """accelerate(model) gives the same outputs and gradients as the model before, in each mode,
    with the fused op called calls_per_forward times per forward.

    In float64: normalising conv outputs and summing gradients over a deep model amplifies
    float32 rounding to ~2e-4 in places, while the rewrite itself must be exact (measured in
    float64: 1e-15 relative to the largest entry)."""
    model.double()
    before = copy.deepcopy(model)
    keys = list(model.state_dict())
    assert accelerate(model) is model
    assert list(model.state_dict()) == keys
    calls = _count_fused_calls(monkeypatch)
    for training in modes:
        model.train(training)
        before.train(training)
        for step in range(steps):  # new style inputs each step
            torch.manual_seed(100 + step)
            inputs = [t.double() for t in make_inputs()]
            assert_same(model, before, inputs, torch.float64)
            model.zero_grad()
            before.zero_grad()
    assert len(calls) == calls_per_forward * len(modes) * steps, calls
    for (name, after), (_, was) in zip(model.named_buffers(), before.named_buffers(), strict=True):
        torch.testing.assert_close(after, was, atol=1e-12, rtol=1e-12, msg=name)
    return calls


# ------------------------------------------------------------------------------------------
# 1-D: speech
# ------------------------------------------------------------------------------------------

def pad_layer(inp, layer):
    """Reflect-pads a (N, C, T) input so that the conv keeps T."""
    k = layer.kernel_size[0]
    pad = (k // 2, k // 2 - 1) if k % 2 == 0 else (k // 2, k // 2)
    return layer(F.pad(inp, pad=pad, mode="reflect"))


def append_cond(x, cond):
    """The speaker embedding's affine output, (N, 2C): the target mean, then the target std."""
    p = cond.size(1) // 2
    mean, std = cond[:, :p], cond[:, p:]
    return x * std.unsqueeze(dim=2) + mean.unsqueeze(dim=2)


class SpeechDecoder(nn.Module):
    """A one-shot voice-conversion decoder: conv blocks on (N, C, T), each conv followed by the
    one shared InstanceNorm1d and append_cond of that block's linear layer."""

    def __init__(self, c_in=6, c_cond=5, c_h=8, c_out=4, kernel_size=3, n_conv_blocks=2):
        super().__init__()
        self.n_conv_blocks = n_conv_blocks
        self.act = nn.LeakyReLU()
        self.in_conv_layer = nn.Conv1d(c_in, c_h, kernel_size=1)
        self.first_conv_layers = nn.ModuleList(
            [nn.Conv1d(c_h, c_h, kernel_size=kernel_size) for _ in range(n_conv_blocks)])
        self.second_conv_layers = nn.ModuleList(
            [nn.Conv1d(c_h, c_h, kernel_size=kernel_size) for _ in range(n_conv_blocks)])
        self.norm_layer = nn.InstanceNorm1d(c_h, affine=False)
        self.conv_affine_layers = nn.ModuleList(
            [nn.Linear(c_cond, c_h * 2) for _ in range(n_conv_blocks)])
        self.out_conv_layer = nn.Conv1d(c_h, c_out, kernel_size=1)

    def forward(self, x, cond):
        out = self.act(pad_layer(x, self.in_conv_layer))
        for i in range(self.n_conv_blocks):
            y = self.act(pad_layer(out, self.first_conv_layers[i]))
            y = self.norm_layer(y)
            y = append_cond(y, self.conv_affine_layers[i](cond))
            y = self.act(pad_layer(y, self.second_conv_layers[i]))
            y = self.norm_layer(y)
            y = append_cond(y, self.conv_affine_layers[i](cond))
            out = y + out
        return pad_layer(out, self.out_conv_layer)


class AdaIN1d(nn.Module):
    """The StyleTTS / StarGANv2-VC AdaIN for (N, C, T) features."""

    def __init__(self, style_dim, num_features):
        super().__init__()
        self.norm = nn.InstanceNorm1d(num_features, affine=False)
        self.fc = nn.Linear(style_dim, num_features * 2)

    def forward(self, x, s):
        h = self.fc(s)
        h = h.view(h.size(0), h.size(1), 1)
        gamma, beta = torch.chunk(h, chunks=2, dim=1)
        return (1 + gamma) * self.norm(x) + beta


class SpeechModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder = SpeechDecoder()
        self.post = AdaIN1d(5, 4)

    def forward(self, x, cond):
        return self.post(self.decoder(x, cond), cond)


def test_speech_model_findings():
    found = {(f.module, f.pattern) for f in find_fusable(SpeechModel()) if f.rewritten}
    assert found == {("decoder", "instance_norm_modulation"), ("post", "instance_norm_modulation")}
    assert sum(f.module == "decoder" for f in find_fusable(SpeechModel())) == 4


def test_speech_model(monkeypatch):
    torch.manual_seed(0)
    model = SpeechModel()
    _check_accelerated(model, lambda: (torch.randn(3, 6, 17), torch.randn(3, 5)), monkeypatch,
                       calls_per_forward=5)
    assert "append_cond" not in model.decoder.adain_fused_code  # traced through, then fused


# ------------------------------------------------------------------------------------------
# 2-D: MUNIT / FUNIT, the batch_norm trick
# ------------------------------------------------------------------------------------------

class AdaptiveInstanceNorm2d(nn.Module):
    """Instance norm as a batch norm over one batch of N*C channels; weight and bias (N*C,) are
    assigned by the generator before each call; the running buffers are placeholders."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.weight = None
        self.bias = None
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        assert self.weight is not None and self.bias is not None, "assign weight and bias first"
        b, c = x.size(0), x.size(1)
        running_mean = self.running_mean.repeat(b)
        running_var = self.running_var.repeat(b)
        x_reshaped = x.contiguous().view(1, b * c, *x.size()[2:])
        out = F.batch_norm(x_reshaped, running_mean, running_var, self.weight, self.bias,
                           True, self.momentum, self.eps)
        return out.view(b, c, *x.size()[2:])


class Conv2dBlock(nn.Module):
    def __init__(self, input_dim, output_dim, kernel_size, stride, padding=0, norm="none",
                 activation="relu"):
        super().__init__()
        self.pad = nn.ZeroPad2d(padding)
        self.conv = nn.Conv2d(input_dim, output_dim, kernel_size, stride)
        if norm == "adain":
            self.norm = AdaptiveInstanceNorm2d(output_dim)
        elif norm == "in":
            self.norm = nn.InstanceNorm2d(output_dim, track_running_stats=True)
        else:
            self.norm = None
        self.activation = {"relu": nn.ReLU(), "tanh": nn.Tanh(), "none": None}[activation]

    def forward(self, x):
        x = self.conv(self.pad(x))
        if self.norm:
            x = self.norm(x)
        if self.activation:
            x = self.activation(x)
        return x


class ResBlock(nn.Module):
    def __init__(self, dim, norm):
        super().__init__()
        self.model = nn.Sequential(Conv2dBlock(dim, dim, 3, 1, 1, norm=norm),
                                   Conv2dBlock(dim, dim, 3, 1, 1, norm=norm, activation="none"))

    def forward(self, x):
        residual = x
        out = self.model(x)
        out += residual
        return out


class MunitDecoder(nn.Module):
    def __init__(self, dim=8, output_dim=3, n_res=2):
        super().__init__()
        self.model = nn.Sequential(
            *[ResBlock(dim, "adain") for _ in range(n_res)],
            nn.Upsample(scale_factor=2),
            Conv2dBlock(dim, dim // 2, 5, 1, 2, norm="in"),
            Conv2dBlock(dim // 2, output_dim, 7, 1, 3, norm="none", activation="tanh"))

    def forward(self, x):
        return self.model(x)


class AdaINGen(nn.Module):
    """MUNIT's generator, decode half: an MLP maps the style code to every AdaIN layer's
    weight and bias, assigned to the layers before the decoder runs."""

    def __init__(self, dim=8, style_dim=4, mlp_dim=16):
        super().__init__()
        self.dec = MunitDecoder(dim)
        n_params = sum(2 * m.num_features for m in self.dec.modules()
                       if m.__class__.__name__ == "AdaptiveInstanceNorm2d")
        self.mlp = nn.Sequential(nn.Linear(style_dim, mlp_dim), nn.ReLU(),
                                 nn.Linear(mlp_dim, n_params))

    def forward(self, content, style):
        adain_params = self.mlp(style.view(style.size(0), -1))
        self.assign_adain_params(adain_params, self.dec)
        return self.dec(content)

    def assign_adain_params(self, adain_params, model):
        for m in model.modules():
            if m.__class__.__name__ == "AdaptiveInstanceNorm2d":
                mean = adain_params[:, :m.num_features]
                std = adain_params[:, m.num_features:2 * m.num_features]
                m.bias = mean.contiguous().view(-1)
                m.weight = std.contiguous().view(-1)
                if adain_params.size(1) > 2 * m.num_features:
                    adain_params = adain_params[:, 2 * m.num_features:]


def test_munit_findings():
    model = AdaINGen()
    rng = torch.get_rng_state()
    findings = find_fusable(model)
    assert torch.equal(torch.get_rng_state(), rng)  # the probes draw from their own generator
    fused = [f for f in findings if f.rewritten and f.pattern == "batch_norm_adain"]
    assert len(fused) == 4
    assert all("train/eval mode, ranks [3, 4, 5]" in f.detail for f in fused), fused
    # The ReLU of each Conv2dBlock with an AdaIN norm becomes the op's epilogue (the blocks with
    # activation="none" have none to fold).
    assert [(f.module, f.detail) for f in findings if f.pattern == "activation_epilogue"] == [
        (f"dec.model.{i}.model.0", "relu(AdaptiveInstanceNorm2d norm) -> activation='relu'")
        for i in (0, 1)]
    left = {(f.module, f.reason) for f in findings if not f.rewritten}
    assert ("dec.model.3", "InstanceNorm2d(affine=False, track_running_stats=True) uses its "
            "running statistics in eval mode and updates them in train mode") in left, left


def test_munit_decoder(monkeypatch):
    torch.manual_seed(0)
    model = AdaINGen()
    calls = _check_accelerated(
        model, lambda: (torch.randn(2, 8, 6, 5), torch.randn(2, 4, 1, 1)), monkeypatch,
        calls_per_forward=4)
    assert set(calls) == {(2, 8, 6, 5)}
    adain = model.dec.model[0].model[0].norm
    assert type(adain).__name__ == "AdaptiveInstanceNorm2d" and adain.adain_fused_code
    assert torch.equal(adain.running_mean, torch.zeros(8))  # the original leaves them too


def test_munit_weight_and_bias_read_at_call_time():
    torch.manual_seed(0)
    norm = AdaptiveInstanceNorm2d(3, eps=1e-3)
    before = copy.deepcopy(norm)
    accelerate(norm)
    x = torch.randn(2, 3, 4, 5)
    for _ in range(3):  # as the generator does before each decode
        weight, bias = torch.randn(6), torch.randn(6)
        norm.weight, norm.bias = weight, bias
        before.weight, before.bias = weight, bias
        torch.testing.assert_close(norm(x), before(x), atol=1e-5, rtol=1e-5)
    norm.eps = before.eps = 0.5  # the module's eps, read at call time too
    torch.testing.assert_close(norm(x), before(x), atol=1e-5, rtol=1e-5)
    norm.weight = before.weight = None  # and the original's error where it raised one
    with pytest.raises(AssertionError, match="assign weight and bias"):
        norm(x)
    norm.weight, norm.bias = torch.randn(8), torch.randn(8)  # 4 channels, the layer has 3
    with pytest.raises(RuntimeError, match="running_mean should contain 8 elements"):
        norm(torch.randn(2, 4, 4, 5))


class TrainingFlagAdaIN(AdaptiveInstanceNorm2d):
    """The same layer passing self.training: in eval mode batch_norm uses the running stats."""

    def forward(self, x):
        b, c = x.size(0), x.size(1)
        out = F.batch_norm(x.contiguous().view(1, b * c, *x.size()[2:]),
                           self.running_mean.repeat(b), self.running_var.repeat(b),
                           self.weight, self.bias, self.training, self.momentum, self.eps)
        return out.view(b, c, *x.size()[2:])


class ActivatedAdaIN(AdaptiveInstanceNorm2d):
    """The layer followed by an activation in the same forward: not the idiom alone."""

    def forward(self, x):
        return F.relu(super().forward(x))


def test_batch_norm_trick_modes_and_left_alone():
    findings = find_fusable(TrainingFlagAdaIN(3))
    assert [(f.pattern, f.reason) for f in findings] == [
        ("left_alone", "F.batch_norm(training=False) normalises with the running statistics in "
                       "eval mode"),
        ("batch_norm_adain", None)]
    norm = TrainingFlagAdaIN(3)
    before = copy.deepcopy(norm)
    accelerate(norm)
    x, weight, bias = torch.randn(2, 3, 4, 4), torch.randn(6), torch.randn(6)
    for m in (norm, before):
        m.weight, m.bias = weight, bias
    for training in (True, False):
        norm.train(training)
        before.train(training)
        torch.testing.assert_close(norm(x), before(x), atol=1e-5, rtol=1e-5)
    findings = find_fusable(ActivatedAdaIN(3))
    assert [f.reason for f in findings] == ["its forward also calls relu"] * 2


# ------------------------------------------------------------------------------------------
# 3-D: video / volumes
# ------------------------------------------------------------------------------------------

class AdaIN3d(nn.Module):
    def __init__(self, num_features, embed_size):
        super().__init__()
        self.mlp = nn.Linear(embed_size, num_features * 2)
        self.relu = nn.ReLU()
        self.instance_norm = nn.InstanceNorm3d(num_features, affine=False)

    def forward(self, x, latent):
        style = self.relu(self.mlp(latent))
        style = style.view([-1, 2, x.shape[1], 1, 1, 1])
        x = self.instance_norm(x)
        return x * (style[:, 0] + 1.0) + style[:, 1]


class ClipStyleBlock(nn.Module):
    """AdaIN3d, then an affine InstanceNorm3d and F.instance_norm of the clip, both modulated;
    activations between them, or each norm would cancel the previous modulation exactly and
    leave its gradients zero."""

    def __init__(self, channels, embed_size):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.2)
        self.adain = AdaIN3d(channels, embed_size)
        self.affine_norm = nn.InstanceNorm3d(channels, affine=True)
        nn.init.normal_(self.affine_norm.weight)
        nn.init.normal_(self.affine_norm.bias)
        self.style = nn.Linear(embed_size, 4 * channels)
        self.channels = channels

    def forward(self, x, latent):
        x = self.act(self.adain(self.conv(x), latent))
        s = self.style(latent).view(-1, 4 * self.channels, 1, 1, 1)
        scale, shift, mean, std = s.chunk(4, 1)
        x = self.act(self.affine_norm(x) * scale + shift)
        return torch.add(F.instance_norm(x, eps=1e-8).mul(1 + std), mean)


class ClipBlock(nn.Module):
    """A 3-D block on (N, C, T, H, W): the style block, then the batch_norm trick with weight
    and bias assigned from the latent code, as MUNIT's generator assigns them."""

    def __init__(self, channels=4, embed_size=5):
        super().__init__()
        self.block = ClipStyleBlock(channels, embed_size)
        self.mlp = nn.Linear(embed_size, 2 * channels)
        self.trick = AdaptiveInstanceNorm2d(channels)

    def forward(self, x, latent):
        mean, std = self.mlp(latent).chunk(2, 1)
        self.trick.bias, self.trick.weight = mean.reshape(-1), std.reshape(-1)
        return self.trick(self.block.act(self.block(x, latent)))


def test_clip_block_findings():
    findings = find_fusable(ClipBlock())
    found = sorted((f.module, f.pattern) for f in findings if f.rewritten)
    assert found == [("block", "activation_epilogue"), ("block", "activation_epilogue"),
                     ("block", "instance_norm_modulation"), ("block", "instance_norm_modulation"),
                     ("block.adain", "instance_norm_modulation"), ("trick", "batch_norm_adain")]
    assert not [f for f in findings if not f.rewritten]


def test_forward_that_assigns_attributes_is_not_traced():
    # fx does not record attribute assignments: rewriting this forward would drop them.
    class AssignsAndModulates(ClipBlock):
        def __init__(self):
            super().__init__()
            self.norm = nn.InstanceNorm3d(4)

        def forward(self, x, latent):
            mean, std = self.mlp(latent).chunk(2, 1)
            self.trick.bias, self.trick.weight = mean.reshape(-1), std.reshape(-1)
            return self.norm(self.trick(x)) * std[..., None, None, None] + mean[..., None, None, None]

    findings = [f for f in find_fusable(AssignsAndModulates()) if f.module == ""]
    assert [(f.pattern, f.reason) for f in findings] == [
        ("left_alone", "its forward assigns trick.bias, trick.weight, which a traced forward "
                       "would not do")]


def test_clip_block(monkeypatch):
    torch.manual_seed(0)
    model = ClipBlock()
    _check_accelerated(model, lambda: (torch.randn(2, 4, 3, 5, 4), torch.randn(2, 5)),
                       monkeypatch, calls_per_forward=4)


# ------------------------------------------------------------------------------------------
# What find_fusable says about the norms it leaves alone
# ------------------------------------------------------------------------------------------

class UnmodulatedNorms(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.InstanceNorm2d(3)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.norm(x)) + F.instance_norm(x) * 2


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.InstanceNorm1d(3)

    def forward(self, x):
        return self.norm(x) if x.sum() > 0 else x


def test_find_fusable_reasons():
    assert [(f.module, f.pattern, f.detail, f.reason) for f in find_fusable(UnmodulatedNorms())] == [
        ("", "left_alone", "InstanceNorm2d norm", "its output goes to call_module act, not a multiply"),
        ("", "left_alone", "F.instance_norm", "the scale is 2, not a tensor")]
    (finding,) = find_fusable(nn.Sequential(DataDependent()))
    assert (finding.module, finding.pattern, finding.detail) == ("0", "left_alone",
                                                                 "forward of DataDependent")
    assert finding.reason.startswith("torch.fx cannot trace it: TraceError"), finding.reason


@pytest.mark.parametrize("fmt", [torch.channels_last, torch.channels_last_3d],
                         ids=["munit_channels_last", "adain3d_channels_last_3d"])
def test_channels_last_input(fmt, monkeypatch):
    # The features reach the fused op in their layout (no copy to contiguous on the way). 3-D:
    # the norm comes first, since CPU float64 Conv3d returns contiguous output.
    torch.manual_seed(0)
    model = (AdaINGen() if fmt == torch.channels_last else AdaIN3d(4, 5)).to(memory_format=fmt)
    shape, style_shape = (((2, 8, 6, 5), (2, 4, 1, 1)) if fmt == torch.channels_last
                          else ((2, 4, 3, 5, 4), (2, 5)))
    layouts = []
    fused = functional.adain_affine
    monkeypatch.setattr(functional, "adain_affine", lambda x, *a, **k: layouts.append(
        x.is_contiguous(memory_format=fmt) and not x.is_contiguous()) or fused(x, *a, **k))
    _check_accelerated(model, lambda: (torch.randn(shape).contiguous(memory_format=fmt),
                                       torch.randn(style_shape)),
                       monkeypatch, calls_per_forward=4 if fmt == torch.channels_last else 1,
                       steps=1)
    assert layouts and all(layouts)


class NormOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.InstanceNorm1d(3)

    def forward(self, x):
        return self.norm(x)


class Modulation(nn.Module):
    def forward(self, x, style):
        return x * style[:, :3, None] + style[:, 3:, None]


class SplitAcrossSiblings(nn.Module):
    def __init__(self):
        super().__init__()
        self.normalize, self.modulate = NormOnly(), Modulation()

    def forward(self, x, style):
        return self.modulate(self.normalize(x), style)


def test_norm_and_modulation_in_sibling_modules(monkeypatch):
    # `normalize` alone leaves its norm unmodulated; the parent sees both and fuses them, so
    # nothing is reported as left alone
    findings = find_fusable(SplitAcrossSiblings())
    assert [(f.module, f.pattern) for f in findings] == [("", "instance_norm_modulation")]
    _check_accelerated(SplitAcrossSiblings(), lambda: (torch.randn(2, 3, 7), torch.randn(2, 6)),
                       monkeypatch, calls_per_forward=1)


# ------------------------------------------------------------------------------------------
# Every argument the patterns read: a rewrite must keep it or leave the code alone
# ------------------------------------------------------------------------------------------

class _Modulated(nn.Module):
    """`expression(x, scale, shift)` with scale, shift (N, C, 1, 1) from a (N, 2C) style."""

    def __init__(self, expression):
        super().__init__()
        self.expression = expression
        self.norm = nn.InstanceNorm2d(3, eps=0.3)
        self.weight = nn.Parameter(torch.rand(3) + 0.5)
        self.bias = nn.Parameter(torch.randn(3))
        self.register_buffer("running_mean", torch.zeros(3))
        self.register_buffer("running_var", torch.ones(3))

    def forward(self, x, style):
        scale, shift = style[:, :3, None, None], style[:, 3:, None, None]
        return self.expression(self, x, scale, shift)


ARGUMENT_CASES = {  # name: (expression, fused calls per forward)
    # The arithmetic's own keyword arguments change the function: left alone.
    "add_alpha_keyword": (lambda m, x, s, b: torch.add(F.instance_norm(x) * s, b, alpha=2.0), 0),
    "add_method_alpha": (lambda m, x, s, b: (m.norm(x) * s).add(b, alpha=0.5), 0),
    "mul_then_sub": (lambda m, x, s, b: m.norm(x) * s - b, 0),
    # Running statistics used or updated: left alone (the buffers must change as before).
    "running_stats_updated": (lambda m, x, s, b: F.instance_norm(
        x, m.running_mean, m.running_var, momentum=0.3) * s + b, 0),
    "running_stats_used": (lambda m, x, s, b: F.instance_norm(
        x, m.running_mean, m.running_var, use_input_stats=False) * s + b, 0),
    # What the norm reads, by keyword and from the module: fused with each value kept.
    "eps_keyword": (lambda m, x, s, b: F.instance_norm(x, eps=0.3) * s + b, 1),
    "weight_bias_eps_keywords": (lambda m, x, s, b: torch.add(torch.mul(F.instance_norm(
        x, weight=m.weight, bias=m.bias, eps=0.2), s), b), 1),
    "module_eps": (lambda m, x, s, b: b + s * m.norm(x), 1),
}


@pytest.mark.parametrize("name", ARGUMENT_CASES)
def test_arguments_the_patterns_read(name, monkeypatch):
    expression, calls = ARGUMENT_CASES[name]
    model = _Modulated(expression)
    rewritten = [f for f in find_fusable(model) if f.rewritten]
    assert len(rewritten) == calls, rewritten
    _check_accelerated(model, lambda: (torch.randn(2, 3, 5, 4) * 2 + 1, torch.randn(2, 6)),
                       monkeypatch, calls_per_forward=calls, steps=1)


class _ReferenceCalls(nn.Module):
    """The reference functions called with keyword arguments of non-default values."""

    def forward(self, content, style, mean, std):
        from adain_ext import reference

        out = reference.adain(content, style, alpha=0.3, eps=0.2, unbiased=False)
        out = out + reference.adain_affine(content, mean, std, eps=0.4, unbiased=False,
                                           activation="leaky_relu", negative_slope=0.3,
                                           pre_activation="relu")
        m, s = reference.mean_std(style, eps=0.5, unbiased=False)
        m2, s2 = reference.calc_mean_std(content, 0.6)
        return out, m + s, m2 * s2


def test_reference_calls_keep_their_keyword_arguments():
    model = _ReferenceCalls().double()
    assert [f.pattern for f in find_fusable(model)] == ["reference_call"] * 4
    before = copy.deepcopy(model)
    accelerate(model)
    gen = torch.Generator().manual_seed(3)
    inputs = [torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64) * 2 + 1,
              torch.randn(2, 3, 4, 7, generator=gen, dtype=torch.float64) * 3 - 1,
              torch.randn(2, 3, generator=gen, dtype=torch.float64),
              torch.rand(2, 3, generator=gen, dtype=torch.float64) + 0.5]
    for got, want in zip(model(*inputs), before(*inputs), strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
