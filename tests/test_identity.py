"""Sample identities are byte-for-byte what they have always been: databases and output folders resume by them."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from reelbatch.identity import (
    SEED_RANGE,
    expand_row,
    output_key,
    sample_id,
    sample_seed,
)
from reelbatch.schemas import ManifestRow, Sample, trusted
from tests.hypothesis_budget import scaled


# The definition the ids were first made with; the fast path in reelbatch.identity must agree with it.
def reference_digest(payload: dict) -> str:
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def reference_content(row: ManifestRow) -> dict:
    names = (
        "model",
        "prompt",
        "negative_prompt",
        "height",
        "width",
        "num_frames",
        "num_inference_steps",
        "guidance_scale",
        "embedded_guidance_scale",
    )
    # Members added with image-to-video and two-expert models are part of the payload only when set.
    optional = ("guidance_scale_2", "image_sha256", "last_image_sha256", "flow_shift", "cache")
    # A LoRA is its file's hash and its scale (1.0 when none is given), both only when the row has one.
    lora = getattr(row, "lora_sha256", None)
    scale = getattr(row, "lora_scale", None)
    adapter = {} if lora is None else {"lora_sha256": lora, "lora_scale": 1.0 if scale is None else scale}
    return (
        {name: getattr(row, name) for name in names}
        | {name: getattr(row, name) for name in optional if getattr(row, name, None) is not None}
        | adapter
    )


def reference_seed(row: ManifestRow, video_index: int) -> int:
    if row.seed is not None:
        return (row.seed + video_index) % SEED_RANGE
    return int(reference_digest({**reference_content(row), "video_index": video_index, "purpose": "seed"})[:15], 16)


def reference_id(row: ManifestRow, video_index: int, seed: int) -> str:
    return reference_digest({**reference_content(row), "seed": seed, "video_index": video_index})[:32]


def reference_samples(row: ManifestRow) -> list[Sample]:
    samples = []
    for index in range(row.num_videos):
        seed = reference_seed(row, index)
        identity = reference_id(row, index, seed)
        samples.append(
            Sample(
                sample_id=identity,
                row=row.row,
                row_id=row.id,
                video_index=index,
                prompt=row.prompt,
                negative_prompt=row.negative_prompt,
                seed=seed,
                output_key=output_key(identity),
                image=row.image,
                image_sha256=row.image_sha256,
                last_image=row.last_image,
                last_image_sha256=row.last_image_sha256,
                lora=row.lora,
            )
        )
    return samples


texts = st.one_of(st.text(), st.sampled_from(['"', "\\", "\n\t\r", "\x00\x1f\x7f", "é東\u2028\U0001f600", "</script>"]))
floats = st.one_of(st.floats(), st.sampled_from([0.0, -0.0, 1.0, 5.0, 1e16, 1e22, 1e-7, 0.1 + 0.2, 2.0**63]))
rows = st.builds(
    ManifestRow,
    row=st.integers(2, 10**6),
    id=st.none() | texts,
    prompt=texts,
    negative_prompt=texts,
    model=texts,
    height=st.integers(-(2**70), 2**70),
    width=st.integers(0, 4096),
    num_frames=st.integers(1, 1025),
    num_inference_steps=st.integers(1, 1000),
    guidance_scale=floats,
    embedded_guidance_scale=st.none() | floats,
    seed=st.none() | st.integers(0, SEED_RANGE - 1),
    num_videos=st.integers(1, 6),
    guidance_scale_2=st.none() | floats,
    image=st.none() | texts,
    image_sha256=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
    last_image=st.none() | texts,
    last_image_sha256=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
    flow_shift=st.none() | floats,
    cache=st.none() | st.sampled_from(["fbc:0.05", "fbc:0.0", "fbc:0.1"]) | texts,
    lora=st.none() | texts,
    lora_scale=st.none() | floats,
    lora_sha256=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
)


@settings(max_examples=scaled(1500), deadline=None)
@given(rows)
def test_samples_are_those_of_the_canonical_json_dumps(row):
    fast, reference = expand_row(row), reference_samples(row)
    assert fast == reference
    assert [repr(s) for s in fast] == [repr(s) for s in reference]
    assert [s.model_dump_json() for s in fast] == [s.model_dump_json() for s in reference]


@settings(max_examples=scaled(500), deadline=None)
@given(rows, st.integers(0, 200), st.one_of(st.integers(0, SEED_RANGE - 1), st.booleans()))
def test_public_seed_and_id_functions_match_json_dumps_for_any_index_and_seed(row, video_index, seed):
    assert sample_seed(row, video_index) == reference_seed(row, video_index)
    assert sample_id(row, video_index, seed) == reference_id(row, video_index, seed)


@settings(max_examples=scaled(300), deadline=None)
@given(
    guidance=st.one_of(st.integers(-5, 5), st.booleans(), st.floats(), st.text(max_size=5)),
    height=st.one_of(st.integers(0, 64), st.booleans(), st.floats(allow_nan=False, allow_infinity=False)),
    prompt=texts,
)
def test_unvalidated_rows_hash_as_json_dumps_writes_their_values(guidance, height, prompt):
    # Rows built with model_construct keep whatever types they were given; json.dumps decides how they read.
    row = ManifestRow.model_construct(
        row=2,
        prompt=prompt,
        model="m",
        height=height,
        width=32,
        num_frames=5,
        num_inference_steps=4,
        guidance_scale=guidance,
        seed=None,
        num_videos=2,
    )
    assert expand_row(row) == reference_samples(row)


def test_ids_of_a_known_row_never_change():
    row = ManifestRow(
        row=2,
        prompt="a red fox",
        model="tiny-wan",
        height=32,
        width=32,
        num_frames=5,
        num_inference_steps=4,
        guidance_scale=5.0,
        seed=7,
        num_videos=2,
    )
    assert [s.sample_id for s in expand_row(row)] == [reference_id(row, 0, 7), reference_id(row, 1, 8)]
    unseeded = row.model_copy(update={"seed": None, "prompt": 'é "quoted" 東京'})
    assert [s.seed for s in expand_row(unseeded)] == [reference_seed(unseeded, 0), reference_seed(unseeded, 1)]


def test_an_image_is_its_content_not_its_name():
    row = ManifestRow(
        row=2,
        prompt="a red fox",
        model="tiny-wan2.1-i2v",
        height=32,
        width=32,
        num_frames=5,
        num_inference_steps=4,
        guidance_scale=5.0,
        seed=7,
        image="a.png",
        image_sha256="ab" * 32,
    )
    [first] = expand_row(row)
    [renamed] = expand_row(row.model_copy(update={"image": "s3://bucket/b.png"}))
    [other] = expand_row(row.model_copy(update={"image_sha256": "cd" * 32}))
    [text_only] = expand_row(row.model_copy(update={"image": None, "image_sha256": None}))
    assert first.sample_id == renamed.sample_id  # same picture under another name: the same video
    assert len({first.sample_id, other.sample_id, text_only.sample_id}) == 3
    assert (first.image, first.image_sha256, renamed.image) == ("a.png", "ab" * 32, "s3://bucket/b.png")


def test_a_lora_is_its_content_and_scale_not_its_name():
    row = ManifestRow(
        row=2,
        prompt="a red fox",
        model="tiny-wan",
        height=32,
        width=32,
        num_frames=5,
        num_inference_steps=4,
        guidance_scale=5.0,
        seed=7,
        lora="style.safetensors",
        lora_scale=1.0,
        lora_sha256="ab" * 32,
    )
    [first] = expand_row(row)
    [renamed] = expand_row(row.model_copy(update={"lora": "s3://bucket/other-name.safetensors"}))
    [unscaled] = expand_row(row.model_copy(update={"lora_scale": None}))  # empty scale: 1.0
    [weaker] = expand_row(row.model_copy(update={"lora_scale": 0.5}))
    [other] = expand_row(row.model_copy(update={"lora_sha256": "cd" * 32}))
    [plain] = expand_row(row.model_copy(update={"lora": None, "lora_scale": None, "lora_sha256": None}))
    assert first.sample_id == renamed.sample_id == unscaled.sample_id
    assert len({first.sample_id, weaker.sample_id, other.sample_id, plain.sample_id}) == 4
    # A row without a LoRA keeps the identity rows had before the lora column existed.
    without = reference_content(row.model_copy(update={"lora_sha256": None}))
    assert plain.sample_id == reference_digest({**without, "seed": 7, "video_index": 0})[:32]
    assert (first.lora, renamed.lora) == ("style.safetensors", "s3://bucket/other-name.safetensors")


def test_trusted_models_are_indistinguishable_from_validated_ones():
    values = {
        "sample_id": "ab" * 16,
        "row": 3,
        "row_id": None,
        "video_index": 1,
        "prompt": "p",
        "negative_prompt": "",
        "seed": 9,
        "output_key": output_key("ab" * 16),
        "image": "frames/a.png",
        "image_sha256": "cd" * 32,
        "last_image": None,
        "last_image_sha256": None,
        "lora": "s3://bucket/style.safetensors",
    }
    shared = set(Sample.model_fields)
    fast, validated = trusted(Sample, dict(values), shared), Sample(**values)
    assert fast == validated and hash(fast) == hash(validated) and repr(fast) == repr(validated)
    assert fast.model_fields_set == validated.model_fields_set
    assert fast.model_dump() == validated.model_dump() and fast.model_dump_json() == validated.model_dump_json()
    assert (fast.__pydantic_extra__, fast.__pydantic_private__) == (
        validated.__pydantic_extra__,
        validated.__pydantic_private__,
    )
    copied = fast.model_copy(update={"seed": 10})
    assert copied.seed == 10 and fast.seed == 9 and shared == set(Sample.model_fields)


def test_the_step_cache_is_part_of_the_identity_and_no_cache_keeps_the_old_one():
    base = ManifestRow(row=2, prompt="a fox", model="tiny-wan", height=32, width=32, num_frames=5,
                       num_inference_steps=4, guidance_scale=5.0, seed=7)  # fmt: skip
    cached = base.model_copy(update={"cache": "fbc:0.05"})
    other = base.model_copy(update={"cache": "fbc:0.1"})
    ids = [expand_row(r)[0].sample_id for r in (base, cached, other)]
    assert len(set(ids)) == 3
    # Without a cache the payload has no "cache" member: ids made before caches existed stay valid.
    assert ids[0] == reference_id(base, 0, 7) and "cache" not in reference_content(base)
    assert (
        ids[1] == reference_digest({**reference_content(base), "cache": "fbc:0.05", "seed": 7, "video_index": 0})[:32]
    )
    # The seed follows the row's seed, not the cache: the same noise, so the cache's effect alone differs.
    assert {s.seed for r in (base, cached, other) for s in expand_row(r)} == {7}
