"""The Prefect tasks of image and LoRA intake: ``manifest.images.check_images`` and ``manifest.loras.check_loras``
(plain Python, also used by `reelbatch plan`, which must not import Prefect) run as tasks of the flow."""

from __future__ import annotations

from prefect import task

from reelbatch.manifest.images import check_images
from reelbatch.manifest.loras import check_loras

__all__ = ["check_images", "check_images_task", "check_loras", "check_loras_task"]

check_images_task = task(name="check-and-stage-images")(check_images)
check_loras_task = task(name="check-and-stage-loras")(check_loras)
