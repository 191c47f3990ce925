"""Pixel masks at the network's resolution: the one definition of the segmentation target, shared by training
(`pipeline`) and evaluation (Dice, IoU, pointing). Pure NumPy, no TensorFlow.

A mask is the union of an image's defect classes ("any defect"), decoded from the prepared RLE rows at the
image's own height and width, then resized to the network's input size by nearest neighbour. The target of a
segmentation map at stride `s` is that mask max-pooled over s x s cells: a cell is defective when any of its
pixels is.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from steeldefect.data.severstal import rle_decode


def image_mask(masks: pd.DataFrame, image_id: str, height: int, width: int, size: Sequence[int]) -> np.ndarray:
    """uint8 (size[0], size[1]) mask, 1 where any defect class covers the pixel, from the prepared `masks`
    table (ImageId, ClassId, EncodedPixels) of an image of `height` x `width` pixels."""
    full = np.zeros((height, width), dtype=bool)
    for rle in masks.EncodedPixels[masks.ImageId == image_id]:
        full |= rle_decode(rle, height, width, where=f"masks of {image_id}")
    return resize_nearest(full.astype(np.uint8), size)


def type_masks(
    masks: pd.DataFrame, image_id: str, height: int, width: int, size: Sequence[int], class_ids: Sequence[str]
) -> np.ndarray:
    """uint8 (size[0], size[1], 1 + K): `image_mask` (any defect), then one channel per defect type of `class_ids`
    (ClassIds as strings, the order of a classes model's output)."""
    rows = masks[masks.ImageId == image_id]
    channels = [image_mask(masks, image_id, height, width, size)]
    for c in class_ids:
        channels.append(image_mask(rows[rows.ClassId.astype(str) == str(c)], image_id, height, width, size))
    return np.stack(channels, axis=-1)


def resize_nearest(mask: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D array to `size` (height, width), sampling each output pixel's centre."""
    h, w = mask.shape
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
    return mask[rows[:, None], cols[None, :]]


def target_map(mask: np.ndarray, stride: int) -> np.ndarray:
    """float32 (h // stride, w // stride): 1 where any pixel of the stride x stride cell is defective. `mask`'s
    height and width must be multiples of `stride`."""
    h, w = mask.shape
    if h % stride or w % stride:
        raise ValueError(f"mask of {h}x{w} pixels is not a multiple of the map stride {stride}")
    return mask.reshape(h // stride, stride, w // stride, stride).max(axis=(1, 3)).astype(np.float32)
