"""A job's LoRA adapter, as the ranks apply it: diffusers' own loader, fused once for the whole job.

Intake (``infra/loras.py``) checked the adapter and staged it at ``<images_dir>/<sha256[:2]>/<sha256>``; the job's
bucket names it by that hash and gives its scale. Each rank re-hashes the file, loads it with the pipeline's
``load_lora_weights`` (safetensors only, never a pickle, never a hub), fuses it into the weights with
``fuse_lora(lora_scale=...)`` and drops the adapter layers (``unload_lora_weights``; the fused weights stay), so
every forward of the job costs what it costs without a LoRA. The pipeline is loaded once per job, so the next job
starts from the checkpoint's own weights.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist

from reelbatch.contract import JobSpec
from reelbatch.engine.inputs import staged_path
from reelbatch.engine.parallel import ParallelContext

ADAPTER_NAME = "reelbatch"


class LoraLoadError(RuntimeError):
    """The job's adapter could not be applied: its samples fail with this message, the ranks do not crash."""


def _file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def apply_lora(pipe, spec: JobSpec) -> None:
    """Fuse the job's adapter into ``pipe`` (nothing without one); ``LoraLoadError`` if it cannot be."""
    digest = spec.bucket.lora_sha256
    if digest is None:
        return
    path = staged_path(spec.images_dir, digest)
    try:
        found = _file_sha256(path)
    except OSError as error:
        raise LoraLoadError(f"staged LoRA {path} cannot be read ({error.strerror})") from None
    if found != digest:
        raise LoraLoadError(f"staged LoRA {path} no longer matches its sha256 {digest}")
    scale = 1.0 if spec.bucket.lora_scale is None else spec.bucket.lora_scale
    try:
        pipe.load_lora_weights(str(path), adapter_name=ADAPTER_NAME, use_safetensors=True, local_files_only=True)
        pipe.fuse_lora(lora_scale=scale, adapter_names=[ADAPTER_NAME])
        pipe.unload_lora_weights()
    except torch.OutOfMemoryError:
        raise  # the device's memory, not the adapter: classified as OOM and retried with less memory
    except Exception as error:  # noqa: BLE001 - peft and diffusers raise many types for an adapter that does not fit
        raise LoraLoadError(f"{type(error).__name__}: {str(error)[:400]}") from None


def agree_on_failure(error: LoraLoadError | None, ctx: ParallelContext) -> LoraLoadError | None:
    """The job's outcome on every rank: if the adapter failed on any rank, every rank skips the job's samples
    (one rank going on alone would wait in a collective for the others)."""
    if not ctx.distributed:
        return error
    failed = torch.tensor([0 if error is None else 1], device=ctx.device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if failed.item() and error is None:
        return LoraLoadError("the LoRA adapter could not be applied on another rank of the job (see its log)")
    return error
