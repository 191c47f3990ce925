"""`train.image_size: auto`: the input size follows the training split's images (their median aspect within
train.pixel_budget pixels, sides multiples of 32, never larger than the images), and is checked like a given one."""

from __future__ import annotations

import pandas as pd
import pytest

from steeldefect.errors import UserError
from steeldefect.train.sizing import auto_image_size, with_image_size

from helpers import defaults


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (256, 1600, (128, 704)),  # Severstal's strips stay strips
        (324, 270, (320, 256)),  # magnetic-tile's median tile, taller than wide
        (1250, 500, (448, 192)),  # tall parts stay tall
        (64, 96, (64, 96)),  # small images are not blown up
    ],
)
def test_auto_keeps_the_aspect_within_the_pixel_budget(height, width, expected):
    size = auto_image_size([height] * 3, [width] * 3, 81920)
    assert size == expected and all(s % 32 == 0 for s in size)
    assert size[0] * size[1] <= 1.1 * 81920


def test_auto_follows_the_median_image():
    assert auto_image_size([100, 324, 400], [50, 270, 600], 81920) == (320, 256)


def test_auto_is_resolved_from_the_training_split_and_checked_again():
    train = pd.DataFrame({"height": [256, 256], "width": [1600, 1600]})
    p = defaults(train={"image_size": "auto"})
    assert p.train.image_size == "auto"
    assert with_image_size(p, train).train.image_size == (128, 704)
    given = defaults()
    assert with_image_size(given, train) is given  # a given size is kept
    mask = {"supervision": "mask", "image_size": "auto", "backbone_layer": "conv2_block3_out"}
    tiny = pd.DataFrame({"height": [64], "width": [64]})
    with pytest.raises(UserError, match=r"train.mask.crop_size .*no larger than train.image_size \[64, 64\]"):
        with_image_size(defaults(train=mask), tiny)  # 128x128 crops of 64x64 images
    with pytest.raises(UserError, match="train.image_size = 'big' is not allowed"):
        defaults(train={"image_size": "big"})
