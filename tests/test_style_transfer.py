"""The style-transfer system: weight layouts and loading, the network's controls, the stylize CLI.

Training, DDP and resume live in test_style_train.py; video in test_style_video.py.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("PIL", reason="the style-transfer tests need Pillow (pip install Pillow)")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the "compiled extension missing" warning, if any
    import adain_ext
from style_helpers import (  # noqa: F401  (one_thread is an autouse fixture)
    one_thread,
    random_decoder,
    random_image,
    random_vgg,
    torchvision_vgg19_state,
    write_png,
)

from adain_ext import reference as ref_ops
from adain_ext.style_transfer import images, models
from adain_ext.style_transfer import stylize as stylize_cli
from adain_ext.style_transfer.network import StyleTransfer, coral, mix_stats, normalize_weights
from adain_ext.style_transfer.reference import reference_encoder, reference_style_transfer

BACKENDS = ["reference"] + (["cpp"] if adain_ext.HAS_CPP else [])




@pytest.fixture(scope="module")
def vgg():
    return random_vgg()


@pytest.fixture(scope="module")
def dec():
    return random_decoder()


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory, vgg, dec):
    root = tmp_path_factory.mktemp("weights")
    # The CLI tests read the truncated layout (modules 0..30): a third of the bytes to load.
    truncated = {k: v for k, v in vgg.state_dict().items() if int(k.split(".")[0]) <= 30}
    models.write_state_dict(truncated, root / "vgg_normalised.pth")
    models.write_state_dict(dec.state_dict(), root / "decoder.pth")
    return root


def _net(vgg, dec, backend="auto"):
    return StyleTransfer(vgg, dec, backend=backend).eval()


# --------------------------------------------------------------------------------------------
# Layouts and loading

def test_layouts_match_the_published_files():
    enc, dec = models.vgg_normalised(), models.decoder()
    assert len(enc) == 53 and len(dec) == 29
    conv_keys = {int(k.split(".")[0]) for k in enc.state_dict()}
    assert conv_keys == {0, 2, 5, 9, 12, 16, 19, 22, 25, 29, 32, 35, 38, 42, 45, 48, 51}
    assert isinstance(enc[0], nn.Conv2d) and enc[0].kernel_size == (1, 1)
    for i in (7, 14, 27, 40):
        assert isinstance(enc[i], nn.MaxPool2d) and enc[i].ceil_mode
    for i in (3, 10, 17, 30):
        assert isinstance(enc[i], nn.ReLU)
    for i in conv_keys - {0}:
        assert isinstance(enc[i - 1], nn.ReflectionPad2d) and enc[i].padding == (0, 0)
    assert {int(k.split(".")[0]) for k in dec.state_dict()} == {1, 5, 8, 11, 14, 18, 21, 25, 28}
    assert [type(dec[i]) for i in (3, 16, 23)] == [nn.Upsample] * 3
    assert isinstance(dec[28], nn.Conv2d) and dec[28].out_channels == 3  # no final activation


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_strict_round_trip(tmp_path, vgg, dec, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    models.write_state_dict(vgg.state_dict(), tmp_path / f"vgg{suffix}")
    models.write_state_dict(dec.state_dict(), tmp_path / f"dec{suffix}")
    vgg2 = models.load_vgg(tmp_path / f"vgg{suffix}")
    dec2 = models.load_decoder(tmp_path / f"dec{suffix}")
    assert len(vgg2) == 53
    for a, b in ((vgg, vgg2), (dec, dec2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # Plain torch: the files are ordinary state dicts that the reference's code loads as is.
    if suffix == ".pth":
        models.vgg_normalised().load_state_dict(torch.load(tmp_path / "vgg.pth", weights_only=True))
        models.decoder().load_state_dict(torch.load(tmp_path / "dec.pth", weights_only=True))
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_truncated_encoder_file(tmp_path, vgg):
    state = {k: v for k, v in vgg.state_dict().items() if int(k.split(".")[0]) <= 30}
    models.write_state_dict(state, tmp_path / "vgg_relu4_1.pth")
    short = models.load_vgg(tmp_path / "vgg_relu4_1.pth")
    assert len(short) == 31
    x = random_image(24, 24, 0)[None]
    torch.testing.assert_close(models.Encoder(short)(x), models.Encoder(vgg)(x))


def test_torchvision_vgg19_mapping():
    state = torchvision_vgg19_state()
    vgg = models.load_vgg(state)
    assert len(vgg) == 53
    torch.testing.assert_close(vgg[51].weight, state["features.34.weight"])
    torch.testing.assert_close(vgg[29].weight, state["features.19.weight"])
    x = random_image(20, 20, 1)[None]
    mean = torch.tensor(models.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(models.IMAGENET_STD).view(1, 3, 1, 1)
    expected = F.relu(F.conv2d(F.pad((x - mean) / std, (1, 1, 1, 1), mode="reflect"),
                               state["features.0.weight"], state["features.0.bias"]))
    torch.testing.assert_close(models.Encoder(vgg).taps(x)[0], expected, rtol=1e-5, atol=1e-5)
    # vgg19().features.state_dict() (no "features." prefix) maps the same way.
    bare = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    torch.testing.assert_close(models.load_vgg(bare)[2].weight, state["features.0.weight"])


def test_weight_errors_name_the_problem(tmp_path, vgg, dec):
    bad = dict(dec.state_dict())
    bad.pop("28.bias")
    bad["99.weight"] = torch.zeros(1)
    bad["1.weight"] = torch.zeros(256, 512, 1, 1)
    with pytest.raises(models.WeightsError) as info:
        models.load_decoder(bad)
    message = str(info.value)
    assert "missing keys ['28.bias']" in message and "unexpected keys ['99.weight']" in message
    assert "1.weight: file has [256, 512, 1, 1], the decoder" in message
    with pytest.raises(models.WeightsError, match="does not fit the encoder"):
        models.load_vgg(dec.state_dict())  # a decoder file given as --vgg
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(models.WeightsError, match="not a readable PyTorch weights file"):
        models.load_decoder(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        models.load_decoder(tmp_path / "absent.pth")


# --------------------------------------------------------------------------------------------
# The network

@pytest.mark.parametrize("hw", [(37, 45), (33, 64), (17, 9)])
def test_output_size_matches_input(vgg, dec, hw):
    net = _net(vgg, dec)
    with torch.inference_mode():
        out = net(random_image(*hw, 2)[None], random_image(29, 31, 3)[None])
    assert out.shape == (1, 3, *hw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_pipeline_matches_the_reference(vgg, dec, backend, alpha):
    content, style = random_image(40, 48, 4)[None], random_image(32, 32, 5)[None]
    with torch.inference_mode():
        ours = _net(vgg, dec, backend)(content, style, alpha)
        ref = reference_style_transfer(reference_encoder(vgg), dec, content, style, alpha)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_stays_close_to_fp32(vgg, dec, dtype):
    content, style = random_image(32, 40, 30)[None], random_image(32, 32, 31)[None]
    net = _net(vgg, dec)
    with torch.inference_mode():
        full = net(content, style)
        half = StyleTransfer(*(copy.deepcopy(m).to(dtype) for m in (vgg, dec))).eval().to(
            memory_format=torch.channels_last)(content.to(dtype).contiguous(
                memory_format=torch.channels_last), style.to(dtype))
    assert half.dtype == dtype and half.shape == full.shape
    assert (half.float() - full).abs().mean() < 0.03 * full.abs().mean()


def test_batched_stylize_uses_cached_stats(vgg, dec):
    net = _net(vgg, dec)
    contents = torch.stack([random_image(32, 32, s) for s in (6, 7, 8)])
    style = random_image(32, 32, 9)[None]
    with torch.inference_mode():
        stats = net.style_stats(style)
        batched = net.stylize(contents, [stats])
        single = torch.cat([net(c[None], style) for c in contents])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)


def test_statistics_mixing_equals_weighted_sum_of_adain(vgg, dec):
    net = _net(vgg, dec)
    content = random_image(32, 40, 10)[None]
    styles = [random_image(32, 32, s)[None] for s in (11, 12, 13)]
    weights = normalize_weights([1, 2.5, 0.5], 3)
    with torch.inference_mode():
        fc = net.encode(content)
        fs = [net.encode(s) for s in styles]
        mixed = net.transform(fc, mix_stats([ref_ops.mean_std(f) for f in fs], weights))
        summed = sum(w * ref_ops.adaptive_instance_normalization(fc, f) for w, f in zip(weights, fs))
        torch.testing.assert_close(mixed, summed, rtol=1e-4, atol=1e-4)
        # ...and the whole pipeline against the reference test.py's interpolation (K decodes
        # there, one here), styles of one size as the reference requires.
        ours = net.stylize(content, [net.style_stats(s) for s in styles], weights)
        ref = reference_style_transfer(reference_encoder(vgg), dec, content, torch.cat(styles),
                                       interpolation_weights=weights)[..., :32, :40]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_interpolation_weights_are_floats_and_validated():
    assert normalize_weights([0.25, 0.75], 2) == [0.25, 0.75]
    assert normalize_weights([1, 3], 2) == [0.25, 0.75]
    with pytest.raises(ValueError, match="2 interpolation weights for 3 styles"):
        normalize_weights([1, 2], 3)
    with pytest.raises(ValueError, match=">= 0 with a positive sum"):
        normalize_weights([-1, 2], 2)


def test_alpha(vgg, dec):
    net = _net(vgg, dec)
    content, style = random_image(32, 32, 14)[None], random_image(32, 32, 15)[None]
    with torch.inference_mode():
        fc = net.encode(content)
        stats = net.style_stats(style)
        t = net.transform(fc, stats)
        torch.testing.assert_close(net.transform(fc, stats, alpha=0.0), fc)
        torch.testing.assert_close(net.transform(fc, stats, alpha=0.3), 0.3 * t + 0.7 * fc,
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net.stylize(content, [stats], alpha=0.0), net.decode(fc, (32, 32)))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        net.transform(fc, stats, alpha=1.5)


def test_mask_gives_each_region_its_style(vgg, dec):
    net = _net(vgg, dec)
    content = random_image(64, 64, 16)[None]
    fg_style, bg_style = random_image(32, 32, 17)[None], random_image(32, 32, 18)[None]
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :, :24] = 1.0  # left 3/8 foreground
    with torch.inference_mode():
        fc = net.encode(content)
        fg, bg = net.style_stats(fg_style), net.style_stats(bg_style)
        t = net.transform(fc, fg, mask=mask, bg_stats=bg)
        region = F.interpolate(mask, size=fc.shape[-2:], mode="nearest")[0, 0] > 0.5
        for inside, (mean, std) in ((region, fg), (~region, bg)):
            # Each region is AdaIN of that region's content features alone (Torch7 test.lua).
            part = fc[0][:, inside].reshape(1, fc.shape[1], -1, 1)
            expected = ref_ops.adain_affine(part, mean, std).reshape(fc.shape[1], -1)
            torch.testing.assert_close(t[0][:, inside], expected, rtol=1e-4, atol=1e-4)
            live = expected.std(1) > 1e-2  # channels whose content region is not flat
            torch.testing.assert_close(t[0][:, inside].mean(1), mean.flatten(), rtol=1e-3, atol=1e-3)
            assert live.sum() > 10
        # An all-foreground mask is plain AdaIN with the first style.
        everything = net.transform(fc, fg, mask=torch.ones(1, 1, 8, 8), bg_stats=bg)
        torch.testing.assert_close(everything, net.transform(fc, fg), rtol=1e-5, atol=1e-5)
        out = net.stylize(content, [fg, bg], mask=mask)
    assert out.shape == content.shape
    with pytest.raises(ValueError, match="exactly 2 styles"):
        net.stylize(content, [fg], mask=mask)


def test_coral_matches_colour_moments():
    source, target = random_image(40, 30, 19), random_image(24, 36, 20) * 0.5 + 0.2
    out = coral(source, target).double()

    def moments(img):
        flat = img.reshape(3, -1).double()
        return flat.mean(1), torch.cov(flat)

    (m_out, c_out), (m_t, c_t) = moments(out), moments(target)
    torch.testing.assert_close(m_out, m_t, rtol=0, atol=2e-3)
    torch.testing.assert_close(c_out, c_t, rtol=0, atol=2e-3)
    assert out.shape == source.shape
    with pytest.raises(ValueError, match="two \\(3, H, W\\) images"):
        coral(source[:1], target)


# --------------------------------------------------------------------------------------------
# Image reading

def test_images_are_forced_to_rgb(tmp_path):
    image = random_image(20, 24, 21)
    for mode in ("RGB", "RGBA", "L", "I;16"):
        x = images.load_image(write_png(tmp_path / f"{mode.replace(';', '')}.png", image, mode))
        assert x.shape == (3, 20, 24) and x.dtype == torch.float32
        assert 0.0 <= x.min() and x.max() <= 1.0
    gray16 = images.load_image(tmp_path / "I16.png")
    torch.testing.assert_close(gray16[0], image.mean(0), rtol=0, atol=1e-4)  # 16 bits kept
    rgba = images.load_image(tmp_path / "RGBA.png")
    assert torch.all(rgba[:, :10] == 1.0)  # transparent half composited onto white
    assert images.load_image(tmp_path / "RGB.png", size=10).shape == (3, 10, 12)
    assert images.load_image(tmp_path / "RGB.png", size=10, crop=True).shape == (3, 10, 10)


# --------------------------------------------------------------------------------------------
# The stylize CLI

@pytest.fixture()
def inputs(tmp_path):
    root = tmp_path / "in"
    write_png(root / "content" / "a.png", random_image(36, 44, 22))
    write_png(root / "content" / "sub" / "b.png", random_image(36, 44, 23), "RGBA")
    write_png(root / "content" / "sub" / "c.png", random_image(33, 30, 24), "L")
    (root / "content" / "notes.txt").write_text("not an image")
    write_png(root / "style" / "s1.png", random_image(32, 32, 25))
    write_png(root / "style" / "s2.png", random_image(40, 28, 26), "I;16")
    return root


def _run(argv, weight_files, capsys=None):
    argv = argv + ["--vgg", str(weight_files / "vgg_normalised.pth"),
                   "--decoder", str(weight_files / "decoder.pth"), "--no_progress"]
    from adain_ext.cli import main

    return main(["stylize"] + argv)


def _outputs(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_cli_directories_batches_and_names(tmp_path, inputs, weight_files):
    out = tmp_path / "out"
    rc = _run(["--content_dir", str(inputs / "content"), "--style_dir", str(inputs / "style"),
               "--output", str(out), "--content_size", "0", "--style_size", "0",
               "--save_ext", "png", "--batch_size", "2"], weight_files)
    assert rc == 0
    assert _outputs(out) == ["a_stylized_s1.png", "a_stylized_s2.png",
                             "sub/b_stylized_s1.png", "sub/b_stylized_s2.png",
                             "sub/c_stylized_s1.png", "sub/c_stylized_s2.png"]
    assert images.load_image(out / "sub" / "c_stylized_s1.png").shape == (3, 33, 30)
    # The same result as one image at a time through the network API.
    net = _net(models.load_vgg(weight_files / "vgg_normalised.pth"),
               models.load_decoder(weight_files / "decoder.pth"))
    with torch.inference_mode():
        expected = net(images.load_image(inputs / "content" / "a.png")[None],
                       images.load_image(inputs / "style" / "s1.png")[None])[0].clamp(0, 1)
    got = images.load_image(out / "a_stylized_s1.png")
    torch.testing.assert_close(got, expected, rtol=0, atol=1.5 / 255)


def test_cli_interpolation_mask_and_colour(tmp_path, inputs, weight_files):
    content, s1, s2 = inputs / "content" / "a.png", inputs / "style" / "s1.png", inputs / "style" / "s2.png"
    out = tmp_path / "out"
    common = ["--content", str(content), "--style", f"{s1},{s2}", "--output", str(out),
              "--content_size", "32", "--style_size", "32", "--crop"]
    assert _run(common + ["--style_interpolation_weights", "0.3,0.7", "--preserve_color",
                          "--alpha", "0.8"], weight_files) == 0
    assert (out / "a_interpolation.jpg").is_file()
    mask = torch.zeros(3, 36, 44)
    mask[:, :, :20] = 1
    write_png(tmp_path / "mask.png", mask)
    assert _run(common + ["--mask", str(tmp_path / "mask.png")], weight_files) == 0
    assert images.load_image(out / "a_stylized_s1_s2_masked.jpg").shape == (3, 32, 32)


def test_cli_bad_inputs_clear_errors_no_partial_outputs(tmp_path, inputs, weight_files, capsys):
    out = tmp_path / "out"
    s1 = str(inputs / "style" / "s1.png")
    # Missing content file: a usage error (status 2).
    assert _run(["--content", str(tmp_path / "nope.png"), "--style", s1, "--output", str(out)],
                weight_files) == 2
    assert "content image not found" in capsys.readouterr().err
    # Wrong weights file: the decoder given as --vgg.
    from adain_ext.cli import main

    rc = main(["stylize", "--content", str(inputs / "content" / "a.png"), "--style", s1,
               "--vgg", str(weight_files / "decoder.pth"), "--decoder", str(weight_files / "decoder.pth"),
               "--output", str(out), "--no_progress"])
    assert rc == 2 and "does not fit the encoder" in capsys.readouterr().err
    # Mask of the wrong size.
    write_png(tmp_path / "small_mask.png", torch.ones(3, 10, 10))
    assert _run(["--content", str(inputs / "content" / "a.png"), "--style", f"{s1},{s1}",
                 "--mask", str(tmp_path / "small_mask.png"), "--output", str(out)], weight_files) == 1
    assert "mask" in (err := capsys.readouterr().err) and "10x10" in err and "44x36" in err
    assert not out.exists() or _outputs(out) == []
    # A corrupt (truncated) content image among good ones: an error for it, the others written.
    cdir = tmp_path / "contents"
    write_png(cdir / "good.png", random_image(32, 32, 27))
    data = (inputs / "content" / "a.png").read_bytes()
    (cdir / "broken.png").write_bytes(data[: len(data) // 2])
    assert _run(["--content_dir", str(cdir), "--style", s1, "--output", str(out),
                 "--save_ext", ".png"], weight_files) == 1
    assert "cannot read image" in capsys.readouterr().err
    assert _outputs(out) == ["good_stylized_s1.png"]  # nothing for broken.png, no temp files
    # A corrupt style image fails before anything is written.
    (tmp_path / "bad_style.png").write_bytes(b"\x89PNG garbage")
    out2 = tmp_path / "out2"
    assert _run(["--content_dir", str(cdir), "--style", str(tmp_path / "bad_style.png"),
                 "--output", str(out2)], weight_files) == 1
    assert "cannot read image" in capsys.readouterr().err and not out2.exists()


def test_cli_option_names_follow_the_reference():
    parser = stylize_cli.build_parser()
    options = {o for a in parser._actions for o in a.option_strings}
    for name in ("--content", "--content_dir", "--style", "--style_dir", "--vgg", "--decoder",
                 "--content_size", "--style_size", "--crop", "--save_ext", "--output",
                 "--preserve_color", "--alpha", "--style_interpolation_weights", "--mask",
                 "--device", "--dtype", "--channels_last", "--batch_size"):
        assert name in options
    args = parser.parse_args([])
    assert (args.content_size, args.style_size, args.save_ext, args.output, args.alpha) == \
        (512, 512, ".jpg", "output", 1.0)


# --------------------------------------------------------------------------------------------
# What the stylize CLI writes, against images computed by the reference pipeline


def _reference_image(vgg, dec, content, styles, weights, alpha, mask=None):
    """test.py's pipeline on the paper's AdaIN (adain_ext.reference), written out: K styles are
    K AdaINs summed with the weights; with a mask (1 = foreground, nearest-resized to the
    features) each region is renormalised on its own to its style (styles[0] foreground); then
    the alpha blend with the content features, the decoder, cropped to the content and clamped."""
    encoder = reference_encoder(vgg)
    with torch.no_grad():
        content_f = encoder(content[None])
        style_fs = [encoder(s[None]) for s in styles]
        if mask is None:
            feat = sum(w * ref_ops.adaptive_instance_normalization(content_f, s)
                       for w, s in zip(weights, style_fs))
        else:
            N, C, H, W = content_f.shape
            region = F.interpolate(mask[None].float(), size=(H, W), mode="nearest")[0, 0] > 0.5
            feat = torch.empty_like(content_f)
            for inside, style_f in ((region, style_fs[0]), (~region, style_fs[1])):
                part = content_f[..., inside][..., None]  # (1, C, K, 1)
                mean, std = ref_ops.mean_std(style_f)
                feat[..., inside] = ref_ops.adain_affine(part, mean, std)[..., 0]
        feat = feat * alpha + content_f * (1 - alpha)
        return dec(feat)[0, :, : content.shape[1], : content.shape[2]].clamp(0, 1)


def test_cli_outputs_match_the_reference_pipeline(tmp_path, inputs, weight_files, vgg, dec):
    """--style_interpolation_weights with --alpha and --preserve_color (each style recoloured
    to the content's colours by CORAL), and --mask with --alpha, give the images the reference
    pipeline computes, to the 8-bit rounding of the PNG."""
    content_path = inputs / "content" / "a.png"
    style_paths = [inputs / "style" / "s1.png", inputs / "style" / "s2.png"]
    out = tmp_path / "out"
    common = ["--content", str(content_path), "--style", ",".join(map(str, style_paths)),
              "--output", str(out), "--content_size", "0", "--style_size", "32",
              "--save_ext", "png"]
    content = images.load_image(content_path)
    styles = [images.load_image(p, 32) for p in style_paths]
    assert _run(common + ["--style_interpolation_weights", "1,3", "--alpha", "0.6",
                          "--preserve_color"], weight_files) == 0
    recoloured = [coral(s, content) for s in styles]  # the style takes the content's colours
    want = _reference_image(vgg, dec, content, recoloured, [0.25, 0.75], 0.6)
    got = images.load_image(out / "a_interpolation.png")
    torch.testing.assert_close(got, want, rtol=0, atol=1.5 / 255)
    mask = torch.zeros(3, 36, 44)
    mask[:, 10:, :20] = 1
    write_png(tmp_path / "mask.png", mask)
    assert _run(common + ["--mask", str(tmp_path / "mask.png"), "--alpha", "0.7"],
                weight_files) == 0
    want = _reference_image(vgg, dec, content, styles, None, 0.7, mask=mask[:1])
    got = images.load_image(out / "a_stylized_s1_s2_masked.png")
    torch.testing.assert_close(got, want, rtol=0, atol=1.5 / 255)


def test_cli_mask_follows_the_contents_crop(tmp_path, inputs, weight_files, vgg, dec):
    """A mask drawn on the content image takes the content's own resize and centre crop: with
    --content_size 64 --crop a 160x64 content keeps its middle 64 columns, and so does the mask.
    Its white left 64 columns become the crop's first 16 (squeezing the whole mask into 64x64
    would make them 25.6, three feature columns instead of two)."""
    content_path = write_png(tmp_path / "wide.png", random_image(64, 160, seed=5))
    style_paths = [inputs / "style" / "s1.png", inputs / "style" / "s2.png"]
    out = tmp_path / "out"
    mask = torch.zeros(3, 64, 160)
    mask[:, :, :64] = 1
    write_png(tmp_path / "mask.png", mask)
    assert _run(["--content", str(content_path), "--style", ",".join(map(str, style_paths)),
                 "--output", str(out), "--content_size", "64", "--style_size", "32", "--crop",
                 "--save_ext", "png", "--mask", str(tmp_path / "mask.png")], weight_files) == 0
    content = images.load_image(content_path, 64, crop=True)
    styles = [images.load_image(p, 32, crop=True) for p in style_paths]
    cropped = mask[:1, :, 48:112]  # the middle 64 of 160 columns
    want = _reference_image(vgg, dec, content, styles, None, 1.0, mask=cropped)
    got = images.load_image(out / "wide_stylized_s1_s2_masked.png")
    torch.testing.assert_close(got, want, rtol=0, atol=1.5 / 255)
