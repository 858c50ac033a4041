"""`adain-ext export`: the style-transfer network as one ONNX file, run in onnxruntime against the
PyTorch network (random weights in the published layouts: tests/style_helpers.py)."""
from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("onnxscript", reason="ONNX export needs onnx and onnxscript: pip install 'adain_ext[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="these tests run the export in onnxruntime: pip install 'adain_ext[onnx]'")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the "compiled extension missing" warning, if any
    import adain_ext  # noqa: F401
from style_helpers import one_thread, random_decoder, random_image, random_vgg  # noqa: F401

from adain_ext.cli import main
from adain_ext.style_transfer import models
from adain_ext.style_transfer.export import write_onnx
from adain_ext.style_transfer.network import StyleTransfer

# max|onnxruntime - PyTorch| on outputs in [0, 1], measured: 3.6e-7 for these cases, 6.6e-7 for
# uniform-noise images (float32 convolutions summed in another order). About 4x that; a biased
# divisor in the AdaIN layer moves the output by 3.6e-4, an ignored alpha by 2e-2.
ATOL = 3e-6


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    models.write_state_dict(random_vgg(num_modules=models.ENCODER_USED).state_dict(), root / "vgg.pth")
    models.write_state_dict(random_decoder().state_dict(), root / "decoder.pth")
    return root


def export_args(weight_files, output):
    return ["export", "--vgg", str(weight_files / "vgg.pth"), "--decoder",
            str(weight_files / "decoder.pth"), "--output", str(output)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, weight_files):
    path = tmp_path_factory.mktemp("onnx") / "adain.onnx"
    assert main(export_args(weight_files, path)) == 0
    return path


@pytest.mark.parametrize(("batch", "size", "style_size", "alpha"), [
    (1, (37, 50), (41, 29), 1.0),
    (2, (64, 48), (32, 40), 0.6),
])
def test_exported_network_matches_pytorch(exported, weight_files, batch, size, style_size, alpha):
    net = StyleTransfer(models.load_vgg(weight_files / "vgg.pth"),
                        models.load_decoder(weight_files / "decoder.pth")).eval()
    content = torch.stack([random_image(*size, seed=10 + i) for i in range(batch)])
    style = random_image(*style_size, seed=20)[None]
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["content", "style", "alpha"]
    (got,) = session.run(None, {"content": content.numpy(), "style": style.numpy(),
                                "alpha": torch.tensor(alpha).numpy()})
    with torch.no_grad():
        want = net(content, style, alpha).clamp(0, 1)
    assert got.shape == tuple(want.shape)
    torch.testing.assert_close(torch.from_numpy(got), want, atol=ATOL, rtol=0)


def test_refuses_to_overwrite_and_bad_options_are_one_line(tmp_path, weight_files, capsys):
    existing = tmp_path / "taken.onnx"
    existing.write_bytes(b"keep me")
    with pytest.raises(SystemExit) as exit_info:
        main(export_args(weight_files, existing))
    assert exit_info.value.code == 2 and existing.read_bytes() == b"keep me"
    err = capsys.readouterr().err
    assert "--overwrite" in err and err.count("\n") == 1
    bad = [["--vgg", str(tmp_path / "missing.pth")],  # weights file not found
           ["--vgg", str(weight_files / "decoder.pth")],  # weights that do not fit the encoder
           ["--output", str(tmp_path)],  # a directory
           ["--no_such_option"]]
    for extra in bad:
        with pytest.raises(SystemExit) as exit_info:
            main(export_args(weight_files, tmp_path / "new.onnx") + extra)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1, (extra, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.onnx"]


def test_write_is_atomic_and_overwrites_only_when_asked(tmp_path):
    class Double(torch.nn.Module):
        def forward(self, x):
            return x * 2

    program = torch.onnx.export(Double().eval(), (torch.ones(2),), dynamo=True, verbose=False)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        write_onnx(program, path, overwrite=False)
    assert path.read_bytes() == b"old"
    write_onnx(program, path, overwrite=True)
    (out,) = ort.InferenceSession(str(path)).run(None, {"x": torch.ones(2).numpy()})
    assert out.tolist() == [2.0, 2.0]
    write_onnx(program, tmp_path / "sub" / "fresh.onnx", overwrite=False)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "model.onnx", "sub", "sub/fresh.onnx"]  # no temporary files left
