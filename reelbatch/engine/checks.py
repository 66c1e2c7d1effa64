"""Refuse, at rank start and before any weight is read, a job whose plan this engine cannot run.

Every rank runs the same checks on the same spec and model configuration, so they all fail together with the
same message, before they join the process group: nobody is left waiting in a collective. The planner refuses
most of these plans earlier; this is the engine's own guard for a spec written by anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reelbatch.contract import JobSpec
from reelbatch.models.folders import FolderProblem, read_folder


class PlanNotRunnable(RuntimeError):
    """The job's plan (or backend) cannot run on this engine / machine."""


@dataclass(frozen=True)
class TransformerFacts:
    """What sequence parallel needs to know about a model, read from its config files (no weights)."""

    heads: int
    tokens: int  # video tokens per sample for the job's shape
    image_condition_type: str | None = None


def transformer_facts(spec: JobSpec) -> TransformerFacts | None:
    """Heads and token count from the folder's configs (``models/folders.py``); None if unreadable."""
    try:
        facts = read_folder(spec.bucket.model, Path(spec.model_path))
    except FolderProblem:
        return None
    b = spec.bucket
    frames = (b.num_frames - 1) // facts.vae_stride_t + 1
    side = facts.vae_stride_s * facts.patch_s
    tokens = (frames // facts.patch_t) * (b.height // side) * (b.width // side)
    return TransformerFacts(facts.heads, tokens, facts.image_condition_type)


def check_runnable(spec: JobSpec, device_type: str) -> None:
    """Raise :class:`PlanNotRunnable` with a usable message when this engine cannot run ``spec`` here."""
    plan = spec.plan
    where = f"job {spec.job_id} (plan {plan}, backend {spec.backend}, model {spec.bucket.model})"

    if spec.backend == "xdit":
        check_xdit(spec, device_type)
        return

    if plan.cfg not in (1, 2):
        raise PlanNotRunnable(f"{where}: cfg must be 1 or 2 (the conditional and unconditional passes)")
    if plan.cfg == 2 and not spec.bucket.uses_cfg:
        raise PlanNotRunnable(
            f"{where}: cfg=2 needs classifier-free guidance but guidance_scale={spec.bucket.guidance_scale} turns "
            "it off; use cfg=1 and put the ranks in dp"
        )

    sp = plan.ulysses * plan.ring
    if sp == 1:
        return
    if spec.bucket.cache is not None:
        raise PlanNotRunnable(
            f"{where}: cache {spec.bucket.cache} decides per pass on the whole sequence, and ulysses*ring={sp} would "
            "give each rank a slice and its own decision; use dp/cfg (ulysses=1, ring=1) or cache none"
        )
    if plan.ring > 1 and device_type != "cuda":
        raise PlanNotRunnable(
            f"{where}: ring attention (ring={plan.ring}) needs CUDA: diffusers' ring attention needs an attention "
            "kernel that returns the log-sum-exp, which torch's CPU attention does not; use ring=1 "
            "(ulysses, cfg and dp run on CPU)"
        )
    if spec.family == "hunyuan" and plan.ring > 1:
        raise PlanNotRunnable(
            f"{where}: HunyuanVideo-family native sequence parallel supports ulysses only (its joint attention needs "
            "a text mask, which diffusers' ring attention kernels do not take); use ring=1 or backend xdit"
        )
    facts = transformer_facts(spec)
    if facts is None:
        return  # no readable config: diffusers' own checks will have to do
    if facts.heads % plan.ulysses:
        raise PlanNotRunnable(
            f"{where}: ulysses={plan.ulysses} must divide the model's {facts.heads} attention heads; "
            f"use a ulysses degree that divides {facts.heads} (or ring on CUDA)"
        )
    if facts.tokens % sp:
        b = spec.bucket
        raise PlanNotRunnable(
            f"{where}: {b.width}x{b.height}x{b.num_frames} gives {facts.tokens} video tokens, which ulysses*ring="
            f"{sp} does not divide; pick a size whose token count divides by {sp}, or a smaller sequence degree"
        )
    if spec.family == "hunyuan" and facts.image_condition_type == "token_replace":
        raise PlanNotRunnable(
            f"{where}: HunyuanVideo-I2V (token_replace) treats the first frame's tokens apart, which a split "
            "sequence breaks; use dp/cfg, or backend xdit on CUDA"
        )


def check_xdit(spec: JobSpec, device_type: str) -> None:
    """Raise :class:`PlanNotRunnable` unless this machine and engine can run ``spec`` with xfuser."""
    if device_type != "cuda":  # never imports xfuser on a machine without CUDA
        raise PlanNotRunnable(
            f"job {spec.job_id}: backend xdit needs CUDA: xfuser cannot be imported without a GPU; "
            "use backend native (dp, cfg and ulysses run on CPU)"
        )
    from reelbatch.engine.xdit import import_xfuser

    xfuser = import_xfuser()
    raise PlanNotRunnable(
        f"job {spec.job_id}: backend xdit (xfuser {getattr(xfuser, '__version__', '?')}) is not wired into "
        "reelbatch's engine yet; use backend native (diffusers context parallelism: ulysses, and ring on CUDA)"
    )
