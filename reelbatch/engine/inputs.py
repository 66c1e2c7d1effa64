"""The input images of a job, as the ranks read them: staged copies named by their content hash.

Intake (``infra/images.py``) checked each image against the places a manifest may read from, decoded it once and
copied it to ``<images_dir>/<sha256[:2]>/<sha256>``; the job spec names images by that hash. A rank re-hashes the
bytes before using them, so the video is made from exactly the image its identity says.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

# Only plain raster formats: Pillow's other plugins widen the attack surface (EPS even runs Ghostscript).
# MPO is what many phone cameras write for JPEG.
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "TIFF")


class StagedImageError(RuntimeError):
    """A staged image is missing or no longer the image its hash names: ``rule`` says which."""

    def __init__(self, rule: str, message: str):
        super().__init__(message)
        self.rule = rule


def staged_path(images_dir: str | Path, sha256: str) -> Path:
    return Path(images_dir) / sha256[:2] / sha256


def open_staged(images_dir: str | Path, sha256: str):
    """The staged image as an RGB PIL image; ``StagedImageError`` if it is missing or its bytes changed."""
    import warnings

    from PIL import Image, ImageOps

    path = staged_path(images_dir, sha256)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise StagedImageError("image_missing", f"staged image {path} cannot be read ({error.strerror})") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise StagedImageError("image_changed", f"staged image {path} no longer matches its sha256 {sha256}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS))
        # As diffusers' load_image reads a picture: a phone photo stands the way its EXIF orientation says.
        return ImageOps.exif_transpose(image).convert("RGB")
