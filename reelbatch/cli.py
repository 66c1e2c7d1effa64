"""The ``reelbatch`` command line.

Exit codes (the same for every command): 0 all good; 1 some rows were rejected or some samples failed;
2 usage or file errors (nothing ran).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2

app = typer.Typer(
    help=(
        "Turn a CSV of prompts into a video dataset: validate, plan GPU jobs, run them with torchrun, "
        "record every video in a database.\n\n"
        "Start with `reelbatch plan examples/prompts.csv` (a dry run), then `reelbatch run examples/prompts.csv`."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
models_app = typer.Typer(help="Models reelbatch knows and the built-in tiny ones.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")

console = Console(stderr=True)
out = Console()

DB_HELP = "Database URL (SQLAlchemy), e.g. sqlite:///reelbatch.db or postgresql+psycopg://user@host/db. Env: REELBATCH_DB_URL."
GPUS_HELP = "Ranks per node (GPUs; on a machine without CUDA, CPU processes). Default: visible CUDA GPUs, else 2."

ManifestArg = Annotated[str, typer.Argument(help="Manifest CSV (UTF-8, header row, a `prompt` column).")]
GpusOpt = Annotated[Optional[int], typer.Option("--gpus-per-node", "--gpus", min=1, help=GPUS_HELP)]
DbOpt = Annotated[Optional[str], typer.Option("--db", help=DB_HELP)]
ModelPathOpt = Annotated[
    Optional[list[str]],
    typer.Option("--model-path", help="NAME=DIR: a model name usable in the manifest, loaded from a local diffusers folder. Repeatable."),
]
ModelsFileOpt = Annotated[
    Optional[str], typer.Option("--models-file", help="JSON file {NAME: DIR} of local models. Env: REELBATCH_MODELS_FILE.")
]

# Run-level defaults for the manifest's optional columns.
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Default model for rows without one.", rich_help_panel="Row defaults")]
HeightOpt = Annotated[Optional[int], typer.Option("--height", help="Default height (multiple of 16).", rich_help_panel="Row defaults")]
WidthOpt = Annotated[Optional[int], typer.Option("--width", help="Default width (multiple of 16).", rich_help_panel="Row defaults")]
FramesOpt = Annotated[Optional[int], typer.Option("--frames", help="Default frames per video (4k+1).", rich_help_panel="Row defaults")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="Default denoising steps. Empty: each model's own default.", rich_help_panel="Row defaults")]
GuidanceOpt = Annotated[
    Optional[float], typer.Option("--guidance", help="Default CFG scale; <= 1 turns CFG off. Empty: each model's own default (`reelbatch models show NAME`).", rich_help_panel="Row defaults")
]
Guidance2Opt = Annotated[
    Optional[float], typer.Option("--guidance-2", help="Default low-noise expert guidance of two-expert models (Wan 2.2 A14B); empty: the same as the guidance.", rich_help_panel="Row defaults")
]
EmbeddedOpt = Annotated[
    Optional[float], typer.Option("--embedded-guidance", help="Default distilled guidance of HunyuanVideo-family models with a guidance embedding.", rich_help_panel="Row defaults")
]
NegativeOpt = Annotated[Optional[str], typer.Option("--negative-prompt", help="Default negative prompt.", rich_help_panel="Row defaults")]
ImageRootOpt = Annotated[
    Optional[list[str]],
    typer.Option("--image-root", help="A folder or URL prefix (s3://bucket/images/) that `image` / `last_image` cells may read from, besides the manifest's own folder and REELBATCH_IMAGE_ROOTS (comma-separated); nothing else is read. Repeatable.", rich_help_panel="Inputs"),
]
StrictColumnsHelp = "Refuse the run if any row is bad or the manifest has a column reelbatch does not know."
VideosOpt = Annotated[Optional[int], typer.Option("--num-videos", help="Default videos per row.", rich_help_panel="Row defaults")]
SeqBatchOpt = Annotated[
    Optional[bool],
    typer.Option("--sequence-batch/--no-sequence-batch", help="Default: run CFG passes one after another (less memory, no CFG parallel).", rich_help_panel="Row defaults"),
]
PlanOpt = Annotated[
    Optional[str],
    typer.Option("--plan", help="Pin a parallel plan for every row without a `plan` cell, e.g. dp=2,cfg=2,ulysses=1,ring=1. Validated, never changed.", rich_help_panel="Parallelism"),
]
BackendOpt = Annotated[
    Optional[str],
    typer.Option("--backend", help="native (diffusers context parallel + reelbatch CFG/dp) or xdit (xfuser, CUDA only).", rich_help_panel="Parallelism"),
]
JobMinutesOpt = Annotated[
    float, typer.Option("--job-minutes", min=0.01, help="Target wall time of one job, model load included; small manifests get shorter jobs so every GPU has work.", rich_help_panel="Packing")
]
PaddingOpt = Annotated[
    str, typer.Option("--padding", help="pad: padded slots are computed and thrown away; fill: they generate extra seeds of the bucket's prompts (free videos).", rich_help_panel="Packing")
]
JobWidthOpt = Annotated[
    str, typer.Option("--job-width", help="group: each job gets one sample's GPU group and jobs run side by side on a node; node: a job spans the node with the plan's data parallel degree.", rich_help_panel="Packing")
]
NoPackOpt = Annotated[
    bool, typer.Option("--no-pack", help="Keep one plan per bucket cut into jobs of at most --max-samples-per-job (the pre-packing behaviour).", rich_help_panel="Packing")
]
MemoryOpt = Annotated[
    float, typer.Option("--gpu-memory-gib", min=1, help="Memory per GPU the planner may use.", rich_help_panel="Parallelism")
]
ObjectiveOpt = Annotated[
    str,
    typer.Option("--objective", help="throughput: most videos per GPU-hour; latency: each video as fast as possible.", rich_help_panel="Parallelism"),
]
LimitOpt = Annotated[
    Optional[list[str]],
    typer.Option("--limit", help="NAME=N manifest limit (max_prompt_chars, max_rows, max_num_videos, max_frames, max_side, max_steps, max_image_bytes, max_image_side). Repeatable."),
]
RetryOpt = Annotated[
    Optional[str],
    typer.Option("--retry-policy", help='JSON retries per failure class, e.g. {"rank_crash": {"max_attempts": 5, "backoff_s": 10}}; classes: oom, collective_timeout, rank_crash, timeout, bad_input, model_load, unknown.'),
]
FpsOpt = Annotated[Optional[int], typer.Option("--fps", help="Frame rate of the written mp4 files. Empty: each model's own.", rich_help_panel="Row defaults")]


def _prefect_environment() -> None:
    """Quiet, robust defaults for Prefect's ephemeral mode, set before Prefect is imported."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


OBJECTIVES = ("throughput", "latency")


def _defaults(**overrides):
    from pydantic import ValidationError

    from reelbatch.schemas import ParallelPlan, RunDefaults

    if overrides.get("plan") is not None:
        try:
            overrides["plan"] = ParallelPlan.parse(overrides["plan"])
        except ValueError as exc:
            _fail(f"--plan: {exc}")
    try:
        return RunDefaults(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        _fail(problems)


def _limits(entries: list[str] | None) -> dict[str, int]:
    from dataclasses import fields

    from reelbatch.tasks.manifest import ManifestLimits

    known = {f.name for f in fields(ManifestLimits)}
    limits = {}
    for entry in entries or []:
        name, _, value = entry.partition("=")
        if name not in known or not value.isdigit():
            _fail(f"--limit {entry!r}: expected NAME=N with NAME one of {', '.join(sorted(known))}")
        limits[name] = int(value)
    return limits


def _retry_policy(text: str | None) -> dict | None:
    from reelbatch.infra.failures import RetryPolicy

    if text is None:
        return None
    try:
        policy = json.loads(text)
        RetryPolicy.from_dict(policy)
    except (ValueError, TypeError) as exc:
        _fail(f"--retry-policy: {exc}")
    return policy


def _objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        _fail(f"--objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
    return objective


def _db_url(db: str | None) -> str:
    from reelbatch.settings import DEFAULT_DB_URL

    return db or os.environ.get("REELBATCH_DB_URL") or DEFAULT_DB_URL


def _catalog(model_path, models_file):
    from reelbatch.models.catalog import ModelCatalog

    try:
        return ModelCatalog.from_config(model_path or [], models_file)
    except (OSError, ValueError) as exc:
        _fail(str(exc))


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_USAGE)


def _packing(no_pack: bool, job_minutes: float, padding: str, job_width: str):
    from pydantic import ValidationError

    from reelbatch.planning.packing import Packing

    try:
        return Packing(enabled=not no_pack, job_minutes=job_minutes, padding=padding, width=job_width)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        _fail(f"packing options: {problems} (--padding pad|fill, --job-width group|node)")


def _gpus(gpus: int | None) -> int:
    from reelbatch.infra.cluster import default_ranks_per_node

    return gpus or default_ranks_per_node()


def _print_rejections(rejections) -> None:
    if not rejections:
        return
    table = Table(title=f"{len(rejections)} rejected", title_justify="left", show_lines=False)
    for column in ("line", "column", "rule", "problem", "fix"):
        table.add_column(column, overflow="fold")
    for r in sorted(rejections, key=lambda r: r.row):
        # Messages quote the manifest's cells: never read them as rich markup.
        table.add_row(str(r.row), escape(r.column or ""), r.rule, escape(r.message), escape(r.fix))
    console.print(table)


@app.command()
def plan(
    manifest: ManifestArg,
    gpus: GpusOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON (schema in README.md).")] = False,
    max_samples_per_job: Annotated[int, typer.Option(min=1, help="Largest job, in samples.")] = 32,
    model_path: ModelPathOpt = None,
    models_file: ModelsFileOpt = None,
    model: ModelOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    frames: FramesOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    guidance_2: Guidance2Opt = None,
    embedded_guidance: EmbeddedOpt = None,
    negative_prompt: NegativeOpt = None,
    num_videos: VideosOpt = None,
    sequence_batch: SeqBatchOpt = None,
    plan_pin: PlanOpt = None,
    backend: BackendOpt = None,
    gpu_memory_gib: MemoryOpt = 80.0,
    objective: ObjectiveOpt = "throughput",
    limit: LimitOpt = None,
    image_root: ImageRootOpt = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 2 if the manifest has a column reelbatch does not know.")] = False,
    job_minutes: JobMinutesOpt = 30.0,
    padding: PaddingOpt = "pad",
    job_width: JobWidthOpt = "group",
    no_pack: NoPackOpt = False,
    nodes: Annotated[int, typer.Option(min=1, help="Nodes of the fleet the cost and wall time are estimated for.", rich_help_panel="Fleet estimate")] = 1,
    gpu: Annotated[str, typer.Option(help="GPU type for the estimate: h100, a800 or rtx4090.", rich_help_panel="Fleet estimate")] = "h100",
    storage: Annotated[str, typer.Option(help="Where the weights load from (load time per job): local, nfs or s3.", rich_help_panel="Fleet estimate")] = "local",
) -> None:
    """Dry run: validate the manifest and show the jobs that `run` would launch, and what they cost. Nothing runs.

    Jobs are planned as `run` plans them on this machine (--gpus-per-node ranks); the estimate plays them on a
    fleet of --nodes such machines with --gpu GPUs: wall time (makespan), GPU-hours, utilisation.

    Exit 0 when every row is accepted, 1 when some rows are rejected, 2 for usage or file errors.
    """
    from reelbatch.planning.planner import plan_run

    defaults = _defaults(
        model=model, height=height, width=width, num_frames=frames, num_inference_steps=steps,
        guidance_scale=guidance, guidance_scale_2=guidance_2, embedded_guidance_scale=embedded_guidance,
        negative_prompt=negative_prompt, num_videos=num_videos, sequence_batch=sequence_batch,
        plan=plan_pin, backend=backend,
    )
    objective = _objective(objective)
    catalog = _catalog(model_path, models_file)
    read = _read_for_planning(manifest, defaults, catalog, _limits(limit), image_root or [], strict)
    ranks = _gpus(gpus)
    packing = _packing(no_pack, job_minutes, padding, job_width)
    try:
        run_plan = plan_run(
            read.rows, read.rejections, read.total_rows, catalog, ranks, max_samples_per_job,
            gpu_memory_gib=gpu_memory_gib, objective=objective,
            packing=packing.options(ranks, max_samples_per_job, nodes=nodes, storage=storage),
        )
        fleet = _fleet_estimate(run_plan, nodes, ranks, gpu.lower(), storage)
    except (KeyError, ValueError) as exc:
        _fail(f"plan: {exc}")
    if as_json:
        print(json.dumps({**run_plan.to_json(), "fleet": fleet}, indent=2))
    else:
        _print_plan(run_plan, ranks)
        _print_fleet(fleet)
    raise typer.Exit(EXIT_PARTIAL if run_plan.rejected else EXIT_OK)


@app.command()
def simulate(
    manifest: ManifestArg,
    nodes: Annotated[int, typer.Option(min=1, help="Nodes in the fleet.")] = 1,
    gpus: Annotated[int, typer.Option("--gpus-per-node", "--gpus", min=1, help="GPUs per node.")] = 8,
    gpu: Annotated[str, typer.Option(help="GPU type for the cost model: h100, a800 or rtx4090.")] = "h100",
    as_json: Annotated[bool, typer.Option("--json", help="Print the simulation as JSON.")] = False,
    objective: ObjectiveOpt = "throughput",
    model_path: ModelPathOpt = None,
    models_file: ModelsFileOpt = None,
) -> None:
    """What a manifest will cost on a fleet, before it runs: the real planner and packer, then an event simulation.

    Prints makespan, its lower bound, GPU utilisation, padding and GPU-hours, and the same for the naive policy
    (one job per prompt, ulysses = GPUs per node), as single-prompt scripts do. No GPU is needed.
    """
    from reelbatch.planning.fleet.simulation import simulate as run_simulation
    from reelbatch.tasks.manifest import ManifestError, read_manifest

    catalog = _catalog(model_path, models_file)
    try:
        read = read_manifest(manifest, _defaults(), catalog)
        report = run_simulation(read, nodes=nodes, gpus_per_node=gpus, gpu=gpu.lower(), catalog=catalog,
                                objective=_objective(objective))
    except ManifestError as exc:
        _fail(str(exc))
    except (KeyError, ValueError) as exc:
        _fail(f"simulate: {exc}")
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        for line in report.summary_lines():
            out.print(line, highlight=False)
        _print_rejections(report.run_plan.rejected)
    raise typer.Exit(EXIT_PARTIAL if report.run_plan.rejected else EXIT_OK)


def _read_for_planning(manifest: str, defaults, catalog, limits: dict, image_roots: list[str], strict: bool):
    """The manifest read and its images checked as `run` checks them (into a throwaway store: nothing runs)."""
    import tempfile

    from reelbatch.infra.images import configured_roots
    from reelbatch.tasks.images import check_images
    from reelbatch.tasks.manifest import ManifestError, ManifestLimits, check_columns, read_manifest

    manifest_limits = ManifestLimits(**limits)
    try:
        read = read_manifest(manifest, defaults, catalog, manifest_limits)
        check_columns(read, strict)
    except ManifestError as exc:
        _fail(str(exc))
    _print_warnings(read.warnings)
    with tempfile.TemporaryDirectory(prefix="reelbatch-plan-images-") as store:
        try:
            roots = [*configured_roots(), *(_absolute(root) for root in image_roots)]
            return check_images(read, catalog, store, roots, manifest_limits)
        except ValueError as exc:  # an --image-root that cannot be a root
            _fail(f"--image-root: {exc}")


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)


def _fleet_estimate(run_plan, nodes: int, gpus_per_node: int, gpu: str, storage: str) -> dict:
    """The plan's jobs played on the fleet by the simulator: wall time, GPU-hours, utilisation."""
    from reelbatch.planning.fleet.simulation import simulate_plan

    report = simulate_plan(run_plan, nodes=nodes, gpus_per_node=gpus_per_node, gpu=gpu, storage=storage)
    return {"nodes": nodes, "gpus_per_node": gpus_per_node, "gpu": report.gpu, "storage": storage,
            **report.packed.to_json()}


def _print_fleet(fleet: dict) -> None:
    hours = fleet["makespan_s"] / 3600
    out.print(
        f"On {fleet['nodes']} x {fleet['gpus_per_node']} {fleet['gpu'].upper()} ({fleet['storage']} weights): "
        f"about {_duration(fleet['makespan_s'])} of wall time ({hours:,.2f} h, lower bound "
        f"{_duration(fleet['lower_bound_s'])}), {fleet['gpu_hours']:,.2f} GPU-hours, "
        f"GPU utilisation {fleet['gpu_utilization']:.0%}.",
        highlight=False,
    )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _print_plan(run_plan, gpus: int) -> None:
    from reelbatch.schemas import ParallelPlan

    table = Table(title=f"Plan for {gpus} ranks per node", title_justify="left")
    columns = ("job", "model", "HxWxF", "steps", "guidance", "plan", "samples", "padded", "tokens", "GPU-s",
               "wall", "notes")
    for column in columns:
        table.add_column(column, no_wrap=column in ("job", "plan", "HxWxF"))
    footnotes: list[str] = []
    for job in run_plan.jobs:
        b = job.bucket
        marks = []
        why_not = [
            f"{ParallelPlan(**{k: v for k, v in r['plan'].items() if k != 'world_size'}).short()} refused"
            f" ({r['rule']}): {r['message']}"
            for r in job.refused
        ]
        for note in [*job.notes, *job.warnings, *why_not]:
            if note not in footnotes:
                footnotes.append(note)
            marks.append(f"[{footnotes.index(note) + 1}]")
        table.add_row(
            job.job_id, b.model, f"{b.height}x{b.width}x{b.num_frames}", str(b.num_inference_steps),
            f"{b.guidance_scale:g}", job.plan.short(), str(len(job.samples)), str(job.padded_slots), str(job.tokens),
            f"{job.estimated_gpu_seconds:,.0f}", _duration(job.estimated_seconds), " ".join(marks),
        )
    out.print(table)
    for number, note in enumerate(footnotes, 1):
        out.print(f"[{number}] {note}", highlight=False)
    _print_rejections(run_plan.rejected)
    s = run_plan.summary()
    out.print(
        f"{run_plan.rows} rows, {run_plan.accepted} accepted, {len(run_plan.rejected)} rejected; "
        f"{s['jobs']} jobs, {s['samples']} samples, {s['padded_slots']} padded slots ({s['padding_ratio']:.1%}); "
        f"about {s['estimated_gpu_seconds'] / 3600:,.2f} H100 GPU-hours of compute (model loads not included)."
    )


@app.command()
def run(
    manifest: ManifestArg,
    gpus: GpusOpt = None,
    out_dir: Annotated[str, typer.Option("--out", help="Output folder for the videos (created if missing).")] = "outputs",
    db: DbOpt = None,
    strict: Annotated[bool, typer.Option("--strict", help=StrictColumnsHelp)] = False,
    force: Annotated[bool, typer.Option("--force", help="Regenerate videos an earlier run already made into --out.")] = False,
    max_samples_per_job: Annotated[int, typer.Option(min=1, help="Largest job, in samples.")] = 32,
    job_timeout: Annotated[Optional[float], typer.Option(min=1, help="Wall-clock limit per job attempt, seconds; its ranks are killed after it. Default: the cost model's estimate x 3, at least 15 min.")] = None,
    model_path: ModelPathOpt = None,
    models_file: ModelsFileOpt = None,
    model: ModelOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    frames: FramesOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    guidance_2: Guidance2Opt = None,
    embedded_guidance: EmbeddedOpt = None,
    negative_prompt: NegativeOpt = None,
    num_videos: VideosOpt = None,
    sequence_batch: SeqBatchOpt = None,
    fps: FpsOpt = None,
    plan_pin: PlanOpt = None,
    backend: BackendOpt = None,
    gpu_memory_gib: MemoryOpt = 80.0,
    objective: ObjectiveOpt = "throughput",
    limit: LimitOpt = None,
    image_root: ImageRootOpt = None,
    retry_policy: RetryOpt = None,
    job_minutes: JobMinutesOpt = 30.0,
    padding: PaddingOpt = "pad",
    job_width: JobWidthOpt = "group",
    no_pack: NoPackOpt = False,
    dask: Annotated[Optional[str], typer.Option("--dask", metavar="ADDRESS", help="Run the jobs on this Dask cluster (tcp://host:8786). Workers need `--resources GPU=N`; --out must be shared storage (s3:// or a shared folder) and --db a server the workers reach. See docs/SCALE_OUT.md.", rich_help_panel="Scale-out")] = None,
    dask_local: Annotated[int, typer.Option("--dask-local", metavar="N", min=0, help="Try Dask on this machine: a local cluster of N workers with --gpus-per-node GPUs each.", rich_help_panel="Scale-out")] = 0,
) -> None:
    """Generate every video of the manifest and record runs, jobs and samples in the database.

    Each job runs as `torchrun` ranks (on CPU with gloo when there is no CUDA). Jobs run side by side on disjoint
    groups of this machine's GPUs (CPU rank slots without CUDA; --gpus-per-node of them), longest first, never
    more ranks at once than the machine has. Rejected rows are reported and recorded; the valid rows still run
    unless --strict.
    """
    _prefect_environment()
    from reelbatch.infra.db import Database, SchemaOutOfDate

    defaults = _defaults(
        model=model, height=height, width=width, num_frames=frames, num_inference_steps=steps,
        guidance_scale=guidance, guidance_scale_2=guidance_2, embedded_guidance_scale=embedded_guidance,
        negative_prompt=negative_prompt, num_videos=num_videos, sequence_batch=sequence_batch,
        fps=fps, plan=plan_pin, backend=backend,
    )
    objective = _objective(objective)
    db_url = _db_url(db)
    from reelbatch.infra.storage import redact_url

    if redact_url(out_dir) != out_dir:
        _fail("--out must not carry credentials: use the AWS variables or a profile (nothing else is read)")
    _catalog(model_path, models_file)  # configuration errors are usage errors: report them before starting
    if dask:
        from reelbatch.infra.dask_cluster import check_shared_storage

        try:
            check_shared_storage(out_dir, db_url, dask)
        except ValueError as exc:
            _fail(str(exc))
    try:
        with Database(db_url) as database:
            database.ensure_schema(auto_upgrade=True)
    except SchemaOutOfDate as exc:
        _fail(str(exc))
    if models_file:
        os.environ["REELBATCH_MODELS_FILE"] = models_file
    _run_flow(
        manifest=_absolute(manifest),
        output=out_dir,
        db_url=db_url,
        gpus_per_node=_gpus(gpus),
        defaults=defaults,
        strict=strict,
        force=force,
        model_paths=model_path or [],
        max_samples_per_job=max_samples_per_job,
        job_timeout_s=job_timeout,
        gpu_memory_gib=gpu_memory_gib,
        objective=objective,
        limits=_limits(limit),
        retry_policy=_retry_policy(retry_policy),
        packing=_packing(no_pack, job_minutes, padding, job_width),
        dask_address=dask,
        dask_local_workers=dask_local,
        image_roots=[_absolute(root) for root in image_root or []],
    )


def _use_image_roots(roots: list[str]) -> None:
    """Where image cells may be read from, for this process's run (operator configuration, not a run parameter)."""
    from reelbatch.infra.images import IMAGE_ROOTS_ENV, ImagePolicy, configured_roots

    if any("," in root for root in roots):
        _fail("--image-root: a path or URL with a comma cannot be a root")
    allowed = list(dict.fromkeys([*configured_roots(), *roots]))
    try:
        ImagePolicy.for_manifest(None, allowed)
    except ValueError as exc:
        _fail(str(exc))
    os.environ[IMAGE_ROOTS_ENV] = ",".join(allowed)


def _absolute(manifest: str) -> str:
    """Local manifests are recorded by absolute path, so `reelbatch resume` works from any folder."""
    from reelbatch.infra.storage import is_local

    return str(Path(manifest).resolve()) if is_local(manifest) else manifest


def _run_flow(image_roots: list[str] = (), **parameters) -> None:
    from reelbatch.cli_progress import RichProgressSink
    from reelbatch.flows.generate import generate_dataset
    from reelbatch.progress import reporting_to
    from reelbatch.tasks.manifest import ManifestError

    _use_image_roots(list(image_roots))
    try:
        with RichProgressSink(console) as sink, reporting_to(sink):
            report = generate_dataset(**parameters)
    except ManifestError as exc:
        _fail(str(exc))
    except ValueError as exc:  # an --image-root that cannot be a root
        _fail(str(exc))
    _print_warnings(report.warnings)
    _print_rejections(report.rejected)
    _print_report(report)
    raise typer.Exit(report.exit_code)


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="Run id, or a unique prefix of it (see `reelbatch runs`).")],
    db: DbOpt = None,
    gpus: GpusOpt = None,
) -> None:
    """Continue a run that stopped (crash, kill, reboot): finished videos are kept, the rest runs again.

    Ranks the stopped orchestrator left behind are killed first. The manifest must still be readable where the
    run found it, unchanged.
    """
    _prefect_environment()
    from reelbatch.planning.packing import Packing
    from reelbatch.schemas import RunDefaults

    db_url = _db_url(db)
    with _open_database(db) as database:
        try:
            record = database.run_record(run_id)
        except KeyError:
            _fail(f"no run {run_id!r} in {database.url_for_display} (see `reelbatch runs`)")
    params = record["params"]
    if record["manifest_source"] == "<inline>" or "defaults" not in params:
        _fail(f"run {record['id']} cannot be resumed: its manifest was not a file (start a new run instead)")
    _run_flow(
        manifest=record["manifest_source"],
        output=record["output_root"],
        db_url=db_url,
        gpus_per_node=gpus or record["gpus_per_node"],
        defaults=RunDefaults.model_validate(params["defaults"]),
        strict=params.get("strict", False),
        model_paths=params.get("model_paths", []),
        max_samples_per_job=params.get("max_samples_per_job", 32),
        job_timeout_s=params.get("job_timeout_s"),
        gpu_memory_gib=params.get("gpu_memory_gib", 80.0),
        objective=params.get("objective", "throughput"),
        retry_policy=params.get("retry_policy"),
        limits=params.get("limits"),
        packing=Packing.model_validate(params.get("packing", {"enabled": False})),
        image_roots=params.get("image_roots", []),
        resume_run_id=record["id"],
    )


def _print_report(report) -> None:
    table = Table(title="Run summary", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("run", report.run_id or "-")
    table.add_row("status", report.status)
    table.add_row("rows", f"{report.rows} ({report.accepted} accepted, {len({r.row for r in report.rejected})} rejected)")
    reused = f" ({report.reused} reused from earlier runs)" if report.reused else ""
    table.add_row("videos", f"{report.done} done{reused}, {report.failed} failed")
    table.add_row("jobs", str(report.jobs))
    table.add_row("wall time", f"{report.wall_seconds:.1f} s")
    table.add_row("output", str(Path(report.output).resolve()) if "://" not in report.output else report.output)
    if report.dataset:
        table.add_row("dataset index", report.dataset["metadata"])
        table.add_row("gallery", report.dataset["gallery"])
    console.print(table)
    if report.status == "refused":
        console.print("[bold red]--strict:[/] the manifest has bad rows, nothing was launched.")


@app.command()
def runs(
    db: DbOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="How many recent runs.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
) -> None:
    """Recent runs, newest first, with sample counts and status."""
    with _open_database(db) as database:
        recent = database.list_runs(limit)
        shown_url = database.url_for_display
    if as_json:
        print(json.dumps([
            {"id": r.id, "created_at": r.created_at.isoformat(), "status": r.status, "counts": r.counts,
             "jobs": r.jobs, "manifest_source": r.manifest_source, "output_root": r.output_root}
            for r in recent
        ], indent=2))
        return
    table = Table(title=f"Runs in {shown_url}", title_justify="left")
    for column in ("run", "started", "status", "done", "fail", "rej", "pend", "jobs", "manifest"):
        table.add_column(column, overflow="fold", no_wrap=column != "manifest")
    for r in recent:
        c = r.counts
        table.add_row(
            r.id[:12], r.created_at.strftime("%m-%d %H:%M"), r.status, str(c.get("done", 0)),
            str(c.get("failed", 0)), str(c.get("rejected", 0)), str(c.get("pending", 0) + c.get("running", 0)),
            str(r.jobs), r.manifest_source,
        )
    out.print(table)


def _open_database(db: str | None):
    from reelbatch.infra.db import Database, SchemaOutOfDate

    database = Database(_db_url(db))
    try:
        database.ensure_schema(auto_upgrade=False)
    except SchemaOutOfDate as exc:
        _fail(str(exc))
    return database


def _run_summary(database, run_id: str):
    try:
        return database.run_summary(run_id)
    except KeyError:
        _fail(f"no run {run_id!r} in {database.url_for_display} (see `reelbatch runs`)")


@app.command()
def status(
    run_id: Annotated[str, typer.Argument(help="Run id, or a unique prefix of it (see `reelbatch runs`).")],
    db: DbOpt = None,
) -> None:
    """Counts, jobs and failures of one run."""
    from reelbatch.schemas import ParallelPlan

    with _open_database(db) as database:
        summary = _run_summary(database, run_id)
        jobs = database.jobs(summary.id)
        samples = database.samples(summary.id)
    c = summary.counts
    out.print(
        f"run {summary.id}  [bold]{summary.status}[/]  manifest {summary.manifest_source}  output {summary.output_root}\n"
        f"done {c.get('done', 0)}, failed {c.get('failed', 0)}, rejected {c.get('rejected', 0)}, "
        f"pending {c.get('pending', 0) + c.get('running', 0)}"
    )
    table = Table(title="Jobs", title_justify="left")
    for column in ("job", "status", "plan", "backend", "samples", "padded", "tokens", "seconds", "attempts"):
        table.add_column(column, no_wrap=column == "job")
    for j in jobs:
        plan = ParallelPlan(dp=j["dp"], cfg=j["cfg"], ulysses=j["ulysses"], ring=j["ring"]).short()
        seconds = f"{j['seconds']:.1f}" if j["seconds"] is not None else "-"
        table.add_row(
            j["id"], j["status"], plan, j["backend"], str(j["samples_count"]), str(j["padded_slots"]),
            str(j["tokens"]), seconds, str(j["attempts"]),
        )
    out.print(table)
    failed = [s for s in samples if s["status"] in ("failed", "rejected")]
    if failed:
        problems = Table(title="Failed and rejected rows", title_justify="left")
        for column in ("line", "status", "prompt", "problem"):
            problems.add_column(column, overflow="fold")
        for s in failed:
            problem = s["error"] or ""
            if s["reject_fix"]:
                problem += f" (fix: {s['reject_fix']})"
            problems.add_row(str(s["row"]), s["status"], escape((s["prompt"] or "")[:60]), escape(problem))
        out.print(problems)


@app.command()
def export(
    run_id: Annotated[str, typer.Argument(help="Run id, or a unique prefix of it (see `reelbatch runs`).")],
    fmt: Annotated[str, typer.Option("--format", help="parquet, csv or jsonl.")] = "parquet",
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Where to write (path or fsspec URL). Default: <run output>/export/<run>.<format>.")] = None,
    db: DbOpt = None,
) -> None:
    """Every column of a run's samples table as a file. CSV cells a spreadsheet would run as formulas are neutralised."""
    from reelbatch.tasks.export import write_samples

    if fmt not in ("parquet", "csv", "jsonl"):
        _fail(f"--format {fmt!r}: use parquet, csv or jsonl")
    with _open_database(db) as database:
        summary = _run_summary(database, run_id)
        samples = database.samples(summary.id)
    target = output or f"{summary.output_root.rstrip('/')}/export/{summary.id}.{fmt}"
    count = write_samples(samples, target, fmt)
    console.print(f"{count} rows of run {summary.id} written to {target}")


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None) -> None:
    """Create or migrate the database schema to the version this reelbatch needs."""
    from reelbatch.infra.db import Database

    database = Database(_db_url(db))
    database.upgrade()
    console.print(f"{database.url_for_display}: schema at revision {database.current_revision()}")


@models_app.command("list")
def models_list(model_path: ModelPathOpt = None, models_file: ModelsFileOpt = None) -> None:
    """Model names a manifest may use, their pipeline class and what a row gives them."""
    catalog = _catalog(model_path, models_file)
    table = Table(title_justify="left")
    for column in ("model", "pipeline", "inputs", "heads", "source"):
        table.add_column(column, no_wrap=column in ("model", "pipeline"))
    for name in sorted(catalog.names()):
        try:
            family = catalog.family(name)
        except KeyError as exc:
            table.add_row(name, "?", "?", "?", f"[red]{exc}[/]")
            continue
        table.add_row(name, family.pipeline_class, family.inputs(), str(family.heads), _model_source(catalog, name))
    out.print(table)


def _model_source(catalog, name: str) -> str:
    if name in catalog.paths:
        return catalog.paths[name]
    if catalog.family(name).builtin_tiny:
        return "built-in tiny (random weights)"
    return "registry (no folder: plan only)"


@models_app.command("show")
def models_show(
    name: Annotated[str, typer.Argument(help="A model name (see `reelbatch models list`).")],
    model_path: ModelPathOpt = None,
    models_file: ModelsFileOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """One model: its pipeline class, inputs, what empty cells become, and the parallel plans the engine runs.

    With a folder (--model-path NAME=DIR) the folder is read and checked against the registry.
    """
    catalog = _catalog(model_path, models_file)
    try:
        family = catalog.family(name)
    except KeyError as exc:
        _fail(str(exc))
    facts = _model_facts(family, _model_source(catalog, name))
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    table = Table(title=name, title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in facts.items():
        shown = ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
        table.add_row(key, shown)
    out.print(table)


def _model_facts(family, source: str) -> dict:
    defaults = family.defaults.to_json()
    defaults["flow_shift"] = {f"<= {area} px": shift for area, shift in family.defaults.flow_shift} or None
    if not family.guidance_embedding:
        defaults.pop("embedded_guidance_scale")
    if family.experts != 2:
        defaults.pop("guidance_scale_2")
    native = family.native
    return {
        "pipeline": family.pipeline_class,
        "inputs": family.inputs(),
        "experts": family.experts,
        "guidance": "true CFG (true_cfg_scale) against the negative prompt" if family.true_cfg
        else "classifier-free guidance",
        "defaults (empty cells)": defaults,
        "parallel (native)": {"dp": "yes", "cfg": "yes (when guidance > 1)", "ulysses": "yes" if native.ulysses
                              else "no", "ring": "CUDA only" if native.ring else "no"},
        "heads": family.heads,
        "pixels per token": family.pixels_per_token,
        "sizes": ", ".join(f"{h}x{w}" for h, w in sorted(family.allowed_sizes)) if family.allowed_sizes
        else f"any multiple of {family.size_multiple}",
        "source": source,
    }


@models_app.command("build")
def models_build() -> None:
    """Build the tiny models into the cache now (a run builds them on first use anyway)."""
    from reelbatch.models.tiny import TINY_BUILDERS, ensure_tiny_model

    for name in sorted(TINY_BUILDERS):
        console.print(f"{name}: {ensure_tiny_model(name)}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)


from reelbatch.cli_prefect import register  # noqa: E402 - needs app and the helpers above

register(app)


if __name__ == "__main__":
    main()
