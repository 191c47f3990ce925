"""`train.image_size: auto`: an input size that follows the data. The median training image's aspect (height /
width) at about `train.pixel_budget` pixels, each side a multiple of 32 (every cut of ResNet50 divides it), never
larger than the median image itself: Severstal's 256x1600 strips become 128x704, magnetic-tile's 324x270 tiles
320x256, and small images are not blown up. Resolved from the training split alone, so the stages that build the
network (pretrain, train, export) agree, and the chosen size goes to models/model_meta.json as any other."""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pandas as pd

from steeldefect.params import Params, checked

MULTIPLE = 32
log = logging.getLogger(__name__)


def auto_image_size(heights, widths, pixels: int, multiple: int = MULTIPLE) -> tuple[int, int]:
    """(height, width) of `auto` (module doc) for images of these heights and widths."""
    height, width = float(np.median(heights)), float(np.median(widths))
    scale = min(1.0, math.sqrt(pixels / (height * width)))
    return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in (height, width))


def with_image_size(p: Params, train_df: pd.DataFrame) -> Params:
    """`p` with train.image_size resolved from the training split's height and width columns when it is auto,
    checked again (a crop larger than the size found is refused, naming both); `p` itself otherwise."""
    if p.train.image_size != "auto":
        return p
    size = auto_image_size(train_df.height, train_df.width, p.train.pixel_budget)
    log.info(
        "train.image_size auto: %dx%d (median training image %gx%g, train.pixel_budget %d)",
        *size,
        float(np.median(train_df.height)),
        float(np.median(train_df.width)),
        p.train.pixel_budget,
    )
    return checked(dataclasses.replace(p, train=dataclasses.replace(p.train, image_size=size)))
