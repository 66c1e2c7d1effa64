"""A sample's identity: what it is, not where or when it runs.

The identity hash covers model, prompt, negative prompt, the generation parameters, the step cache (it changes
the frames), the content hashes of the input images and of the LoRA adapter with its scale (not their URLs: the
same image under another name is the same video), the seed and the video index. Execution details (plan, world
size, sequence_batch, the batch a sample lands in, a compiled transformer) are not part of it: they do not change
the video, so a sample keeps its id, seed and output key whatever the fleet looks like.

The hash is the SHA-256 of ``json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))``.
Existing databases and output folders are keyed by it, so that text must never change by a byte. It is written
here without ``json.dumps``: a row's members once, then per video only the seed and index between them (a plan
of a big manifest hashes hundreds of thousands of samples). tests/test_identity.py checks it against
``json.dumps`` itself.
"""

from __future__ import annotations

import hashlib
import json
import math
from json.encoder import encode_basestring

from reelbatch.schemas import ManifestRow, Sample, trusted

SEED_RANGE = 2**63

_SAMPLE_FIELDS = set(Sample.model_fields)


def _json(value: object) -> str:
    """``value`` as the canonical json.dumps writes it; types other than the usual ones go through json itself."""
    # Exact types, not isinstance: a bool is an int but json writes it as true/false.
    if type(value) is str:
        return encode_basestring(value)
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    if value is None:
        return "null"
    return json.dumps(value, ensure_ascii=False)


def _content_json(row: ManifestRow) -> tuple[str, str]:
    """The row's part of both payloads, in json.dumps' sorted key order: the members before and after the keys
    a video adds ("purpose", "seed", "video_index").

    Members that came with image-to-video and two-expert models and with LoRA adapters are written only when set,
    so every row without them keeps the identity it always had. A LoRA is its file's content hash and its scale.
    """
    j = _json
    shift = "" if row.flow_shift is None else f'"flow_shift":{j(row.flow_shift)},'
    optional_guidance = "" if row.guidance_scale_2 is None else f'"guidance_scale_2":{j(row.guidance_scale_2)},'
    images = "".join(
        f'"{name}":{j(value)},'
        for name, value in (("image_sha256", row.image_sha256), ("last_image_sha256", row.last_image_sha256))
        if value is not None
    )
    # "cache" sorts first; a row without a step cache keeps the identity it had before caches existed.
    cache = "" if row.cache is None else f'"cache":{j(row.cache)},'
    lora = (
        ""
        if row.lora_sha256 is None
        else f'"lora_scale":{j(1.0 if row.lora_scale is None else row.lora_scale)},"lora_sha256":{j(row.lora_sha256)},'
    )
    before = (
        f'{{{cache}"embedded_guidance_scale":{j(row.embedded_guidance_scale)},{shift}"guidance_scale":{j(row.guidance_scale)},'
        f'{optional_guidance}"height":{j(row.height)},{images}{lora}"model":{j(row.model)},'
        f'"negative_prompt":{j(row.negative_prompt)},'
        f'"num_frames":{j(row.num_frames)},"num_inference_steps":{j(row.num_inference_steps)},'
        f'"prompt":{j(row.prompt)},'
    )
    return before, f'"width":{j(row.width)}}}'


def _sha256(canonical: str) -> str:
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _seed(row: ManifestRow, content: tuple[str, str], video_index: int) -> int:
    if row.seed is not None:
        return (row.seed + video_index) % SEED_RANGE
    before, after = content
    derived = _sha256(f'{before}"purpose":"seed","video_index":{_json(video_index)},{after}')
    return int(derived[:15], 16)  # 60 bits: fits every generator and a signed BIGINT column


def _sample_id(content: tuple[str, str], video_index: int, seed: int) -> str:
    before, after = content
    return _sha256(f'{before}"seed":{_json(seed)},"video_index":{_json(video_index)},{after}')[:32]


def sample_seed(row: ManifestRow, video_index: int) -> int:
    """The row's seed plus the video index; without a seed, one derived from the content (reproducible)."""
    return _seed(row, _content_json(row), video_index)


def sample_id(row: ManifestRow, video_index: int, seed: int) -> str:
    return _sample_id(_content_json(row), video_index, seed)


def output_key(identity: str) -> str:
    # Only the hash reaches the file system; two-level fan-out keeps folders small on big runs.
    return f"{identity[:2]}/{identity}.mp4"


def expand_row(row: ManifestRow) -> list[Sample]:
    content = _content_json(row)
    samples = []
    for video_index in range(row.num_videos):
        seed = _seed(row, content, video_index)
        identity = _sample_id(content, video_index, seed)
        # Every value comes from a validated row or is computed here, so the Sample is not validated again.
        samples.append(
            trusted(
                Sample,
                {
                    "sample_id": identity,
                    "row": row.row,
                    "row_id": row.id,
                    "video_index": video_index,
                    "prompt": row.prompt,
                    "negative_prompt": row.negative_prompt,
                    "seed": seed,
                    "output_key": output_key(identity),
                    "image": row.image,
                    "image_sha256": row.image_sha256,
                    "last_image": row.last_image,
                    "last_image_sha256": row.last_image_sha256,
                    "lora": row.lora,
                },
                _SAMPLE_FIELDS,
            )
        )
    return samples
