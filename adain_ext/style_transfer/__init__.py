"""The paper's full style-transfer system on the fused ops: networks in the published weight
layouts, stylize (images and video), and training.

    from adain_ext.style_transfer import StyleTransfer, load_vgg, load_decoder
    net = StyleTransfer(load_vgg("models/vgg_normalised.pth"), load_decoder("models/decoder.pth"))
    out = net(content, style, alpha=1.0)         # RGB in [0, 1], (N, 3, H, W)

Command line: `adain-ext stylize`, `video`, `train`, `export` (ONNX) (docs/style_transfer.md); each
subcommand is the `main(argv)` of its module here, listed in adain_ext/cli.py.
Images need Pillow; video needs PyAV; both come with `pip install 'adain_ext[style]'`/`[video]`.
"""
from adain_ext.style_transfer.models import (
                                             Encoder,
                                             WeightsError,
                                             decoder,
                                             load_decoder,
                                             load_vgg,
                                             read_state_dict,
                                             torchvision_vgg19_to_normalised,
                                             vgg_normalised,
                                             write_state_dict,
)
from adain_ext.style_transfer.network import StyleTransfer, coral, mix_stats, normalize_weights

__all__ = ["Encoder", "StyleTransfer", "WeightsError", "coral", "decoder", "load_decoder", "load_vgg",
           "mix_stats", "normalize_weights", "read_state_dict", "torchvision_vgg19_to_normalised",
           "vgg_normalised", "write_state_dict"]
