"""``bench list``: the registered plugins, and with ``--describe`` their declared parameters."""

from __future__ import annotations

from typing import Any

import click

from bench.cli.common import main, translate_errors

#: Registries listed by ``bench list``.
KINDS = ("defenses", "attacks", "classifiers", "datasets", "backbones")


def describe_plugin(name: str, obj: Any) -> list[str]:
    """``name<TAB>first docstring line``, then one line per parameter (type with its allowed values,
    default) and one per cross-parameter rule: the declarations the job validator uses."""
    from bench.params import declared_parameters, describe_default, rules_of

    doc = (obj.__doc__ or "").strip().splitlines()
    lines = [f"{name}\t{doc[0] if doc else ''}"]
    params = declared_parameters(obj)
    width = max((len(p.name) for p in params), default=0)
    for p in params:
        lines.append(f"    {p.name:<{width}}  {p.type_text()}; {describe_default(p)}")
    lines += [f"    rule: {rule.text}" for rule in rules_of(obj) if rule.text]
    return lines


@main.command("list")
@click.argument("kind", type=click.Choice(KINDS))
@click.option("--describe", is_flag=True,
              help="Load each plugin and show its docstring's first line and its parameters: types with allowed "
                   "values, defaults, and rules over several parameters (what job files are checked against).")
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
            click.echo("\n".join(describe_plugin(name, reg.get(name))))
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide the others
            click.echo(f"{name}\t(cannot load: {exc})")
