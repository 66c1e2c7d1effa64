"""`reelbatch plan` and `reelbatch simulate`: what a manifest becomes and costs, before anything runs."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from reelbatch.planning.cost import CostModel, StorageKind

import reelbatch.cli.values as values  # noqa: PLR0402 - `from reelbatch.cli import` would import the package: a cycle
from reelbatch import defaults as default
from reelbatch.cli.app import EXIT_OK, EXIT_PARTIAL, app
from reelbatch.cli.options import (
    PACKING,
    PLANNER,
    ROW_DEFAULTS,
    STORAGE_HELP,
    CompileOpt,
    GpusOpt,
    ManifestArg,
    MaxSamplesOpt,
    ModelPathOpt,
    ModelsFileOpt,
    ObjectiveOpt,
    with_options,
)
from reelbatch.cli.render import out, print_fleet, print_plan, print_plan_jobs, print_rejections, print_warnings

JSON_HELP = (
    "Print the plan as one line of JSON: rows, rejected rows, buckets (the table's lines), summary, and fleet when "
    "estimated; --jobs adds every job (schema in README.md)."
)
JOBS_HELP = "Also list every job (the table: after the buckets; JSON: a `jobs` array). Slow on big manifests."
FLEET_PANEL = "Fleet estimate (only when one of these is given)"


@app.command()
@with_options(row=ROW_DEFAULTS, planner=PLANNER, packing=PACKING)
def plan(
    manifest: ManifestArg,
    gpus: GpusOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    list_jobs: Annotated[bool, typer.Option("--jobs", help=JOBS_HELP)] = False,
    max_samples_per_job: MaxSamplesOpt = default.MAX_SAMPLES_PER_JOB,
    model_path: ModelPathOpt = None,
    models_file: ModelsFileOpt = None,
    *,
    row: dict,
    planner: dict,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 2 if the manifest has a column reelbatch does not know.")
    ] = False,
    packing: dict,
    nodes: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=f"Nodes of the fleet to plan for and estimate (default {default.FLEET_NODES}); jobs are sized for it.",
            rich_help_panel=FLEET_PANEL,
        ),
    ] = None,
    gpu: Annotated[
        str | None,
        typer.Option(
            help=(
                f"GPU type of the fleet: h100, a800 or rtx4090 (default {default.FLEET_GPU}). Plans follow its rules "
                "and memory, whatever machine plans."
            ),
            rich_help_panel=FLEET_PANEL,
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(help=f"{STORAGE_HELP} Default {default.WEIGHTS_STORAGE}.", rich_help_panel=FLEET_PANEL),
    ] = None,
) -> None:
    """Dry run: validate the manifest and show the jobs that `run` would launch, and what they cost. Nothing runs.

    Prints one line per bucket (model, shape, steps, guidance: the rows that share a model load and a plan) with
    its plan, jobs, samples, padding and GPU-hours, then the rejected rows and the totals; --jobs lists every job
    too. Jobs are planned as `run` plans them on this machine (--gpus-per-node ranks, this machine's devices).

    Given --nodes, --gpu or --storage, it plans for that fleet instead, whatever machine plans: --nodes nodes of
    --gpus-per-node (default 8) --gpu GPUs, with that GPU's parallel rules (ring attention needs CUDA) and memory
    (--gpu-memory-gib overrides it), job widths and lengths fitted to the fleet; then it plays the jobs on the
    fleet: wall time (makespan), GPU-hours, utilisation.

    --json prints one JSON document on one line: `rows`, `accepted`, `rejected` (every rejected row),
    `buckets` (the table's lines), `summary`, `fleet` (only when estimated) and, with --jobs, `jobs`.

    Exit 0 when every row is accepted, 1 when some rows are rejected, 2 for usage or file errors.
    """
    from reelbatch.planning.planner import plan_run

    run_defaults = values.run_defaults(**row)
    objective = values.objective(planner["objective"])
    catalog = values.catalog(model_path, models_file)
    read = read_for_planning(
        manifest, run_defaults, catalog, values.limits(planner["limit"]), planner["image_root"] or [], strict
    )
    estimate = nodes is not None or gpu is not None or storage is not None
    storage_kind = values.storage(storage or default.WEIGHTS_STORAGE)
    fleet_nodes = nodes or default.FLEET_NODES
    packing_choice = values.packing(**packing)
    target = fleet_target((gpu or default.FLEET_GPU).lower(), planner["gpu_memory_gib"]) if estimate else None
    if target is None:  # this machine: its devices and ranks
        ranks, device, cost_model = values.gpus(gpus), None, None
        memory = planner["gpu_memory_gib"] or default.GPU_MEMORY_GIB
    else:
        ranks, (device, cost_model, memory) = gpus or default.FLEET_GPUS_PER_NODE, target
    try:
        run_plan = plan_run(
            read.rows,
            read.rejections,
            read.total_rows,
            catalog,
            ranks,
            max_samples_per_job,
            gpu_memory_gib=memory,
            objective=objective,
            device=device,
            packing=packing_choice.options(ranks, max_samples_per_job, nodes=fleet_nodes, storage=storage_kind),
            compile=values.compile_mode(planner["compile"]),
            cost_model=cost_model,
        )
        del read  # the plan holds what it needs of the rows
        fleet = (
            fleet_estimate(run_plan, fleet_nodes, ranks, cost_model.gpu, storage_kind, memory)
            if cost_model is not None
            else None
        )
    except (KeyError, ValueError) as exc:
        values.fail(f"plan: {exc}")
    if as_json:
        write_plan_json(run_plan, fleet, list_jobs)
    else:
        if list_jobs:
            print_plan_jobs(run_plan)
        print_plan(run_plan, ranks, cost_model.gpu if cost_model is not None else None)
        if fleet is not None:
            print_fleet(fleet)
    raise typer.Exit(EXIT_PARTIAL if run_plan.rejected else EXIT_OK)


def write_plan_json(run_plan, fleet: dict | None, list_jobs: bool) -> None:
    """One compact JSON document; the jobs, when listed, are encoded one at a time (never one big string)."""
    doc = run_plan.to_json()
    if fleet is not None:
        doc["fleet"] = fleet
    if not list_jobs:
        print(json.dumps(doc))
        return
    write = sys.stdout.write
    write(json.dumps(doc)[:-1] + ', "jobs": [')
    for index, job in enumerate(run_plan.jobs):
        write((", " if index else "") + json.dumps(job.to_json()))
    write("]}\n")


@app.command()
def simulate(
    manifest: ManifestArg,
    nodes: Annotated[int, typer.Option(min=1, help="Nodes in the fleet.")] = default.FLEET_NODES,
    gpus: Annotated[
        int, typer.Option("--gpus-per-node", "--gpus", min=1, help="GPUs per node.")
    ] = default.FLEET_GPUS_PER_NODE,
    gpu: Annotated[str, typer.Option(help="GPU type for the cost model: h100, a800 or rtx4090.")] = default.FLEET_GPU,
    as_json: Annotated[bool, typer.Option("--json", help="Print the simulation as JSON.")] = False,
    objective: ObjectiveOpt = default.OBJECTIVE,
    compile: CompileOpt = default.COMPILE,
    model_path: ModelPathOpt = None,
    models_file: ModelsFileOpt = None,
) -> None:
    """What a manifest will cost on a fleet, before it runs: the real planner and packer, then an event simulation.

    Prints makespan, its lower bound, GPU utilisation, padding and GPU-hours, and the same for the naive policy
    (one job per prompt, ulysses = GPUs per node, nothing compiled), as single-prompt scripts do. No GPU is needed.
    """
    from reelbatch.manifest import ManifestError, read_manifest
    from reelbatch.planning.fleet.simulation import simulate as run_simulation

    catalog = values.catalog(model_path, models_file)
    try:
        read = read_manifest(manifest, values.run_defaults(), catalog)
        report = run_simulation(
            read,
            nodes=nodes,
            gpus_per_node=gpus,
            gpu=gpu.lower(),
            catalog=catalog,
            objective=values.objective(objective),
            compile=values.compile_mode(compile),
        )
    except ManifestError as exc:
        values.fail(str(exc))
    except (KeyError, ValueError) as exc:
        values.fail(f"simulate: {exc}")
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        for line in report.summary_lines():
            out.print(line, highlight=False)
        print_rejections(report.run_plan.rejected)
    raise typer.Exit(EXIT_PARTIAL if report.run_plan.rejected else EXIT_OK)


def read_for_planning(manifest: str, run_defaults, catalog, limits: dict, image_roots: list[str], strict: bool):
    """The manifest read and its images and LoRAs checked as `run` checks them (into a throwaway store: nothing
    runs)."""
    import tempfile

    from reelbatch.manifest import ManifestError, ManifestLimits, check_columns, read_manifest
    from reelbatch.manifest.images import check_images, names_images
    from reelbatch.manifest.loras import check_loras, names_loras

    manifest_limits = ManifestLimits(**limits)
    try:
        read = read_manifest(manifest, run_defaults, catalog, manifest_limits)
        check_columns(read, strict)
    except ManifestError as exc:
        values.fail(str(exc))
    print_warnings(read.warnings)
    if not names_images(read) and not names_loras(read):
        return read
    from reelbatch.infra.images import configured_roots

    with tempfile.TemporaryDirectory(prefix="reelbatch-plan-images-") as store:
        try:
            roots = [*configured_roots(), *(values.absolute(root) for root in image_roots)]
            read = check_images(read, catalog, store, roots, manifest_limits)
            return check_loras(read, catalog, store, roots, manifest_limits)
        except ValueError as exc:  # an --image-root that cannot be a root
            values.fail(f"--image-root: {exc}")


def fleet_target(gpu: str, gpu_memory_gib: float | None) -> tuple[str, CostModel, float]:
    """What a plan for a fleet of ``gpu`` GPUs plans with: its device (CUDA: ring attention and xfuser are allowed,
    whatever machine plans), its cost model and the memory of one GPU (``--gpu-memory-gib`` wins)."""
    from reelbatch.planning.cost import DEFAULT_COST_MODEL
    from reelbatch.planning.fleet.simulation import SIMULATION_DEVICE

    try:
        cost = DEFAULT_COST_MODEL.on(gpu)
    except ValueError as exc:
        values.fail(f"--gpu: {exc}")
    return SIMULATION_DEVICE, cost, gpu_memory_gib or cost.memory_gib() or default.GPU_MEMORY_GIB


def fleet_estimate(
    run_plan, nodes: int, gpus_per_node: int, gpu: str, storage: StorageKind, gpu_memory_gib: float
) -> dict:
    """The plan's jobs played on the fleet by the simulator: wall time, GPU-hours, utilisation."""
    from reelbatch.planning.cost import gpu_name
    from reelbatch.planning.fleet.simulation import estimate_fleet

    figures = estimate_fleet(
        run_plan, nodes=nodes, gpus_per_node=gpus_per_node, gpu=gpu, storage=storage, gpu_memory_gib=gpu_memory_gib
    )
    return {
        "nodes": nodes,
        "gpus_per_node": gpus_per_node,
        "gpu": gpu_name(gpu),
        "storage": storage,
        **figures.to_json(),
    }
