"""Write one sample's files: the mp4 and its JSON sidecar, each under a temporary name first.

A reader (the collector, a dataset loader) only ever sees complete files under their final names: the data is
written to a hidden ``.partial`` name in the same folder and renamed, which is atomic on one file system.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def to_uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _atomic_write(final: Path, write) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(f".{final.stem}.{os.getpid()}.partial{final.suffix}")
    try:
        write(partial)
        with open(partial, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """``frames``: float (F, H, W, 3) in [0, 1]. H.264 in yuv420p, which every player and decoder reads."""
    import imageio.v3 as iio

    pixels = to_uint8(frames)
    _atomic_write(
        path,
        lambda tmp: iio.imwrite(tmp, pixels, plugin="pyav", codec="libx264", fps=fps, out_pixel_format="yuv420p"),
    )


def write_json(path: Path, payload: dict) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False)))


def write_npy(path: Path, array: np.ndarray) -> None:
    def _save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    _atomic_write(path, _save)


def read_mp4(path: str | Path) -> np.ndarray:
    """uint8 frames (F, H, W, 3) of an mp4."""
    import imageio.v3 as iio

    return iio.imread(path, plugin="pyav")
