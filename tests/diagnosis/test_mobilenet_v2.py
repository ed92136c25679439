import pytest
import torch

from services.diagnosis.mobilenet_v2 import MobileNetV2Features
from services.diagnosis.network import Architecture, BCCPatternNet

# Keys and shapes of torchvision.models.mobilenet_v2() (width 1.0), written out because
# torchvision cannot be imported on our machines.
TORCHVISION_SAMPLES = {
    "features.0.0.weight": (32, 3, 3, 3),
    "features.0.1.running_mean": (32,),
    "features.1.conv.0.0.weight": (32, 1, 3, 3),
    "features.1.conv.1.weight": (16, 32, 1, 1),
    "features.1.conv.2.weight": (16,),
    "features.2.conv.0.0.weight": (96, 16, 1, 1),
    "features.2.conv.1.0.weight": (96, 1, 3, 3),
    "features.2.conv.2.weight": (24, 96, 1, 1),
    "features.2.conv.3.num_batches_tracked": (),
    "features.14.conv.1.0.weight": (576, 1, 3, 3),
    "features.17.conv.2.weight": (320, 960, 1, 1),
    "features.18.0.weight": (1280, 320, 1, 1),
    "features.18.1.running_var": (1280,),
}
# torchvision mobilenet_v2: 3,504,872 parameters, of which the classifier has 1,281,000.
TORCHVISION_FEATURE_PARAMS = 3_504_872 - 1_281_000
TORCHVISION_FEATURE_KEYS = 312


def test_state_dict_matches_torchvision_names_and_shapes():
    model = BCCPatternNet(Architecture(width_mult=1.0))
    state = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
    assert len(state) == TORCHVISION_FEATURE_KEYS
    for key, shape in TORCHVISION_SAMPLES.items():
        assert tuple(state[key].shape) == shape, key
    params = sum(p.numel() for n, p in model.named_parameters() if n.startswith("features."))
    assert params == TORCHVISION_FEATURE_PARAMS


def test_torchvision_style_state_dict_loads_by_key():
    source = MobileNetV2Features(1.0)
    tv_state = {f"features.{k[len('features.'):]}": v for k, v in source.state_dict().items()}
    tv_state["classifier.1.weight"] = torch.zeros(1000, 1280)   # torchvision's own head
    model = BCCPatternNet(Architecture(width_mult=1.0))
    missing, unexpected = model.load_state_dict(tv_state, strict=False)
    assert unexpected == ["classifier.1.weight"]
    assert all(k.startswith(("bcc_head.", "pattern_head.")) for k in missing)
    assert torch.equal(model.features[5].conv[1][0].weight, source.features[5].conv[1][0].weight)


def test_output_stride_changes_resolution_not_parameters():
    a = BCCPatternNet(Architecture(width_mult=0.5, output_stride=32))
    b = BCCPatternNet(Architecture(width_mult=0.5, output_stride=16))
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    x = torch.randn(1, 3, 224, 224)
    assert a.features.eval()(x).shape[-2:] == (7, 7)
    assert b.features.eval()(x).shape[-2:] == (14, 14)


def test_width_multiplier_and_eight_logits():
    model = BCCPatternNet(Architecture(width_mult=0.35, input_size=96)).eval()
    assert model.features[0][0].out_channels == 16
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 96).contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, 8)


def test_centre_window_is_read_beside_the_global_mean():
    arch = Architecture(width_mult=0.35, output_stride=32, input_size=224, taps=(13, 18), squares=True,
                        hidden=(), centre=3)
    model = BCCPatternNet(arch).eval()
    features = torch.randn(2, model.map_channels, 7, 7)
    pooled = model.pool(features)
    c = model.map_channels
    assert pooled.shape == (2, 2 * c) and model.bcc_head[-1].in_features == 2 * c
    torch.testing.assert_close(pooled[:, :c], features.mean(dim=(2, 3)))
    torch.testing.assert_close(pooled[:, c:], features[:, :, 2:5, 2:5].mean(dim=(2, 3)))
    # the window that does not fit the map is refused, not silently clipped
    try:
        model.pool(torch.randn(1, c, 2, 2))
    except ValueError as e:
        assert "larger than" in str(e)
    else:
        raise AssertionError("a 3x3 window on a 2x2 map was accepted")
    # an artifact saved before the window existed reads as the global mean alone
    old = arch.to_dict()
    del old["centre"]
    assert Architecture.from_dict(old).centre == 0 and Architecture.from_dict(arch.to_dict()) == arch


def test_lesion_mean_is_read_after_the_centre_window():
    arch = Architecture(width_mult=0.35, output_stride=32, input_size=224, taps=(13, 18), squares=True,
                        hidden=(), centre=3, lesion=True)
    model = BCCPatternNet(arch).eval()
    c = model.map_channels
    features = torch.randn(2, c, 7, 7)
    cells = torch.zeros(2, 1, 7, 7)
    cells[0, 0, 0, 0], cells[0, 0, 6, 5] = 1.0, 0.5        # a lesion off the centre window
    cells[1, 0, 3, :] = 0.25
    pooled = model.pool(features, cells)
    assert pooled.shape == (2, 3 * c) and model.bcc_head[-1].in_features == 3 * c
    torch.testing.assert_close(pooled[:, :c], features.mean(dim=(2, 3)))
    torch.testing.assert_close(pooled[:, c:2 * c], features[:, :, 2:5, 2:5].mean(dim=(2, 3)))
    torch.testing.assert_close(pooled[0, 2 * c:], (features[0, :, 0, 0] + 0.5 * features[0, :, 6, 5]) / 1.5)
    torch.testing.assert_close(pooled[1, 2 * c:], features[1, :, 3, :].mean(dim=1))
    # the served forward finds the lesion in the image itself: a dark square in the top left
    # (cells are 32 px wide: 2.5 cells of the 7x7 grid)
    img = torch.full((1, 3, 224, 224), 0.8)
    img[:, :, :80, :80] = 0.2
    cells = model.lesion_cells(img, torch.zeros(1, c, 7, 7))
    assert cells[0, 0, :2, :2].min() == 1 and 0 < cells[0, 0, 2, 2] < 1 and cells[0, 0, 3:, 3:].sum() == 0
    with torch.no_grad():
        torch.testing.assert_close(model(img), model.heads(model.pool(model.embed(img), cells)))
    with pytest.raises(ValueError, match="lesion"):
        model.pool(features)
    # artifacts saved before the lesion pooling existed read without it
    old = arch.to_dict()
    del old["lesion"]
    assert not Architecture.from_dict(old).lesion and Architecture.from_dict(arch.to_dict()) == arch
