"""Options declared once and shared by the commands.

Single options are `Annotated` aliases (`DbOpt`, `GpusOpt`...). Options that travel together (the manifest's row
defaults, the planner's and the packer's settings) are groups: `@with_options(row=ROW_DEFAULTS)` gives a command
every option of the group, and the command receives them as one dict keyword argument, `row`. Defaults come from
`reelbatch.defaults`, which the flow and `resume` read too.
"""

from __future__ import annotations

import functools
import inspect
from typing import Annotated

import typer

from reelbatch import defaults

DB_HELP = (
    "Database URL (SQLAlchemy), e.g. sqlite:///reelbatch.db or postgresql+psycopg://user@host/db. "
    "Env: REELBATCH_DB_URL."
)
GPUS_HELP = "Ranks per node (GPUs; on a machine without CUDA, CPU processes). Default: visible CUDA GPUs, else 2."
# The kinds planning.cost.STORAGE_KINDS knows (a test keeps them in step; importing the planner here would slow
# down every command, --help included).
STORAGE_HELP = "Where the weights load from (load time per job): local or s3."

ManifestArg = Annotated[str, typer.Argument(help="Manifest CSV (UTF-8, header row, a `prompt` column).")]
RunIdArg = Annotated[str, typer.Argument(help="Run id, or a unique prefix of it (see `reelbatch runs`).")]
GpusOpt = Annotated[int | None, typer.Option("--gpus-per-node", "--gpus", min=1, help=GPUS_HELP)]
DbOpt = Annotated[str | None, typer.Option("--db", help=DB_HELP)]
ModelPathOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--model-path",
        help="NAME=DIR: a model name usable in the manifest, loaded from a local diffusers folder. Repeatable.",
    ),
]
ModelsFileOpt = Annotated[
    str | None, typer.Option("--models-file", help="JSON file {NAME: DIR} of local models. Env: REELBATCH_MODELS_FILE.")
]
ObjectiveOpt = Annotated[
    str,
    typer.Option(
        "--objective",
        help="throughput: most videos per GPU-hour; latency: each video as fast as possible.",
        rich_help_panel="Parallelism",
    ),
]
CompileOpt = Annotated[
    str,
    typer.Option(
        "--compile",
        help=(
            "torch.compile each job's transformer once for all its videos: auto (only jobs long enough to pay back "
            "the compile time, by the cost model), on or off."
        ),
        rich_help_panel="Speed",
    ),
]
FpsOpt = Annotated[
    int | None,
    typer.Option(
        "--fps", help="Frame rate of the written mp4 files. Empty: each model's own.", rich_help_panel="Row defaults"
    ),
]
RetryOpt = Annotated[
    str | None,
    typer.Option(
        "--retry-policy",
        help=(
            'JSON retries per failure class, e.g. {"rank_crash": {"max_attempts": 5, "backoff_s": 10}}; '
            "classes: oom, collective_timeout, rank_crash, timeout, bad_input, model_load, unknown."
        ),
    ),
]
MaxSamplesOpt = Annotated[int, typer.Option(min=1, help="Largest job, in samples.")]
StrictColumnsHelp = "Refuse the run if any row is bad or the manifest has a column reelbatch does not know."


def option(name: str, annotation, default=None) -> inspect.Parameter:
    """One option of a group: `name` is the keyword the command finds its value under."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def row_default(name: str, kind: type, flag: str, help: str, panel: str = "Row defaults") -> inspect.Parameter:
    """One option of ROW_DEFAULTS: empty (None) unless given, then the value for rows without that cell."""
    return option(name, Annotated[kind | None, typer.Option(flag, help=help, rich_help_panel=panel)])


# Values for the manifest's optional columns; the keys are RunDefaults' fields (`values.run_defaults(**row)`).
ROW_DEFAULTS = (
    row_default("model", str, "--model", "Default model for rows without one."),
    row_default("height", int, "--height", "Default height (multiple of 16)."),
    row_default("width", int, "--width", "Default width (multiple of 16)."),
    row_default("num_frames", int, "--frames", "Default frames per video (4k+1)."),
    row_default("num_inference_steps", int, "--steps", "Default denoising steps. Empty: each model's own default."),
    row_default(
        "guidance_scale",
        float,
        "--guidance",
        "Default CFG scale; <= 1 turns CFG off. Empty: each model's own default (`reelbatch models show NAME`).",
    ),
    row_default(
        "guidance_scale_2",
        float,
        "--guidance-2",
        "Default low-noise expert guidance of two-expert models (Wan 2.2 A14B); empty: the same as the guidance.",
    ),
    row_default(
        "embedded_guidance_scale",
        float,
        "--embedded-guidance",
        "Default distilled guidance of HunyuanVideo-family models with a guidance embedding.",
    ),
    row_default("negative_prompt", str, "--negative-prompt", "Default negative prompt."),
    row_default("num_videos", int, "--num-videos", "Default videos per row."),
    row_default(
        "sequence_batch",
        bool,
        "--sequence-batch/--no-sequence-batch",
        "Default: run CFG passes one after another (less memory, no CFG parallel).",
    ),
    row_default(
        "plan",
        str,
        "--plan",
        "Pin a parallel plan for every row without a `plan` cell, e.g. dp=2,cfg=2,ulysses=1,ring=1. "
        "Validated, never changed.",
        panel="Parallelism",
    ),
    row_default(
        "cache",
        str,
        "--cache",
        "Default step cache for rows without a cache cell: none, fbc or fbc:THRESHOLD (diffusers' FirstBlockCache; "
        "a higher threshold reuses more steps). Part of each video's identity.",
        panel="Speed",
    ),
    row_default(
        "backend",
        str,
        "--backend",
        "native (diffusers context parallel + reelbatch CFG/dp) or xdit (xfuser, CUDA only).",
        panel="Parallelism",
    ),
)

# What the planner may use and what it optimises, and which rows and images it accepts.
PLANNER = (
    option(
        "gpu_memory_gib",
        Annotated[
            float | None,
            typer.Option(
                "--gpu-memory-gib",
                min=1,
                help=(
                    f"Memory per GPU the planner may use (default {defaults.GPU_MEMORY_GIB:g}; `plan` for a fleet: "
                    "its --gpu type's memory)."
                ),
                rich_help_panel="Parallelism",
            ),
        ],
    ),
    option("objective", ObjectiveOpt, defaults.OBJECTIVE),
    option("compile", CompileOpt, defaults.COMPILE),
    option(
        "limit",
        Annotated[
            list[str] | None,
            typer.Option(
                "--limit",
                help=(
                    "NAME=N manifest limit (max_prompt_chars, max_rows, max_num_videos, max_frames, max_side, "
                    "max_steps, max_image_bytes, max_image_side, max_lora_bytes). Repeatable."
                ),
            ),
        ],
    ),
    option(
        "image_root",
        Annotated[
            list[str] | None,
            typer.Option(
                "--image-root",
                help=(
                    "A folder or URL prefix (s3://bucket/images/) that `image` / `last_image` cells may read from, "
                    "besides the manifest's own folder and REELBATCH_IMAGE_ROOTS (comma-separated); nothing else is "
                    "read. Repeatable."
                ),
                rich_help_panel="Inputs",
            ),
        ],
    ),
)

# How samples are cut into jobs (`values.packing(**packing)`).
PACKING = (
    option(
        "job_minutes",
        Annotated[
            float,
            typer.Option(
                "--job-minutes",
                min=0.01,
                help=(
                    "Target wall time of one job, model load included; small manifests get shorter jobs so every GPU "
                    "has work."
                ),
                rich_help_panel="Packing",
            ),
        ],
        defaults.JOB_MINUTES,
    ),
    option(
        "padding",
        Annotated[
            str,
            typer.Option(
                "--padding",
                help=(
                    "pad: padded slots are computed and thrown away; fill: they generate extra seeds of the bucket's "
                    "prompts (free videos)."
                ),
                rich_help_panel="Packing",
            ),
        ],
        defaults.PADDING,
    ),
    option(
        "job_width",
        Annotated[
            str,
            typer.Option(
                "--job-width",
                help=(
                    "group: each job gets one sample's GPU group and jobs run side by side on a node; node: a job "
                    "spans the node with the plan's data parallel degree."
                ),
                rich_help_panel="Packing",
            ),
        ],
        defaults.JOB_WIDTH,
    ),
    option(
        "no_pack",
        Annotated[
            bool,
            typer.Option(
                "--no-pack",
                help=(
                    "Keep one plan per bucket cut into jobs of at most --max-samples-per-job (the pre-packing "
                    "behaviour)."
                ),
                rich_help_panel="Packing",
            ),
        ],
        False,
    ),
)

# How `run` and `resume` report while and after they run; the keys are cli.progress.RunOutput's fields.
LOG_OUTPUT = (
    option(
        "quiet",
        Annotated[
            bool,
            typer.Option(
                "--quiet",
                "-q",
                help="No progress bars or lines: only the final report, warnings and errors.",
                rich_help_panel="Output",
            ),
        ],
        False,
    ),
    option(
        "log_format",
        Annotated[
            defaults.LogFormat,
            typer.Option(
                "--log-format",
                help=(
                    "text: progress bars at a terminal, else a line per finished job and every --log-interval; "
                    "json: each progress line and the final report as one JSON object per line on stdout."
                ),
                rich_help_panel="Output",
            ),
        ],
        defaults.LOG_FORMAT,
    ),
    option(
        "interval_s",
        Annotated[
            float,
            typer.Option(
                "--log-interval",
                min=1,
                metavar="SECONDS",
                help="Away from a terminal (or with --log-format json), a progress line at least this often.",
                rich_help_panel="Output",
            ),
        ],
        defaults.PROGRESS_LOG_INTERVAL_S,
    ),
)


def with_options(**groups: tuple[inspect.Parameter, ...]):
    """Give a command the options of `groups`; it receives each group as a dict under the group's keyword.

    typer reads a command's options from its signature, so the wrapper shows typer the command's signature with
    each group's keyword replaced by the group's options (`--help` lists them there), and folds their values
    back into one dict per group on the call. typer passes every value by keyword, so all parameters may be
    keyword-only, which lets options with and without defaults mix in any order.
    """

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        shown: list[inspect.Parameter] = []
        for name, parameter in signature.parameters.items():
            shown.extend(groups[name] if name in groups else [parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)])

        @functools.wraps(command)
        def with_groups(**values):
            for keyword, group in groups.items():
                values[keyword] = {p.name: values.pop(p.name) for p in group}
            return command(**values)

        with_groups.__signature__ = signature.replace(parameters=shown)  # type: ignore[attr-defined]  # read by typer
        return with_groups

    return decorate
