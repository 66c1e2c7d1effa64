"""The torchrun rank entry: ``python -m reelbatch.engine.rank JOB.json``.

Every rank loads the pipeline once and walks the job's samples in lock-step with the other ranks:

1. the sample list is padded to a multiple of dp; data-parallel rank i takes slots i, i+dp, i+2dp, ...
2. each step, a rank's real samples (padding stripped) are denoised together; a CFG pair splits the two
   guidance passes between its ranks; a sequence group (ulysses x ring) splits each transformer forward's video
   tokens through diffusers context parallelism (``engine/context_parallel.py``) and gets the whole output back;
3. one rank per data-parallel slice decodes and writes the mp4 + sidecar (atomically);
4. rank 0 gathers the per-sample results and appends them to the job's results file, flushed to disk at once,
   so a crash loses at most the samples in flight.

This module is the only code that runs inside the ranks with ``reelbatch.engine``; it never imports Prefect or
the database. The job spec and the results file are its whole contract with the orchestrator
(``reelbatch/contract.py``). A plan the engine
cannot run here (ring on CPU, backend xdit without CUDA, heads or tokens not divisible) fails at rank start,
before the process group and the weights (``engine/checks.py``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from reelbatch.contract import LORA_ERROR_PREFIX, JobSpec, ResultsFile, SampleResult, emit, read_job_spec
from reelbatch.engine.adapters import adapter_for
from reelbatch.engine.caching import ForwardCounter, compile_denoisers, enable_step_cache
from reelbatch.engine.checks import PlanNotRunnable, check_runnable
from reelbatch.engine.context_parallel import enable_sequence_parallel
from reelbatch.engine.faults import FaultInjector
from reelbatch.engine.inputs import StagedImageError, open_staged
from reelbatch.engine.loading import load_pipeline
from reelbatch.engine.lora import LoraLoadError, agree_on_failure, apply_lora
from reelbatch.engine.parallel import (
    ParallelContext,
    context_for,
    device_for_rank,
    init_parallel,
    join_process_group,
    shutdown,
)
from reelbatch.engine.sampler import SampleInputs, VideoSampler
from reelbatch.engine.video import write_json, write_mp4, write_npy
from reelbatch.schemas import Sample


def slots_for_rank(spec: JobSpec, dp_rank: int) -> list[list[Sample | None]]:
    """This rank's micro-batches; ``None`` marks a padding slot (never generated, never written)."""
    slots: list[Sample | None] = list(spec.samples) + [None] * spec.padded_slots
    mine = slots[dp_rank :: spec.plan.dp]
    size = 1 if spec.bucket.cache is not None else spec.micro_batch  # a step cache decides per sample
    return [mine[i : i + size] for i in range(0, len(mine), size)]


def sidecar(spec: JobSpec, sample: Sample, seconds: float, frames: int, counts: tuple[int, int] | None) -> dict:
    return {
        **sample.model_dump(exclude={"output_key"}),
        **spec.bucket.model_dump(),
        "frames": frames,
        "fps": spec.fps,
        "flow_shift": spec.flow_shift,
        "fp32_components": spec.fp32_components,
        "plan": spec.plan.as_dict(),
        "job_id": spec.job_id,
        "run_id": spec.run_id,
        "seconds": round(seconds, 4),
        "compiled": spec.compile,
        "transformer_forwards": counts[0] if counts else None,
        "cached_forwards": counts[1] if counts else None,
    }


def write_sample(
    spec: JobSpec, sample: Sample, frames, seconds: float, rank: int, counts: tuple[int, int] | None = None
) -> SampleResult:
    """``counts``: (transformer passes, passes the step cache served) of this video, with a cache."""
    out = Path(spec.output_dir)
    video = out / sample.output_key
    try:
        if spec.keep_frames:
            write_npy(video.with_suffix(".frames.npy"), frames)
        write_json(video.with_suffix(".json"), sidecar(spec, sample, seconds, frames.shape[0], counts))
        write_mp4(video, frames, spec.fps)  # last: an mp4 under its final name means the sample is complete
    except Exception as exc:  # a full disk fails this sample, not the job
        return SampleResult(sample_id=sample.sample_id, status="failed", error=f"writing output: {exc}", rank=rank)
    return SampleResult(
        sample_id=sample.sample_id,
        status="done",
        seconds=seconds,
        frames=int(frames.shape[0]),
        height=int(frames.shape[1]),
        width=int(frames.shape[2]),
        file=sample.output_key,
        rank=rank,
        transformer_forwards=counts[0] if counts else None,
        cached_forwards=counts[1] if counts else None,
    )


def sample_inputs(spec: JobSpec, sample: Sample) -> SampleInputs:
    """What the sampler needs for one video; its images are read back from the job's staged copies."""
    images = [
        open_staged(spec.images_dir, digest) if digest else None
        for digest in (sample.image_sha256, sample.last_image_sha256)
    ]
    return SampleInputs(sample.prompt, sample.negative_prompt, sample.seed, *images)


def cache_counts(counter: ForwardCounter | None, ctx: ParallelContext) -> tuple[int, int] | None:
    """This sample's (passes, cached passes), summed over its CFG pair (each rank of the pair runs one pass)."""
    if counter is None:
        return None
    counts = torch.tensor([counter.passes, counter.cached], dtype=torch.int64, device=ctx.device)
    if ctx.cfg_group is not None:
        dist.all_reduce(counts, group=ctx.cfg_group)  # gloo and NCCL; a CPU tensor is fine for gloo
    return int(counts[0]), int(counts[1])


def run_batch(
    spec: JobSpec,
    ctx: ParallelContext,
    sampler: VideoSampler,
    batch: list[Sample],
    counter: ForwardCounter | None = None,
) -> list[SampleResult]:
    started = time.perf_counter()
    inputs, failed = [], []
    for sample in batch:
        try:
            inputs.append(sample_inputs(spec, sample))
        except StagedImageError as exc:  # every rank of a CFG / sequence group reads the same images: same outcome
            failed.append(
                SampleResult(sample_id=sample.sample_id, status="failed", error=f"input image: {exc}", rank=ctx.rank)
            )
    batch = [s for s in batch if s.sample_id not in {f.sample_id for f in failed}]
    if not batch:
        return failed if ctx.writes_outputs else []
    if counter is not None:
        counter.reset()
    latents = sampler.generate(inputs, decode=False)
    counts = cache_counts(counter, ctx)  # every rank of the CFG pair takes part, before the non-writers leave
    if not ctx.writes_outputs:
        return []
    try:
        videos = sampler.adapter.decode(latents)
    except Exception as exc:  # decode runs on this rank alone: failing here cannot desynchronise the group
        return [
            SampleResult(sample_id=s.sample_id, status="failed", error=f"decode: {exc}", rank=ctx.rank) for s in batch
        ]
    seconds = (time.perf_counter() - started) / len(batch)
    return failed + [write_sample(spec, s, videos[i], seconds, ctx.rank, counts) for i, s in enumerate(batch)]


def gather_to_rank0(results: list[SampleResult], ctx: ParallelContext) -> list[SampleResult]:
    if not ctx.distributed:
        return results
    # Rank 0 receives every rank's list of dicts into these slots; the other ranks receive nothing.
    gathered: list[Any] | None = [None] * ctx.world_size if ctx.rank == 0 else None
    dist.gather_object([r.model_dump() for r in results], gathered, dst=0)
    if gathered is None:
        return []
    return [SampleResult.model_validate(r) for part in gathered for r in part]


def run_job(spec: JobSpec, ctx: ParallelContext | None = None) -> int:
    """Run one job in this rank; ``ctx``: the job's place in a process group already joined (several jobs of one
    launch), else the job joins torchrun's group itself and leaves it at the end."""
    faults = FaultInjector.from_env(int(os.environ.get("RANK", "0")))  # test-only (engine/faults.py)
    # Before the process group and the weights: every rank refuses an unrunnable plan the same way, at once.
    check_runnable(spec, device_for_rank().type)
    own_group = ctx is None
    ctx = ctx or init_parallel(spec.plan, spec.collective_timeout_s)
    results_file = ResultsFile(spec.results_path) if ctx.rank == 0 else None
    try:
        emit("loading", rank=ctx.rank, model=spec.bucket.model, device=str(ctx.device))
        faults.on_load()
        pipe = load_pipeline(spec.model_path, ctx.device, spec.flow_shift, spec.fp32_components)
        if spec.vae_tiling:  # decodes in tiles: the peak of VAE decode, where most video OOMs happen, drops
            pipe.vae.enable_tiling()
        lora_error = None
        if spec.bucket.lora_sha256 is not None:  # (every rank of the job has the same bucket)
            try:
                apply_lora(pipe, spec)  # fused before anything wraps the transformer
            except LoraLoadError as error:
                lora_error = error
            lora_error = agree_on_failure(lora_error, ctx)
        if lora_error is not None:  # a sample error, not a crash: every sample of the job fails with the reason
            if results_file is not None:
                for sample in spec.samples:
                    results_file.append(
                        SampleResult(
                            sample_id=sample.sample_id,
                            status="failed",
                            error=f"{LORA_ERROR_PREFIX}{lora_error}",
                            rank=ctx.rank,
                        )
                    )
                    emit("sample", sample_id=sample.sample_id, status="failed", seconds=0.0)
            emit("finished", rank=ctx.rank)
            return 0
        enable_sequence_parallel(pipe, spec.family, ctx)
        counter = enable_step_cache(pipe, spec.bucket.cache)
        if spec.compile:  # after the cache hooks, so the compiled blocks include them
            compile_denoisers(pipe)
        sampler = VideoSampler(adapter_for(pipe, spec.bucket, ctx.device), ctx, cached=counter is not None)
        emit("loaded", rank=ctx.rank)
        torch.manual_seed(0)  # nothing should draw from the global RNG; if something does, keep it repeatable
        processed = 0  # this rank's own count of real samples, as REELBATCH_FAULT's sample=S counts them
        for micro_batch in slots_for_rank(spec, ctx.dp_rank):
            real = [s for s in micro_batch if s is not None]
            faults.before_batch(processed, len(real))
            results = run_batch(spec, ctx, sampler, real, counter) if real else []
            if faults and results:
                written = {r.sample_id: r.file for r in results if r.status == "done" and r.file}
                videos = [written.get(s.sample_id) for s in real]
                faults.after_write(processed, [Path(spec.output_dir) / v if v else None for v in videos])
            processed += len(real)
            for result in gather_to_rank0(results, ctx):
                assert results_file is not None  # only rank 0 gets results back
                results_file.append(result)
                emit("sample", sample_id=result.sample_id, status=result.status, seconds=round(result.seconds, 3))
        if ctx.distributed:
            dist.barrier()
        emit("finished", rank=ctx.rank)
        return 0
    finally:
        if results_file:
            results_file.close()
        if own_group:
            shutdown(ctx)


def exit_with_agent() -> None:
    """Under torchrun, die the moment the torchrun agent (this process's parent) dies.

    When a rank fails, the agent itself SIGTERMs its peers within ~0.1 s (its monitor interval), whether they are
    computing or waiting in a gloo/NCCL collective: no rank-side guard is needed for that. What the agent cannot do
    is outlive itself: if it is SIGKILLed (OOM killer, a killed orchestrator host), its ranks would otherwise keep
    running, a peer of a stuck rank waiting up to the whole process-group timeout (``collective_timeout_s``,
    default 30 min) in a collective. Linux: ``PR_SET_PDEATHSIG`` (SIGKILL, from the kernel, even while the rank
    is inside a C++ collective); elsewhere a thread polls the parent pid every second. The kernel sends the
    signal when the thread that forked the rank exits: torchrun starts its workers from its main thread.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # not under torchrun (a single process run by hand or a test)
        return
    parent = os.getppid()
    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            pr_set_pdeathsig = 1
            armed = ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if not armed:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="reelbatch-agent-watch", daemon=True).start()
    if parent == 1 or os.getppid() != parent:  # the agent died before the guard was armed
        os._exit(1)


def run_jobs(specs: list[JobSpec]) -> int:
    """Several jobs of one world size, one after another, in one process group (one launch, imports paid once)."""
    if len(specs) == 1:
        return run_job(specs[0])
    for spec in specs:  # every rank refuses the whole launch the same way before joining
        check_runnable(spec, device_for_rank().type)
    widths = {spec.plan.world_size for spec in specs}
    if len(widths) != 1:
        raise PlanNotRunnable(f"jobs of one launch must have one world size, not {sorted(widths)}")
    join_process_group(max(spec.collective_timeout_s for spec in specs))
    try:
        for spec in specs:
            run_job(spec, context_for(spec.plan))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="reelbatch rank entry (launched by torchrun; not for humans)")
    parser.add_argument("jobs", nargs="+", help="job spec JSON files, run one after another in one process group")
    args = parser.parse_args(argv)
    exit_with_agent()
    specs = [read_job_spec(job) for job in args.jobs]
    return run_jobs(specs)


if __name__ == "__main__":
    sys.exit(main())
