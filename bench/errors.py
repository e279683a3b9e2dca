"""One clear line and exit code 2 for bad input, whatever raised it."""

from __future__ import annotations

import sys

import click

from bench.results import ResultsError


def run_one_line(main, *args, **kwargs):
    """Run a click command's ``main`` so that every usage error prints one line, ``Error: ...``,
    and exits with code 2 (click's standalone mode prints the usage block first)."""
    kwargs["standalone_mode"] = False
    try:
        rv = main(*args, **kwargs)
    except click.UsageError as exc:
        hint = ""
        if exc.ctx is not None and isinstance(exc, click.NoSuchOption | click.BadOptionUsage):
            hint = f" (see '{exc.ctx.command_path} --help')"
        click.echo(f"Error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ResultsError as exc:  # a results file or folder failed during the run (full disk...)
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    if isinstance(rv, int) and rv:
        sys.exit(rv)
    sys.exit(0)


class BenchGroup(click.Group):
    """The ``bench`` group: usage errors print one line and exit with code 2
    (``run_one_line``)."""

    def main(self, *args, **kwargs):
        return run_one_line(super().main, *args, **kwargs)


def usage_error(message: str) -> click.UsageError:
    """The exception to raise for bad input: one line, exit code 2."""
    return click.UsageError(message)
