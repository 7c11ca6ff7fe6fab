"""``bench data fetch`` and ``bench data check``: the public data jobs read, fetched and verified.

The catalogue (``bench.artifacts.catalogue``) and the retry policy can be injected through click's context
object (``main(obj=FetchContext(...))``, e.g. ``CliRunner().invoke(main, args, obj=...)``), which is
how tests serve their own files without touching the published checksums.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import click

from bench.artifacts.catalogue import Catalogue, UnknownArtifactError, default_catalogue, human_size
from bench.artifacts.download import DownloadError, RetryPolicy
from bench.artifacts.install import DataDirError
from bench.artifacts.job import Need, job_needs, prepare
from bench.artifacts.layout import ArtifactState, DataLayout, fetch_command
from bench.artifacts.policy import FetchConfigError, FetchOptions, mirror_url
from bench.cli.common import BadInput, data_dir_option, main, model_dir_option, translate_errors

offline_option = click.option(
    "--offline", is_flag=True, default=False,
    help="Download nothing: a missing file is an error (exit 2) naming it and the command that fetches it. "
         "Also $BENCH_OFFLINE=1. Wins over a plugin's own allow_download/download switch.")
mirror_option = click.option(
    "--mirror", default=None, metavar="URL",
    help="Fetch every artifact from URL/<file name> instead of its upstream URL (http(s)://, file:// or a "
         "directory; air-gapped sites). Also $BENCH_MIRROR.")
what_option = click.option(
    "--what", default=None, metavar="NAME[,NAME...]",
    help="Catalogue artifacts to act on (cifar10, resnet20, resnet32, resnet44, resnet56) [default: all, "
         "or those of --job].")
job_option = click.option(
    "--job", type=click.Path(dir_okay=False), default=None,
    help="Act on the artifacts this job file reads (its dataset split and classifier weights).")


@dataclass(frozen=True)
class FetchContext:
    """What ``bench data`` and ``bench submit`` fetch with; None = the defaults (published catalogue,
    3 attempts with 2 s / 4 s back-off)."""

    catalogue: Catalogue | None = None
    retry: RetryPolicy | None = None


def fetch_context() -> FetchContext:
    """The :class:`FetchContext` given as click's context object, else the defaults."""
    ctx = click.get_current_context(silent=True)
    found = ctx.find_object(FetchContext) if ctx is not None else None
    return found or FetchContext()


def translate_fetch_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Bad values and unusable folders exit 2; failed downloads exit 1 with their message.

    (A missing file offline is a ``FileNotFoundError``: :func:`translate_errors` makes it exit 2.)
    """
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (UnknownArtifactError, FetchConfigError, DataDirError) as exc:
            raise BadInput(str(exc)) from exc
        except DownloadError as exc:
            raise click.ClickException(f"{exc}\nRe-run the command to try again (nothing invalid was kept), "
                                       "or use a mirror (--mirror / $BENCH_MIRROR).") from exc

    return wrapper


def fetch_options(offline: bool, mirror: str | None, progress: bool) -> FetchOptions:
    """:class:`bench.artifacts.policy.FetchOptions` from the flags, the environment and the context's retry policy."""
    return FetchOptions.resolve(offline, mirror, progress, fetch_context().retry)


def _names(what: str | None) -> list[str] | None:
    if what is None:
        return None
    names = [n.strip() for n in what.split(",") if n.strip()]
    if not names:
        raise BadInput("--what: give at least one artifact name, e.g. --what cifar10,resnet20")
    return names


def _selection(what: str | None, job: str | None, data_dir: str | None,
               model_dir: str | None) -> tuple[DataLayout, list[Need]]:
    """(layout, needs): ``--what`` artifacts in full plus ``--job``'s needs; everything when neither is given."""
    catalogue = fetch_context().catalogue or default_catalogue()
    layout = DataLayout.resolve(data_dir, model_dir)
    needs: list[Need] = []
    if job is not None:
        from bench.spec import load_job

        needs += job_needs(load_job(job, check_files=False), layout, catalogue)  # checkpoints may be trained later
    if what is not None or job is None:
        needs += [Need(a, layout, None, "") for a in catalogue.select(_names(what))]
    return layout, needs


def describe(state: ArtifactState) -> str:
    """One line: per top-level file or folder of the artifact, its path and how many files verify."""
    return "; ".join(state.summary())


def status_word(state: ArtifactState, split: str | None) -> str:
    """``verified`` (complete), ``ready`` (what ``split`` reads is there), ``corrupt`` (a file does not
    match its digest), ``partial`` (some files there) or ``missing``."""
    if state.complete:
        return "verified"
    if split is not None and state.ready_for(split):
        return "ready"
    if any(f.status == "corrupt" for f in state.files):
        return "corrupt"
    return "partial" if any(f.status == "verified" for f in state.files) else "missing"


@main.group("data")
def data_group() -> None:
    """Public data jobs read: CIFAR-10 and the akamaster ResNet weights, fetched and verified.

    Files go to the data directory (--data-dir > $BENCH_DATA_DIR > ~/.cache/bench/data); checkpoints to
    its weights/ folder (or --model-dir). Never to a folder a job names (classifier model_dir): that is
    only checked.
    """


@data_group.command("fetch")
@what_option
@job_option
@data_dir_option
@model_dir_option
@mirror_option
@offline_option
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@translate_errors
@translate_fetch_errors
def fetch_cmd(what: str | None, job: str | None, data_dir: str | None, model_dir: str | None, mirror: str | None,
              offline: bool, progress: bool) -> None:
    """Download what is missing (or does not verify), check it, and put it in place.

    A download goes to a staging file, is verified (MD5 for CIFAR-10, sha256 for the weights) and only
    then renamed; an interrupted or corrupted download leaves nothing under the final name, and
    re-running the command starts it again. Network errors are retried (3 attempts).
    """
    options = fetch_options(offline, mirror, progress)
    _, needs = _selection(what, job, data_dir, model_dir)
    prepare(needs, options, log=lambda m: click.echo(m, err=True))
    for need in needs:
        state = need.state()
        click.echo(f"{need.artifact.name:<9} {status_word(state, need.split):<9} {describe(state)}")


@data_group.command("check")
@what_option
@job_option
@data_dir_option
@model_dir_option
@mirror_option
@translate_errors
@translate_fetch_errors
def check_cmd(what: str | None, job: str | None, data_dir: str | None, model_dir: str | None,
              mirror: str | None) -> None:
    """List the artifacts, where they are and whether they verify (reads and checksums every file).

    Status: verified (every file there and matching its published digest), ready (what the job's split
    reads is there: e.g. cifar10_test.npz without the full release), partial, missing, corrupt. Exit
    code 0 when every artifact listed is verified (with --job: ready), 1 otherwise.
    """
    base = mirror_url(mirror)
    layout, needs = _selection(what, job, data_dir, model_dir)
    unready, failed = [], False
    for need in needs:
        state = need.state()
        word = status_word(state, need.split)
        click.echo(f"{need.artifact.name:<9} {word:<9} {describe(state)}")
        if word in ("verified", "ready"):
            continue
        failed = True
        if need.named_by:  # the job's own folder: never fetched into (bench.artifacts.job)
            click.echo(need.not_fetched_message(), err=True)
            continue
        unready.append(need.artifact)
        click.echo(f"{'':<20}download: {need.artifact.source_url(base)} ({human_size(need.artifact.size)})")
    if unready:
        click.echo(f"fetch with: {fetch_command(unready, layout)}", err=True)
    if failed:
        raise click.exceptions.Exit(1)
