"""`reelbatch plan` and `reelbatch simulate`: what a manifest becomes and costs, before anything runs."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from reelbatch.planning.cost import StorageKind

import reelbatch.cli.values as values  # noqa: PLR0402 - `from reelbatch.cli import` would import the package: a cycle
from reelbatch import defaults as default
from reelbatch.cli.app import EXIT_OK, EXIT_PARTIAL, app
from reelbatch.cli.options import (
    PACKING,
    PLANNER,
    ROW_DEFAULTS,
    STORAGE_HELP,
    GpusOpt,
    ManifestArg,
    MaxSamplesOpt,
    ModelPathOpt,
    ModelsFileOpt,
    ObjectiveOpt,
    with_options,
)
from reelbatch.cli.render import out, print_fleet, print_plan, print_rejections, print_warnings


@app.command()
@with_options(row=ROW_DEFAULTS, planner=PLANNER, packing=PACKING)
def plan(
    manifest: ManifestArg,
    gpus: GpusOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON (schema in README.md).")] = False,
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
        int,
        typer.Option(
            min=1, help="Nodes of the fleet the cost and wall time are estimated for.", rich_help_panel="Fleet estimate"
        ),
    ] = default.FLEET_NODES,
    gpu: Annotated[
        str, typer.Option(help="GPU type for the estimate: h100, a800 or rtx4090.", rich_help_panel="Fleet estimate")
    ] = default.FLEET_GPU,
    storage: Annotated[
        str, typer.Option(help=STORAGE_HELP, rich_help_panel="Fleet estimate")
    ] = default.WEIGHTS_STORAGE,
) -> None:
    """Dry run: validate the manifest and show the jobs that `run` would launch, and what they cost. Nothing runs.

    Jobs are planned as `run` plans them on this machine (--gpus-per-node ranks); the estimate plays them on a
    fleet of --nodes such machines with --gpu GPUs: wall time (makespan), GPU-hours, utilisation.

    Exit 0 when every row is accepted, 1 when some rows are rejected, 2 for usage or file errors.
    """
    from reelbatch.planning.planner import plan_run

    run_defaults = values.run_defaults(**row)
    objective = values.objective(planner["objective"])
    catalog = values.catalog(model_path, models_file)
    read = read_for_planning(
        manifest, run_defaults, catalog, values.limits(planner["limit"]), planner["image_root"] or [], strict
    )
    ranks = values.gpus(gpus)
    storage_kind = values.storage(storage)
    packing_choice = values.packing(**packing)
    try:
        run_plan = plan_run(
            read.rows,
            read.rejections,
            read.total_rows,
            catalog,
            ranks,
            max_samples_per_job,
            gpu_memory_gib=planner["gpu_memory_gib"],
            objective=objective,
            packing=packing_choice.options(ranks, max_samples_per_job, nodes=nodes, storage=storage_kind),
        )
        fleet = fleet_estimate(run_plan, nodes, ranks, gpu.lower(), storage_kind)
    except (KeyError, ValueError) as exc:
        values.fail(f"plan: {exc}")
    if as_json:
        print(json.dumps({**run_plan.to_json(), "fleet": fleet}, indent=2))
    else:
        print_plan(run_plan, ranks)
        print_fleet(fleet)
    raise typer.Exit(EXIT_PARTIAL if run_plan.rejected else EXIT_OK)


@app.command()
def simulate(
    manifest: ManifestArg,
    nodes: Annotated[int, typer.Option(min=1, help="Nodes in the fleet.")] = default.FLEET_NODES,
    gpus: Annotated[
        int, typer.Option("--gpus-per-node", "--gpus", min=1, help="GPUs per node.")
    ] = default.SIMULATE_GPUS_PER_NODE,
    gpu: Annotated[str, typer.Option(help="GPU type for the cost model: h100, a800 or rtx4090.")] = default.FLEET_GPU,
    as_json: Annotated[bool, typer.Option("--json", help="Print the simulation as JSON.")] = False,
    objective: ObjectiveOpt = default.OBJECTIVE,
    model_path: ModelPathOpt = None,
    models_file: ModelsFileOpt = None,
) -> None:
    """What a manifest will cost on a fleet, before it runs: the real planner and packer, then an event simulation.

    Prints makespan, its lower bound, GPU utilisation, padding and GPU-hours, and the same for the naive policy
    (one job per prompt, ulysses = GPUs per node), as single-prompt scripts do. No GPU is needed.
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
    """The manifest read and its images checked as `run` checks them (into a throwaway store: nothing runs)."""
    import tempfile

    from reelbatch.infra.images import configured_roots
    from reelbatch.manifest import ManifestError, ManifestLimits, check_columns, read_manifest
    from reelbatch.tasks.images import check_images

    manifest_limits = ManifestLimits(**limits)
    try:
        read = read_manifest(manifest, run_defaults, catalog, manifest_limits)
        check_columns(read, strict)
    except ManifestError as exc:
        values.fail(str(exc))
    print_warnings(read.warnings)
    with tempfile.TemporaryDirectory(prefix="reelbatch-plan-images-") as store:
        try:
            roots = [*configured_roots(), *(values.absolute(root) for root in image_roots)]
            return check_images(read, catalog, store, roots, manifest_limits)
        except ValueError as exc:  # an --image-root that cannot be a root
            values.fail(f"--image-root: {exc}")


def fleet_estimate(run_plan, nodes: int, gpus_per_node: int, gpu: str, storage: StorageKind) -> dict:
    """The plan's jobs played on the fleet by the simulator: wall time, GPU-hours, utilisation."""
    from reelbatch.planning.fleet.simulation import simulate_plan

    report = simulate_plan(run_plan, nodes=nodes, gpus_per_node=gpus_per_node, gpu=gpu, storage=storage)
    return {
        "nodes": nodes,
        "gpus_per_node": gpus_per_node,
        "gpu": report.gpu,
        "storage": storage,
        **report.packed.to_json(),
    }
