"""`reelbatch models list|show|build`: the model names a manifest may use and what each one does."""

from __future__ import annotations

import json
from typing import Annotated

import typer

import reelbatch.cli.values as values  # noqa: PLR0402 - `from reelbatch.cli import` would import the package: a cycle
from reelbatch.cli.app import models_app
from reelbatch.cli.options import ModelPathOpt, ModelsFileOpt
from reelbatch.cli.render import console, print_facts, print_models


@models_app.command("list")
def models_list(model_path: ModelPathOpt = None, models_file: ModelsFileOpt = None) -> None:
    """Model names a manifest may use, their pipeline class and what a row gives them."""
    catalog = values.catalog(model_path, models_file)
    rows = []
    for name in sorted(catalog.names()):
        try:
            family = catalog.family(name)
        except KeyError as exc:
            rows.append((name, "?", "?", "?", f"[red]{exc}[/]"))
            continue
        rows.append((name, family.pipeline_class, family.inputs(), str(family.heads), model_source(catalog, name)))
    print_models(rows)


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
    catalog = values.catalog(model_path, models_file)
    try:
        family = catalog.family(name)
    except KeyError as exc:
        values.fail(str(exc))
    facts = model_facts(family, model_source(catalog, name))
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    print_facts(name, facts)


@models_app.command("build")
def models_build() -> None:
    """Build the tiny models into the cache now (a run builds them on first use anyway)."""
    from reelbatch.models.tiny import TINY_BUILDERS, ensure_tiny_model

    for name in sorted(TINY_BUILDERS):
        console.print(f"{name}: {ensure_tiny_model(name)}")


def model_source(catalog, name: str) -> str:
    if name in catalog.paths:
        return catalog.paths[name]
    if catalog.family(name).builtin_tiny:
        return "built-in tiny (random weights)"
    return "registry (no folder: plan only)"


def model_facts(family, source: str) -> dict:
    """What `models show` prints (and --json returns) about one model family."""
    from reelbatch.models.pipelines import step_caches

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
        "guidance": "true CFG (true_cfg_scale) against the negative prompt"
        if family.true_cfg
        else "classifier-free guidance",
        "defaults (empty cells)": defaults,
        "parallel (native)": {
            "dp": "yes",
            "cfg": "yes (when guidance > 1)",
            "ulysses": "yes" if native.ulysses else "no",
            "ring": "CUDA only" if native.ring else "no",
        },
        "step caches": ", ".join(step_caches(family.pipeline_class)) or "none (cache column must stay empty)",
        "heads": family.heads,
        "pixels per token": family.pixels_per_token,
        "sizes": ", ".join(f"{h}x{w}" for h, w in sorted(family.allowed_sizes))
        if family.allowed_sizes
        else f"any multiple of {family.size_multiple}",
        "source": source,
    }
