"""A sample's identity: what it is, not where or when it runs.

The identity hash covers model, prompt, negative prompt, the generation parameters, the seed and the video
index. Execution details (plan, world size, sequence_batch, the batch a sample lands in) are not part of it: they
do not change the video, so a sample keeps its id, seed and output key whatever the fleet looks like.
"""

from __future__ import annotations

import hashlib
import json

from reelbatch.schemas import ManifestRow, Sample

SEED_RANGE = 2**63


def _digest(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _content(row: ManifestRow) -> dict:
    return {
        "model": row.model,
        "prompt": row.prompt,
        "negative_prompt": row.negative_prompt,
        "height": row.height,
        "width": row.width,
        "num_frames": row.num_frames,
        "num_inference_steps": row.num_inference_steps,
        "guidance_scale": row.guidance_scale,
        "embedded_guidance_scale": row.embedded_guidance_scale,
    }


def sample_seed(row: ManifestRow, video_index: int) -> int:
    """The row's seed plus the video index; without a seed, one derived from the content (reproducible)."""
    if row.seed is not None:
        return (row.seed + video_index) % SEED_RANGE
    derived = _digest({**_content(row), "video_index": video_index, "purpose": "seed"})
    return int(derived[:15], 16)  # 60 bits: fits every generator and a signed BIGINT column


def sample_id(row: ManifestRow, video_index: int, seed: int) -> str:
    return _digest({**_content(row), "seed": seed, "video_index": video_index})[:32]


def output_key(identity: str) -> str:
    # Only the hash reaches the file system; two-level fan-out keeps folders small on big runs.
    return f"{identity[:2]}/{identity}.mp4"


def expand_row(row: ManifestRow) -> list[Sample]:
    samples = []
    for video_index in range(row.num_videos):
        seed = sample_seed(row, video_index)
        identity = sample_id(row, video_index, seed)
        samples.append(
            Sample(
                sample_id=identity,
                row=row.row,
                row_id=row.id,
                video_index=video_index,
                prompt=row.prompt,
                negative_prompt=row.negative_prompt,
                seed=seed,
                output_key=output_key(identity),
            )
        )
    return samples
