"""The Prefect task of image intake: ``manifest.images.check_images`` (plain Python, also used by `reelbatch plan`,
which must not import Prefect) run as a task of the flow."""

from __future__ import annotations

from reelbatch.manifest.images import check_images
from reelbatch.tasks.step import step

__all__ = ["check_images", "check_images_task"]

check_images_task = step("check-and-stage-images", check_images)
