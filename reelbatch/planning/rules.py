"""The rules a parallel plan must pass before anything launches, each refusal with a fix that passes.

Numbers in comments refer to /work/shared/design/parallel-facts.md ("Rules seen in the wild"). Two kinds of rule:

* bucket rules depend only on the bucket, the family, the backend and the device (frames, sizes, xfuser without a
  GPU): no plan fixes them, so their fix changes the row (or the backend);
* plan rules depend on the plan as well; their fix names a concrete plan, ``PlanProblem.suggested_plan``, that
  has been checked against every plan rule for the same bucket and world size before it is suggested
  (``planning.fixes``, which also holds ``validate_plan``, the whole check).

A plan here is (dp, cfg, ulysses, ring); sp = ulysses * ring is the sequence-parallel degree. Nothing here
imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from reelbatch.models.pipelines import cache_classes, step_caches
from reelbatch.models.registry import ModelFamily
from reelbatch.schemas import Backend, BucketKey, ParallelPlan
from reelbatch.stepcache import cache_spec


@dataclass(frozen=True)
class PlanProblem:
    rule: str
    message: str
    fix: str
    column: str = "plan"  # the manifest column a rejection of the bucket's rows points at
    suggested_plan: ParallelPlan | None = None  # the plan the fix names; passes every plan rule


@dataclass
class PlanCheck:
    problems: list[PlanProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Violation(NamedTuple):
    """A broken plan rule without its fix: cheap enough to compute for every candidate plan."""

    rule: str
    message: str


def is_gpu(device: str) -> bool:
    return device.startswith("cuda")


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_plans(world_size: int) -> list[ParallelPlan]:
    """Every way to factor ``world_size`` ranks into (dp, cfg, ulysses, ring) with cfg 1 or 2."""
    plans = []
    for cfg in (1, 2):
        if world_size % cfg:
            continue
        rest = world_size // cfg
        for ulysses in divisors(rest):
            for ring in divisors(rest // ulysses):
                plans.append(ParallelPlan(dp=rest // (ulysses * ring), cfg=cfg, ulysses=ulysses, ring=ring))
    return plans


def preference_key(plan: ParallelPlan) -> tuple[int, ...]:
    """The field's order of preference when nothing else decides: data parallel, then CFG, then Ulysses, then ring."""
    return (-plan.dp, -plan.cfg, -plan.ulysses, plan.ring)


def degree_list(values: Iterable[int]) -> str:
    items = [str(v) for v in sorted(set(values))]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def size_text(height: int, width: int) -> str:
    return f"{height}x{width}"


# --- Plan rules ---------------------------------------------------------------------------------------------------


def plan_violations(
    bucket: BucketKey, family: ModelFamily, plan: ParallelPlan, *, world_size: int, backend: Backend, device: str
) -> list[Violation]:
    """The plan rules ``plan`` breaks for this bucket, in rule order, without fixes."""
    found: list[Violation] = []
    sp = plan.ulysses * plan.ring
    # Rule 1: the degrees multiply to the job's ranks (xfuser raises otherwise; our ranks would idle or collide).
    if plan.world_size != world_size:
        found.append(
            Violation("plan_product", f"dp*cfg*ulysses*ring = {plan.world_size} but the job has {world_size} ranks")
        )
    # Rules 5 and 6: CFG parallel splits the cond/uncond pair, so it needs that pair in one batch.
    if plan.cfg not in (1, 2):
        found.append(
            Violation(
                "cfg_degree", f"cfg={plan.cfg}: the CFG degree is 1 (off) or 2 (cond and uncond pass on a rank pair)"
            )
        )
    elif plan.cfg == 2 and not bucket.uses_cfg:
        what = "true_cfg_scale" if family.true_cfg else "guidance_scale"
        found.append(
            Violation(
                "cfg_without_guidance",
                f"cfg=2 but guidance_scale {bucket.guidance_scale:g} <= 1 turns CFG ({what}) off: nothing to split",
            )
        )
    elif plan.cfg == 2 and bucket.sequence_batch:
        found.append(
            Violation(
                "sequence_batch_with_cfg_parallel",
                "sequence_batch runs each CFG pass with batch 1, which cannot be split over a CFG rank pair "
                "(tensor.shape[0]=1 is not divisible by world_size=2)",
            )
        )
    # A step cache decides per pass, from the first block's output, whether to run the remaining blocks. Under
    # Ulysses or ring each rank holds a slice of the sequence and would decide on its slice: ranks would disagree
    # (one skipping the blocks whose all-to-alls the other waits in). CFG parallel is fine: each rank runs a whole
    # pass and decides exactly as one rank running both passes does (engine/caching.py).
    if bucket.cache is not None and sp > 1:
        found.append(
            Violation(
                "cache_needs_whole_sequence",
                f"cache {bucket.cache} decides on the whole sequence of a pass; ulysses*ring = {sp} would give each "
                "rank a slice and its own decision",
            )
        )
    support = family.sequence_parallel(backend)
    missing = [
        name
        for name, degree, ok in (("ulysses", plan.ulysses, support.ulysses), ("ring", plan.ring, support.ring))
        if degree > 1 and not ok
    ]
    if missing:
        found.append(
            Violation(
                "sequence_parallel_unsupported",
                f"{family.name}: the {backend} backend has no {' or '.join(missing)} sequence parallelism for this "
                "family",
            )
        )
    # Rule 2: Ulysses gives each rank whole attention heads.
    if plan.ulysses > 1 and (family.heads % plan.ulysses or plan.ulysses > family.heads):
        found.append(
            Violation(
                "ulysses_heads",
                f"ulysses={plan.ulysses} must divide the {family.heads} attention heads of {family.name} "
                "(each Ulysses rank takes whole heads)",
            )
        )
    # Ring attention needs an attention kernel that returns log-sum-exp (flash / cuDNN): GPU only.
    if plan.ring > 1 and not is_gpu(device):
        found.append(Violation("ring_needs_gpu", "ring attention needs a GPU attention backend (device is cpu)"))
    if sp > 1 and support.split == "exact":
        # Rule 3: the flattened sequence is cut into sp equal parts, no padding.
        tokens = family.tokens(bucket.height, bucket.width, bucket.num_frames)
        if tokens % sp:
            found.append(
                Violation(
                    "sequence_not_divisible",
                    f"{tokens} video tokens do not split evenly over ulysses*ring = {sp} ranks "
                    f"(the {backend} backend does not pad the sequence)",
                )
            )
    if sp > 1 and support.split == "height_or_width":
        # Rule 4: HunyuanVideo's own xDiT path splits along latent height, else width, never time.
        h, w = family.latent_grid(bucket.height, bucket.width)
        if h % sp and w % sp:
            found.append(
                Violation(
                    "hunyuan_sequence_split",
                    f'xDiT: "Cannot split video sequence into ulysses_degree x ring_degree": it splits along height '
                    f"or width, and neither {h} (= {bucket.height}/{family.pixels_per_token}) nor {w} "
                    f"(= {bucket.width}/{family.pixels_per_token}) divides by ulysses*ring = {sp}",
                )
            )
    return found


# --- Bucket rules -------------------------------------------------------------------------------------------------


def _nearest_valid(value: int, ok: Callable[[int], bool], low: int = 1) -> list[int]:
    below = next((v for v in range(value - 1, low - 1, -1) if ok(v)), None)
    above = next(v for v in range(value + 1, value + 10_000) if ok(v))
    return [v for v in (below, above) if v is not None]


_MODELS_HINT = "`reelbatch models list` shows what each model takes"


def input_problems(bucket: BucketKey, family: ModelFamily) -> list[PlanProblem]:
    """Inputs the family's pipeline does not take, or needs and did not get (images, per-expert guidance)."""
    problems: list[PlanProblem] = []
    name = f"{family.name} ({family.pipeline_class or family.kind})"
    has_image = bucket.conditioning != "text"
    has_last = bucket.conditioning == "first_last_frame"
    if has_image and family.image_input == "none":
        problems.append(
            PlanProblem(
                "image_not_supported",
                f"{name} generates from text only: it takes no image",
                f"leave the image cell empty, or use an image-to-video model ({_MODELS_HINT})",
                column="image",
            )
        )
    elif not has_image and family.image_input == "required":
        problems.append(
            PlanProblem(
                "image_required",
                f"{name} is an image-to-video model: the row needs an image (the first frame)",
                f"add an image column with a path or URL of the first frame, or use a text-to-video model "
                f"({_MODELS_HINT})",
                column="image",
            )
        )
    if has_last and family.last_image == "none":
        problems.append(
            PlanProblem(
                "last_image_not_supported",
                f"{name} takes no last frame",
                f"leave the last_image cell empty, or use a first-and-last-frame model ({_MODELS_HINT})",
                column="last_image",
            )
        )
    elif has_image and not has_last and family.last_image == "required":
        problems.append(
            PlanProblem(
                "last_image_required",
                f"{name} is a first-and-last-frame model: the row needs a last_image",
                "add a last_image cell (the last frame)",
                column="last_image",
            )
        )
    if bucket.guidance_scale_2 is not None and family.experts != 2:
        problems.append(
            PlanProblem(
                "guidance_scale_2_not_supported",
                f"guidance_scale_2 {bucket.guidance_scale_2:g}: {name} has one expert, "
                "so there is no low-noise stage to guide",
                "leave guidance_scale_2 empty (it is for two-expert models such as Wan 2.2 A14B)",
                column="guidance_scale_2",
            )
        )
    cache = cache_spec(bucket.cache)
    if cache is not None and cache.kind not in step_caches(family.pipeline_class):
        takers = ", ".join(cache_classes(cache.kind)) or "none"
        problems.append(
            PlanProblem(
                "cache_not_supported",
                f"cache {bucket.cache}: diffusers' {cache.kind} hooks do not support the transformer of {name}",
                f"set cache none (or leave it empty), or use a model whose pipeline class takes it ({takers})",
                column="cache",
            )
        )
    if bucket.embedded_guidance_scale is not None and not family.guidance_embedding:
        problems.append(
            PlanProblem(
                "embedded_guidance_not_supported",
                f"embedded_guidance_scale {bucket.embedded_guidance_scale:g}: {name} has no guidance embedding",
                "leave embedded_guidance_scale empty; guidance_scale is its classifier-free guidance",
                column="embedded_guidance_scale",
            )
        )
    return problems


def bucket_problems(bucket: BucketKey, family: ModelFamily, *, backend: Backend, device: str) -> list[PlanProblem]:
    """Problems no plan can fix: the inputs and the video shape for this family, and the backend on this device."""
    problems: list[PlanProblem] = input_problems(bucket, family)
    if backend == "xdit" and not is_gpu(device):
        problems.append(
            PlanProblem(
                "xdit_needs_gpu",
                "xfuser cannot be imported without a GPU; use backend native",
                "set backend native (the default); xdit needs CUDA GPUs",
                column="backend",
            )
        )
    stride = family.vae_stride_t
    if bucket.num_frames < 1 or (bucket.num_frames - 1) % stride:
        nearest = _nearest_valid(bucket.num_frames, lambda f: (f - 1) % stride == 0)
        problems.append(
            PlanProblem(
                f"frames_not_{stride}k_plus_1",
                f"num_frames {bucket.num_frames} is not {stride}k+1 (the VAE compresses time by {stride})",
                f"use {degree_list(nearest)}",
                column="num_frames",
            )
        )
    size = (bucket.height, bucket.width)
    if family.allowed_sizes is not None:
        if size not in family.allowed_sizes:
            heights = {h for h, _ in family.allowed_sizes}
            by_distance = sorted(family.allowed_sizes, key=lambda s: (abs(s[0] - size[0]) + abs(s[1] - size[1]), s))
            off_grid = [str(side) for side in size if side % family.size_multiple]
            why = f" ({' and '.join(off_grid)} not a multiple of {family.size_multiple} either)" if off_grid else ""
            problems.append(
                PlanProblem(
                    "size_not_allowed",
                    f"{size_text(*size)} (height x width) is not a size {family.name} supports{why}",
                    "use one of: " + ", ".join(size_text(*s) for s in by_distance) + " (height x width)",
                    column="width" if size[0] in heights else "height",
                )
            )
    else:
        multiple = family.size_multiple
        for column, side in (("height", bucket.height), ("width", bucket.width)):
            if side < 1 or side % multiple:
                nearest = _nearest_valid(side, lambda v: v % multiple == 0, low=multiple)
                problems.append(
                    PlanProblem(
                        f"size_not_multiple_of_{multiple}",
                        f"{column} {side} is not a multiple of {multiple} ({family.name} has {family.pixels_per_token} "
                        "pixels per token)",
                        f"use {degree_list(nearest)}",
                        column=column,
                    )
                )
    return problems


def plan_warnings(bucket: BucketKey, family: ModelFamily) -> list[str]:
    warnings = []
    if family.loops_after_frames and bucket.num_frames > family.loops_after_frames:
        # Rule 9.
        warnings.append(
            f"{bucket.num_frames} frames: HunyuanVideo-family videos longer than about {family.loops_after_frames} "
            "frames loop unless RIFLEx is used"
        )
    return warnings
