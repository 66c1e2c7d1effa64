"""The Prefect tasks of image and LoRA intake: ``manifest.images.check_images`` and ``manifest.loras.check_loras``
(plain Python, also used by `reelbatch plan`, which must not import Prefect) run as tasks of the flow."""

from __future__ import annotations

from reelbatch.manifest.images import check_images
from reelbatch.manifest.loras import check_loras
from reelbatch.tasks.step import step

__all__ = ["check_images", "check_images_task", "check_loras", "check_loras_task"]

check_images_task = step("check-and-stage-images", check_images)
check_loras_task = step("check-and-stage-loras", check_loras)
