"""``bench list``: the registered plugins."""

from __future__ import annotations

import click

from bench.cli.common import main, translate_errors

#: Registries listed by ``bench list``.
KINDS = ("defenses", "attacks", "classifiers", "datasets", "backbones")


@main.command("list")
@click.argument("kind", type=click.Choice(KINDS))
@click.option("--describe", is_flag=True, help="Load each plugin and show the first line of its docstring.")
@translate_errors
def list_plugins(kind: str, describe: bool) -> None:
    """List the registered plugins of one KIND (built in and from entry points)."""
    from bench import registry

    reg = getattr(registry, kind.upper())
    for name in reg.names():
        if not describe:
            click.echo(name)
            continue
        try:
            doc = (reg.get(name).__doc__ or "").strip().splitlines()
            click.echo(f"{name}\t{doc[0] if doc else ''}")
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide the others
            click.echo(f"{name}\t(cannot load: {exc})")
