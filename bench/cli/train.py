"""``bench train``: training commands from other modules, imported only when used."""

from __future__ import annotations

import importlib
from typing import Any

import click

from bench.cli.common import main

#: ``bench train`` subcommands: name -> "module:attribute" of a click command, imported on use.
TRAIN_COMMANDS = {
    "denoiser": "bench.training.denoiser:cli",
    "irad": "bench.training.irad:cli",
    "sar": "bench.training.sar:cli",
}


class LazyGroup(click.Group):
    """A group whose subcommands are ``"module:attr"`` click commands imported on first use, so a
    training module that is missing or broken does not break the others (shown as unavailable)."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.lazy:
            return super().get_command(ctx, name)
        module_name, _, attr = self.lazy[name].partition(":")
        try:
            command = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            return _unavailable(name, f"{self.lazy[name]} cannot be loaded: {exc}")
        if not isinstance(command, click.Command):
            return _unavailable(name, f"{self.lazy[name]} is not a click command")
        return command


def _unavailable(name: str, reason: str) -> click.Command:
    def fail() -> None:
        raise click.ClickException(reason)

    return click.Command(name, callback=fail, help=f"(unavailable: {reason})", short_help="(unavailable)")


@main.group("train", cls=LazyGroup, lazy=TRAIN_COMMANDS)
def train() -> None:
    """Train the models some defenses need (denoiser, IRAD, SAR)."""
