"""The Prefect task of image intake: ``manifest.images.check_images`` (plain Python, also used by `reelbatch plan`,
which must not import Prefect) run as a task of the flow."""

from __future__ import annotations

from prefect import task

from reelbatch.manifest.images import check_images

__all__ = ["check_images", "check_images_task"]

check_images_task = task(name="check-and-stage-images")(check_images)
