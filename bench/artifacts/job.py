"""What a job reads from disk before any task starts, and getting it there on the driver (``bench submit``).

A job needs, from the catalogue (``bench.artifacts.catalogue``):

- its dataset: ``cifar10`` for the split it reads (the test split is satisfied by a verified
  ``cifar10_test.npz``, or by the verified release when there is no npz);
- its classifier, when that is one of the catalogue's checkpoints (``resnet20`` ... ``resnet56``)
  without a ``checkpoint:`` of its own: in the classifier's ``model_dir:`` if the job sets one, else in
  the layout's weights folder (``--model-dir``, or ``<data dir>/weights``), where the loader looks.

Nothing a job says decides where bench writes: files are fetched only into the folders chosen on the
command line or in the environment (``--data-dir``, ``--model-dir``, ``$BENCH_DATA_DIR``,
``$BENCH_MODEL_DIR``, the defaults). A folder the job names itself (``classifier.model_dir``) is only
read: a file missing there, or not verifying, is a :class:`JobFolderError` naming the file, the field and
the command that fetches it into a folder the user chooses.

Everything else a job reads (user checkpoints, RobustBench zoo files, diffusion backbones) is checked
by building it once on the driver (``bench.api.submit``), not fetched from the catalogue.

Where this runs: on the driver, before submission, never in a Ray worker, so a cluster of many nodes
does not download the same files many times. The driver sees the files the workers read when it runs
on the cluster: a local instance, ``auto``, a ``HOST:PORT`` GCS address (a driver started by
``ray job submit`` runs on the head node, with ``RAY_ADDRESS`` set to such an address). A ``ray://``
client runs on another machine: :func:`driver_sees_cluster_files` is False and nothing is checked or
fetched there (fetch on the cluster first: ``ray job submit -- bench data fetch --job JOB``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from bench.artifacts.catalogue import Artifact, Catalogue, default_catalogue
from bench.artifacts.install import install, require_offline
from bench.artifacts.layout import ArtifactState, DataLayout, inspect
from bench.artifacts.policy import FetchOptions

if TYPE_CHECKING:
    from bench.spec import JobSpec


class JobFolderError(FileNotFoundError):
    """A file the job reads from a folder it names itself is missing or does not verify (bench never
    writes there); exit code 2 in the CLI."""

Log = Callable[[str], None]

#: dataset plugin name -> catalogue artifact holding its files
DATASET_ARTIFACTS = {"cifar10": "cifar10"}


@dataclass(frozen=True)
class Need:
    """One catalogue artifact a job reads.

    Attributes:
        artifact: The catalogue entry.
        layout: Where the job's plugins look for it.
        split: The CIFAR-10 split read (``test``/``train``); None for a checkpoint.
        reason: For messages, e.g. ``classifier resnet20`` ("" when asked for by name).
        named_by: ``"<job file>: classifier.model_dir"`` when the job itself names the folder: then the
            files are only checked there, never fetched into it. "" for folders the user chose.
    """

    artifact: Artifact
    layout: DataLayout
    split: str | None
    reason: str
    named_by: str = ""

    def state(self) -> ArtifactState:
        """What of the artifact is on disk now (verifies the files)."""
        return inspect(self.artifact, self.layout)

    def ready(self) -> bool:
        """The files the job reads are present and verified."""
        return self.state().ready_for(self.split)

    def not_fetched_message(self) -> str:
        """For a need whose folder the job names: what is wrong there and how to fetch it elsewhere."""
        state = self.state()
        name = self.artifact.name
        return (f"{self.named_by}: {'; '.join(state.summary())}. bench fetches files only into folders chosen on the "
                f"command line or in the environment, never into one a job names. Fix: run `bench data fetch --what "
                f"{name} --model-dir DIR` with a folder DIR of your choice and set model_dir to DIR, or remove "
                "model_dir from the job to use --model-dir / $BENCH_MODEL_DIR / <data dir>/weights")


def job_needs(spec: "JobSpec", layout: DataLayout, catalogue: Catalogue | None = None) -> list[Need]:
    """The catalogue artifacts ``spec`` reads, with where it reads them.

    Args:
        spec: A validated job (``bench.spec.load_job``).
        layout: The data directory and weights folder of the run (``DataLayout.resolve``).
        catalogue: Default: the published catalogue.
    """
    from bench.classifiers import parse_spec

    catalogue = catalogue or default_catalogue()
    needs = []
    dataset_artifact = DATASET_ARTIFACTS.get(spec.dataset.name)
    if dataset_artifact in catalogue.names():
        needs.append(Need(catalogue.get(dataset_artifact), layout, spec.dataset.split,
                          f"dataset {spec.dataset.name} ({spec.dataset.split} split)"))
    name, params = parse_spec(spec.classifier.config())
    if name in catalogue.names() and catalogue.get(name).kind == "checkpoint" \
            and params.get("checkpoint") is None and params.get("pretrained", True):
        own_dir = params.get("model_dir")
        if own_dir is None:
            needs.append(Need(catalogue.get(name), layout, None, f"classifier {name}"))
        else:
            needs.append(Need(catalogue.get(name), DataLayout(layout.root, _job_folder(spec, own_dir)), None,
                              f"classifier {name}", named_by=f"{spec.path}: classifier.model_dir"))
    return needs


def _job_folder(spec: "JobSpec", value: object) -> Path:
    from bench.params import user_path
    from bench.spec import JobSpecError

    try:
        return user_path(str(value))
    except ValueError as exc:  # loaded without file checks (`bench data fetch --job`): reported here
        raise JobSpecError(spec.path, "classifier.model_dir", str(exc)) from None


def prepare(needs: list[Need], options: FetchOptions, *, log: Log = lambda message: None) -> list[ArtifactState]:
    """Make every need ready: fetch what is missing, or, offline, fail listing all of it at once.

    A need whose folder the job names (:attr:`Need.named_by`) is never fetched: when it is not ready,
    :class:`JobFolderError` is raised before anything is downloaded.

    Raises:
        JobFolderError: a file is missing or does not verify in a folder the job names (exit code 2).
        bench.artifacts.install.OfflineError: offline and something needs a download (exit code 2 in the CLI).
        bench.artifacts.download.DownloadError: a download failed.
    """
    pending = [need for need in needs if not need.ready()]
    unfetchable = [need.not_fetched_message() for need in pending if need.named_by]
    if unfetchable:
        raise JobFolderError("\n".join(unfetchable))
    if options.offline:
        for layout in dict.fromkeys(need.layout for need in pending):
            group = [need for need in pending if need.layout == layout]
            require_offline([n.artifact for n in group], layout, {n.artifact.name: n.split for n in group},
                            {n.artifact.name: n.reason for n in group})
    return [install(need.artifact, need.layout, options, log=log) for need in pending]


def driver_sees_cluster_files(address: str | None) -> bool:
    """Whether this process reads the files the cluster's workers read (see the module docstring).

    Args:
        address: ``--address`` (None: ``$RAY_ADDRESS``, else a local instance).
    """
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    return not target.startswith("ray://")


def classifier_model_dir(data_dir: str | os.PathLike | None, model_dir: str | os.PathLike | None) -> Path | None:
    """The default ``model_dir`` the workers hand the classifier loaders (``bench.worker.run_task``'s
    rule): ``model_dir``, else ``<data_dir>/weights`` when that folder exists, else None."""
    if model_dir is not None:
        return Path(model_dir)
    if data_dir is not None and (Path(data_dir) / "weights").is_dir():
        return Path(data_dir) / "weights"
    return None
