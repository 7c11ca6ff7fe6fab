"""What a job reads from disk before any task starts, and getting it there on the driver (``bench submit``).

A job needs, from the catalogue (``bench.artifacts.catalogue``):

- its dataset: ``cifar10`` for the split it reads (the test split is satisfied by a verified
  ``cifar10_test.npz``, or by the verified release when there is no npz);
- its classifier, when that is one of the catalogue's checkpoints (``resnet20`` ... ``resnet56``)
  without a ``checkpoint:`` of its own: in the classifier's ``model_dir:`` if the job sets one, else in
  the layout's weights folder (``--model-dir``, or ``<data dir>/weights``), where the loader looks.

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
    """

    artifact: Artifact
    layout: DataLayout
    split: str | None
    reason: str

    def state(self) -> ArtifactState:
        """What of the artifact is on disk now (verifies the files)."""
        return inspect(self.artifact, self.layout)

    def ready(self) -> bool:
        """The files the job reads are present and verified."""
        return self.state().ready_for(self.split)


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
        where = layout if own_dir is None else DataLayout(layout.root, Path(own_dir).expanduser())
        needs.append(Need(catalogue.get(name), where, None, f"classifier {name}"))
    return needs


def prepare(needs: list[Need], options: FetchOptions, *, log: Log = lambda message: None) -> list[ArtifactState]:
    """Make every need ready: fetch what is missing, or, offline, fail listing all of it at once.

    Raises:
        bench.artifacts.install.OfflineError: offline and something needs a download (exit code 2 in the CLI).
        bench.artifacts.download.DownloadError: a download failed.
    """
    pending = [need for need in needs if not need.ready()]
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
