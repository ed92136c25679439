import pytest
import torch
from captum.attr import LayerGradCam, LayerAttribution

from services.diagnosis.gradcam import all_target_cams
from services.diagnosis.network import Architecture

from tests.factories import random_model


@pytest.mark.parametrize("arch", [
    Architecture(width_mult=0.35, output_stride=16, input_size=96),
    Architecture(width_mult=0.5, output_stride=32, input_size=128),
    # the real-image model's kind: a hypercolumn of several blocks (with squares), linear
    # read-out, Keras padding and input scaling, and a diagnosis head
    Architecture(width_mult=0.35, output_stride=32, input_size=96, taps=(3, 6, 13, 18), squares=True,
                 hidden=(), input_norm="tf", same_padding=True, diagnoses=("nv", "mel")),
    # ... and as built: the heads also read the mean of the map's central window (5x5 grid here)
    Architecture(width_mult=0.35, output_stride=32, input_size=160, taps=(3, 6, 13, 18), squares=True,
                 hidden=(), input_norm="tf", same_padding=True, diagnoses=("nv", "mel"), centre=3),
    # ... and its mean over the lesion found in the image (weights per map cell)
    Architecture(width_mult=0.35, output_stride=32, input_size=160, taps=(3, 6, 13, 18), squares=True,
                 hidden=(), input_norm="tf", same_padding=True, diagnoses=("nv", "mel"), centre=3,
                 lesion=True),
], ids=["os16", "os32", "hypercolumn", "hypercolumn-centre", "hypercolumn-centre-lesion"])
def test_all_target_maps_equal_captum_layer_gradcam(arch):
    model = random_model(arch, seed=3)
    torch.manual_seed(1)
    x = torch.randn(4, 3, arch.input_size, arch.input_size)
    if arch.lesion:     # images in [0, 1] with a dark blob off-centre: a lesion to find
        yy, xx = torch.meshgrid(torch.arange(arch.input_size), torch.arange(arch.input_size), indexing="ij")
        blob = ((yy - 50) ** 2 + (xx - 60) ** 2 < 35 ** 2).float()
        x = (0.8 - 0.5 * blob + 0.05 * x).clamp(0, 1)
        assert model.lesion_cells(x, model.embed(x)).std() > 0.1
    x = x.contiguous(memory_format=torch.channels_last)
    ours = all_target_cams(model, x)
    lgc = LayerGradCam(model, model.map_layer())
    for t in range(8):
        signed = lgc.attribute(x, target=t).detach()       # captum's default: no ReLU
        scale = signed.abs().amax()
        assert scale > 0, "degenerate test: captum's map is zero"
        torch.testing.assert_close(ours.signed[:, t:t + 1], signed, rtol=1e-4, atol=1e-5 * scale)
        ref = lgc.attribute(x, target=t, relu_attributions=True).detach()
        torch.testing.assert_close(ours.raw[:, t:t + 1], ref, rtol=1e-4, atol=1e-5 * scale)
        up = LayerAttribution.interpolate(ref, (arch.input_size, arch.input_size), "bilinear")
        norm = up / up.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        torch.testing.assert_close(ours.normalised[:, t:t + 1], norm, rtol=1e-4, atol=1e-4)


def test_logits_are_those_of_a_plain_forward():
    model = random_model()
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        plain = model(x)
    torch.testing.assert_close(all_target_cams(model, x).logits, plain, rtol=1e-5, atol=1e-5)


def test_backbone_gets_no_gradient():
    model = random_model()
    all_target_cams(model, torch.randn(2, 3, 96, 96))
    assert all(p.grad is None for p in model.parameters())


def test_maps_are_normalised_and_peaks_kept():
    out = all_target_cams(random_model(), torch.randn(2, 3, 96, 96))
    assert out.normalised.shape == (2, 8, 96, 96)
    assert out.raw.shape == (2, 8, 6, 6)
    maxima = out.normalised.amax(dim=(2, 3))
    assert torch.all(((maxima - 1).abs() < 1e-5) | (out.peak_raw == 0))
    assert torch.all(out.normalised >= 0)
    torch.testing.assert_close(out.peak_raw, out.raw.amax(dim=(2, 3)))
