"""The ``reelbatch`` command line (console script ``reelbatch.cli:main``).

`app` holds the typer application; each command module registers its commands on it when imported, which this
package does below, so importing ``reelbatch.cli`` gives the complete command line:

- plan: `plan`, `simulate` (nothing runs)
- run: `run`, `resume`
- runs: `runs`, `status`, `export`, `db upgrade`
- models: `models list|show|build`
- deployments: `submit`, `serve` (Prefect server)

`options` declares the shared options, `values` turns them into objects (bad ones exit 2), `render` prints.
"""

# Importing a command module registers its commands; this order is the order `reelbatch --help` lists them in.
from reelbatch.cli import plan, run, runs, deployments, models  # noqa: F401, I001
from reelbatch.cli.app import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, app, main

__all__ = ["EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "app", "main"]
