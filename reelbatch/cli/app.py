"""The typer application every command module registers on, and the console script's entry point.

Exit codes (the same for every command): 0 all good; 1 some rows were rejected or some samples failed;
2 usage or file errors (nothing ran).
"""

from __future__ import annotations

import sys

import typer

from reelbatch.cli.render import console

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


def main(args: list[str] | None = None) -> None:
    """Run the command line (``args``: the arguments, default sys.argv). The commands are registered by
    importing the ``reelbatch.cli`` package, which every import of this module does first."""
    try:
        app(args=args)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
