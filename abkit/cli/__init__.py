"""The ``abkit`` command: one module per group of commands (:mod:`~abkit.cli.experiments`,
:mod:`~abkit.cli.servers`, :mod:`~abkit.cli.operations`), errors translated in
:mod:`~abkit.cli.base`.

Exit codes, for pipelines (:class:`~abkit.cli.base.ExitCode`, the one list of them): 0 success;
1 unexpected failure; 2 invalid input (bad file, bad argument); 3 not found; 4 refused by the
current state (e.g. changing a running experiment); 5 store unreachable or not migrated;
6 maintained statistics differ from a full recomputation. ``abkit wait`` adds its verdicts
(:mod:`~abkit.cli.wait`): 0 promoted, 10 rolled back, 11 stopped inconclusive, 12 paused or
held too long, 13 timed out.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from abkit import __version__
from abkit.cli.base import Context, errors
from abkit.cli.experiments import db, experiment, results_command
from abkit.cli.operations import (
    demo_command,
    forget_command,
    health,
    loadtest_command,
    prune_command,
)
from abkit.cli.servers import (
    grpc_command,
    loader_command,
    serve_command,
    web_command,
    worker_command,
)
from abkit.cli.wait import wait_command
from abkit.config import Settings


@click.group()
@click.version_option(__version__, prog_name="abkit")
@click.option(
    "--database-url",
    metavar="URL",
    help="Store URL (overrides ABKIT_DATABASE_URL; default sqlite:///abkit.db).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
@click.pass_context
def main(click_ctx: click.Context, database_url: str | None, verbose: bool) -> None:
    """abkit: A/B tests of ML model versions, from assignment to automatic promotion."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    with errors():
        settings = Settings.from_env()
        if database_url:
            settings = Settings(**{**_asdict(settings), "database_url": database_url})
    click_ctx.obj = Context(settings, verbose=verbose)


def _asdict(settings: Settings) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(settings, f.name) for f in fields(settings)}


for command in (
    db,
    experiment,
    results_command,
    wait_command,
    worker_command,
    grpc_command,
    loader_command,
    serve_command,
    web_command,
    demo_command,
    health,
    forget_command,
    prune_command,
    loadtest_command,
):
    main.add_command(command)


if __name__ == "__main__":  # pragma: no cover
    main()
