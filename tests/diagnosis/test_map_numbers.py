import torch

from services.diagnosis.lesion import lesion_masks
from services.diagnosis.map_numbers import as_records, map_numbers


def test_numbers_of_a_single_hot_spot_on_the_lesion():
    s = 20
    maps = torch.zeros(1, 1, s, s)
    maps[0, 0, 5, 15] = 1.0
    lesion = torch.zeros(1, s, s, dtype=torch.bool)
    lesion[0, :10, 10:] = True
    n = as_records(map_numbers(maps, torch.tensor([[0.3]]), torch.tensor([[0.8]]), lesion))[0][0]
    assert n.peak == 0.3
    assert (n.peak_x, n.peak_y) == (0.775, 0.275)
    assert n.lesion_share == 1.0
    assert n.mean_in_lesion == 0.01 and n.mean_out_lesion == 0.0
    assert n.hot_area == round(1 / 400, 4) and n.hot_area_in_lesion == 1.0
    assert n.score == 0.8


def test_numbers_of_attention_off_the_lesion_and_empty_maps():
    s = 10
    maps = torch.zeros(1, 2, s, s)
    maps[0, 0] = 1.0                       # uniform: diffuse attention
    lesion = torch.zeros(1, s, s, dtype=torch.bool)
    lesion[0, :5] = True
    rows = as_records(map_numbers(maps, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.9, 0.2]]), lesion))[0]
    assert rows[0].lesion_share == 0.5 and rows[0].hot_area == 1.0 and rows[0].score == 0.45
    assert rows[1].lesion_share == 0.0 and rows[1].hot_area == 0.0 and rows[1].score == 0.0


def test_lesion_mask_finds_a_dark_lesion_and_falls_back_on_flat_images():
    s = 96
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    disc = ((yy - 40) ** 2 + (xx - 50) ** 2) < 25 ** 2
    img = torch.full((2, 3, s, s), 0.85)
    img[0, :, disc] = 0.35
    masks, methods = lesion_masks(img)
    assert methods == ["otsu", "centre_disc"]
    iou = (masks[0] & disc).sum() / (masks[0] | disc).sum()
    assert iou > 0.85
