"""Which adapter runs which pipeline class: the lookup from a loaded pipeline to its family's adapter.

Apart from ``engine/sampler.py`` (the loop and the adapters' base class) so the family modules, which build on
the sampler, are imported by this table only, never by the sampler.
"""

from __future__ import annotations

import torch

from reelbatch.engine.sampler import PipelineAdapter
from reelbatch.schemas import BucketKey


def adapter_for(pipe, bucket: BucketKey, device: torch.device) -> PipelineAdapter:
    """The adapter of the pipeline's class (model_index.json's ``_class_name``)."""
    # Imported here: the family modules import diffusers' pipeline classes, only needed once a pipeline is loaded.
    from reelbatch.engine.hunyuan import HUNYUAN_ADAPTERS
    from reelbatch.engine.wan import WAN_ADAPTERS

    adapters = {**WAN_ADAPTERS, **HUNYUAN_ADAPTERS}
    name = type(pipe).__name__
    if name not in adapters:
        raise RuntimeError(f"{name}: the engine runs {', '.join(sorted(adapters))}")
    return adapters[name](pipe, bucket, device)
