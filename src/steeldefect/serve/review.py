"""The review queue of the service: images whose probability falls in the uncertainty band are written to a folder,
each with a JSON sidecar holding its result, for a person to judge (and `steeldefect predict DIR` to score again).

Both files are written atomically (a reader never sees half an image), the image first, so a sidecar always has its
image. The folder has a cap: when it holds `cap` images, new ones are refused (counted, not written), never the
oldest deleted: the service does not remove what a reviewer may be looking at; moving reviewed images out makes
room again."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

from steeldefect import atomic
from steeldefect.errors import UserError

SUFFIXES = {"JPEG": ".jpg", "PNG": ".png"}


class ReviewQueue:
    def __init__(self, folder: Path, band: tuple[float, float], cap: int):
        self.folder, self.band, self.cap = Path(folder), band, cap
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / f".write-check-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise UserError(
                f"--review-dir {folder}: cannot write there ({e.strerror or e}); give a writable folder."
            ) from e
        self.sequence = itertools.count()

    def images(self) -> int:
        """The images in the folder now (a reviewer may have moved some out)."""
        with os.scandir(self.folder) as entries:
            return sum(1 for e in entries if Path(e.name).suffix in SUFFIXES.values() and not e.name.startswith("."))

    def add(self, data: bytes, image_format: str, result: dict) -> Path | None:
        """Write the image and `result` as its sidecar; None (nothing written) when the folder is full."""
        if self.images() >= self.cap:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path = self.folder / f"{stamp}-{os.getpid()}-{next(self.sequence):06d}{SUFFIXES[image_format]}"
        with atomic.path_for(path) as tmp:
            tmp.write_bytes(data)
        atomic.write_json(path.with_suffix(".json"), {"image": path.name, "review_band": list(self.band), **result})
        return path
