"""The segmentation target: RLE rows -> mask at the input size -> max-pooled map."""

import numpy as np
import pandas as pd
import pytest

from steeldefect.data.masks import image_mask, resize_nearest, target_map
from steeldefect.data.severstal import rle_encode


def test_hand_made_rle_gives_the_expected_downsampled_target():
    # an 8x16 image; class 1 covers rows 0-1 of column 3, class 3 covers rows 4-7 of columns 12-13
    full = np.zeros((8, 16), dtype=bool)
    full[0:2, 3] = True
    masks = pd.DataFrame({"ImageId": ["a.jpg"], "ClassId": [1], "EncodedPixels": [rle_encode(full)]})
    other = np.zeros((8, 16), dtype=bool)
    other[4:8, 12:14] = True
    masks.loc[1] = ["a.jpg", 3, rle_encode(other)]
    masks.loc[2] = ["b.jpg", 1, "1 128"]  # another image's mask must not leak in

    mask = image_mask(masks, "a.jpg", 8, 16, (8, 16))
    np.testing.assert_array_equal(mask, (full | other).astype(np.uint8))
    expected = np.zeros((2, 4), dtype=np.float32)
    expected[0, 0] = 1  # column 3 lies in the first 4-pixel cell
    expected[1, 3] = 1  # columns 12-13 lie in the last cell
    np.testing.assert_array_equal(target_map(mask, 4), expected)


def test_resize_is_nearest_and_keeps_a_half_size_grid():
    mask = np.arange(16).reshape(4, 4)
    np.testing.assert_array_equal(resize_nearest(mask, (2, 2)), [[5, 7], [13, 15]])
    np.testing.assert_array_equal(resize_nearest(mask, (8, 8))[::2, ::2], mask)


def test_target_needs_a_multiple_of_the_stride():
    with pytest.raises(ValueError, match="multiple of the map stride 8"):
        target_map(np.zeros((12, 16), np.uint8), 8)
