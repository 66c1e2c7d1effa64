"""`reelbatch run` and `resume` on SIGTERM or SIGINT: a clean stop, then exit 143 or 130 (see ``infra.shutdown``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.markup import escape

from reelbatch.cli.render import console
from reelbatch.infra import shutdown


@contextlib.contextmanager
def stopping_cleanly() -> Iterator[None]:
    """Run the block with the stop signals handled. Once one came, whatever the block raised or returned, the
    command says which run to resume and exits 128 + the signal; leaving, Prefect's exit hooks stop its ephemeral
    server, and a second signal meanwhile ends the process at once (the handlers stay installed until then)."""
    with shutdown.handling_signals(restore_after_stop=False):
        try:
            yield
        except BaseException:
            if not shutdown.stopping.is_set():
                raise
        if not shutdown.stopping.is_set():
            return
        shutdown.clear_echo()  # from here on any signal is a second one
        console.print(f"[bold yellow]{escape(shutdown.stop_message())}[/]", highlight=False, soft_wrap=True)
        raise typer.Exit(shutdown.exit_code())
