"""Fetching the public data (bench.artifacts.catalogue, bench.artifacts.download, bench.artifacts.install, bench.artifacts.job, `bench data`).

Nothing here touches the internet: the files come from a loopback HTTP server (tests/artifact_server.py)
serving the real akamaster checkpoints of the shared data directory and a CIFAR-10 python release
rebuilt from the real test split. That release's files cannot have the published MD5s (the originals
are Python 2 pickles with file names we do not have), so the tests hand the fetch functions a catalogue
with the rebuilt files' digests (Catalogue.replace; the CLI takes it as click's context object); the
default catalogue is checked against the published values separately. The test split's content digest
(the MD5 of the official test_batch.bin records) is the published one in both.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from artifact_server import ArtifactServer, cifar10_release_files, md5, tar_gz
from bench.artifacts.catalogue import CIFAR10_TEST_RECORDS_MD5, Checksum, InstalledFile, default_catalogue
from bench.artifacts.download import ChecksumMismatchError, RetryPolicy, TransferError
from bench.artifacts.install import fetch
from bench.artifacts.job import driver_sees_cluster_files
from bench.artifacts.layout import DataLayout, inspect
from bench.artifacts.policy import FetchOptions, mirror_url, offline_mode
from bench.cli import main
from bench.cli.data import FetchContext
from bench.datasets import CIFAR10, DatasetNotFoundError
from bench.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
FAST = RetryPolicy(attempts=3, backoff_seconds=0.0, timeout_seconds=20.0)
ARCHIVE = "cifar-10-python.tar.gz"
RESNETS = {"resnet20": "resnet20-12fca82f.th", "resnet32": "resnet32-d509ac18.th",
           "resnet44": "resnet44-014dd654.th", "resnet56": "resnet56-4bfd9763.th"}

JOB = """\
name: fetch-test
dataset: {name: cifar10, split: test, subset: {size: 512, seed: 0, take: 4}}
classifier: resnet20
threat: {norm: Linf, eps: 8/255}
seeds: [0]
votes: 1
shard_size: 4
defenses: [none]
attacks: []
"""


@pytest.fixture(autouse=True)
def online(monkeypatch):
    """Downloads on (conftest turns them off for every other test); no mirror unless a test sets one."""
    monkeypatch.setenv("BENCH_OFFLINE", "0")
    monkeypatch.delenv("BENCH_MIRROR", raising=False)


@pytest.fixture(scope="module")
def test_split(data_dir):
    with np.load(data_dir / "cifar10_test.npz") as arrays:
        return arrays["x"], arrays["y"]


@pytest.fixture(scope="module")
def release(test_split):
    """The rebuilt release: archive bytes and the MD5 of each member. The archive also holds a file
    outside the catalogue's list and one whose path climbs out of the extraction folder."""
    members = cifar10_release_files(*test_split, CIFAR10.classes)
    archive = tar_gz({**{f"cifar-10-batches-py/{n}": b for n, b in members.items()},
                      "cifar-10-batches-py/readme.html": b"<html></html>", "../outside.txt": b"escaped"})
    return archive, {name: md5(data) for name, data in members.items()}


@pytest.fixture(scope="module")
def catalogue(release):
    archive, member_md5 = release
    installed = tuple(InstalledFile(f"cifar-10-batches-py/{n}", Checksum("md5", d)) for n, d in member_md5.items())
    installed += (InstalledFile("cifar10_test.npz", Checksum("cifar10-records-md5", CIFAR10_TEST_RECORDS_MD5)),)
    return default_catalogue().replace("cifar10", checksum=Checksum("md5", md5(archive)), size=len(archive),
                                       installed=installed)


@pytest.fixture
def server(release, data_dir):
    files = {ARCHIVE: release[0], **{f: (data_dir / "weights" / f).read_bytes() for f in RESNETS.values()}}
    with ArtifactServer(files) as running:
        yield running


def options(server: ArtifactServer, **changes) -> FetchOptions:
    return FetchOptions(**{"mirror": server.url, "progress": False, "retry": FAST, **changes})


def leftovers(folder: Path) -> list[str]:
    """Files that are neither installed artifacts nor lock files: staging and partial downloads."""
    return sorted(p.name for p in folder.rglob("*") if ".partial" in p.name or ".download" in p.name
                  or p.name.startswith(".cifar10-unpack"))


def invoke(args: list[str], catalogue) -> object:
    return CliRunner().invoke(main, args, obj=FetchContext(catalogue, FAST))


# -- the default catalogue is the published one -----------------------------------------------------
def test_default_catalogue_has_the_published_sources_and_digests(data_dir):
    from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

    catalogue = default_catalogue()
    assert catalogue.names() == ["cifar10", *RESNETS]
    cifar = catalogue.get("cifar10")
    assert cifar.url == TorchvisionCIFAR10.url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert cifar.checksum == Checksum("md5", "c58f30108f718f92721af3b95e74349a") and cifar.size == 170_498_071
    assert {Path(f.path).name: f.checksum.digest for f in cifar.installed if f.checksum.algorithm == "md5"} == dict(
        [*TorchvisionCIFAR10.train_list, *TorchvisionCIFAR10.test_list,
         [TorchvisionCIFAR10.meta["filename"], TorchvisionCIFAR10.meta["md5"]]])
    layout = DataLayout.resolve(data_dir)
    for name, file_name in RESNETS.items():
        artifact = catalogue.get(name)
        assert artifact.url == f"https://raw.githubusercontent.com/akamaster/pytorch_resnet_cifar10/master/pretrained_models/{file_name}"
        # the prefix in the published name starts the full digest we check, and the real files match
        assert artifact.checksum.digest.startswith(file_name.split("-")[1][:8])
        assert artifact.size == (data_dir / "weights" / file_name).stat().st_size
        assert inspect(artifact, layout).complete
    # the shared test split has the published content digest (MD5 of the official test_batch.bin)
    npz_state = inspect(cifar, layout).group("cifar10_test.npz")
    assert [f.status for f in npz_state] == ["verified"]
    assert cifar.source_url("http://mirror.example/bench/") == "http://mirror.example/bench/cifar-10-python.tar.gz"


def test_a_modified_test_split_does_not_verify(tmp_path, test_split):
    x, y = test_split
    x = x.copy()
    x[1234, 5, 6, 0] ^= 1  # one bit of one pixel
    np.savez(tmp_path / "cifar10_test.npz", x=x, y=y)
    (state,) = inspect(default_catalogue().get("cifar10"), DataLayout.resolve(tmp_path)).group("cifar10_test.npz")
    assert state.status == "corrupt"


def test_a_truncated_test_split_is_reported_as_damaged(tmp_path, server, catalogue, data_dir):
    """A cut-off cifar10_test.npz (not a zip any more) is `corrupt` with the fetch command, exit 2
    offline, a DatasetNotFoundError from the loader, and replaced by `bench data fetch`."""
    npz = tmp_path / "cifar10_test.npz"
    npz.write_bytes((data_dir / "cifar10_test.npz").read_bytes()[:100_000])
    check = invoke(["data", "check", "--what", "cifar10", "--data-dir", str(tmp_path)], catalogue)
    assert check.exit_code == 1 and isinstance(check.exception, SystemExit), repr(check.exception)
    assert f"{npz} corrupt" in check.output and f"bench data fetch --what cifar10 --data-dir {tmp_path}" in check.output
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    offline = invoke(["submit", str(job), "--address", "serial", "--data-dir", str(tmp_path), "--results",
                      str(tmp_path / "r"), "--offline"], catalogue)
    assert offline.exit_code == 2 and isinstance(offline.exception, SystemExit), repr(offline.exception)
    assert str(npz) in offline.output and "bench data fetch --what cifar10" in offline.output
    with pytest.raises(DatasetNotFoundError, match="is damaged .*bench data fetch --what cifar10"):
        len(CIFAR10(root=tmp_path))
    fetched = invoke(["data", "fetch", "--what", "cifar10", "--data-dir", str(tmp_path), "--mirror", server.url,
                      "--no-progress"], catalogue)
    assert fetched.exit_code == 0 and "cifar10   verified" in fetched.output, fetched.output


# -- fetching ---------------------------------------------------------------------------------------
def test_fetch_into_an_empty_directory_then_a_job_runs(tmp_path, server, catalogue, release, test_split):
    data, results = tmp_path / "data", tmp_path / "results"
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    server.drop(ARCHIVE, times=1, after=len(release[0]) // 2)  # the first archive transfer breaks off
    result = invoke(["submit", str(job), "--address", "serial", "--data-dir", str(data), "--results", str(results),
                     "--mirror", server.url, "--no-progress"], catalogue)
    assert result.exit_code == 0, result.output
    assert dict(server.requests) == {ARCHIVE: 2, RESNETS["resnet20"]: 1}
    assert "attempt 1/3" in result.output and "ran now, 0 failed" in result.output

    # what is on disk: the verified release, the test split, the weights; no archive, no staging files,
    # nothing outside the list (readme.html) and nothing outside the folder (../outside.txt)
    assert sorted(p.name for p in data.iterdir() if not p.name.startswith(".")) == [
        "cifar-10-batches-py", "cifar10_test.npz", "weights"]
    assert sorted(p.name for p in (data / "cifar-10-batches-py").iterdir()) == sorted(release[1])
    assert [p.name for p in (data / "weights").glob("*.th")] == [RESNETS["resnet20"]]
    assert leftovers(data) == [] and not (tmp_path / "outside.txt").exists() and not (data / "outside.txt").exists()
    with np.load(data / "cifar10_test.npz") as written:
        assert np.array_equal(written["x"], test_split[0]) and np.array_equal(written["y"], test_split[1])

    rows = ResultStore(results).read_run("fetch-test").to_pandas()
    assert len(rows) == 4 and (rows.label.to_numpy() == test_split[1][rows.image_id.to_numpy()]).all()

    # everything is there: offline re-submits and checks need nothing more
    again = invoke(["submit", str(job), "--address", "serial", "--data-dir", str(data), "--results", str(results),
                    "--offline", "--no-progress"], catalogue)
    assert again.exit_code == 0 and "1 already done, 0 ran now" in again.output
    check = invoke(["data", "check", "--data-dir", str(data), "--what", "cifar10,resnet20"], catalogue)
    assert check.exit_code == 0, check.output
    assert check.output.split()[:2] == ["cifar10", "verified"] and "resnet20  verified" in check.output
    assert sum(server.requests.values()) == 3


def test_an_interrupted_transfer_is_retried_and_finally_given_up(tmp_path, server, catalogue):
    layout, lines = DataLayout.resolve(tmp_path), []
    server.drop(RESNETS["resnet20"], times=1, after=300_000)
    (state,) = fetch(["resnet20"], layout, options(server), catalogue=catalogue, log=lines.append)
    assert state.complete and server.requests[RESNETS["resnet20"]] == 2
    assert any("attempt 1/3" in line and "300000 of 1099231 bytes" in line for line in lines)

    server.drop(RESNETS["resnet32"], times=3, after=1000)
    with pytest.raises(TransferError, match="after 3 attempts"):
        fetch(["resnet32"], layout, options(server), catalogue=catalogue)
    assert server.requests[RESNETS["resnet32"]] == 3
    assert not (tmp_path / "weights" / RESNETS["resnet32"]).exists() and leftovers(tmp_path) == []


def test_a_corrupted_file_fails_its_checksum_and_is_not_kept(tmp_path, server, catalogue):
    name = RESNETS["resnet20"]
    damaged = bytearray(server.files[name])
    damaged[len(damaged) // 2] ^= 0xFF
    server.files[name] = bytes(damaged)
    with pytest.raises(ChecksumMismatchError, match="expected 12fca82f0beb"):
        fetch(["resnet20"], DataLayout.resolve(tmp_path), options(server), catalogue=catalogue)
    assert server.requests[name] == 1  # complete but wrong: the source is wrong, asking again will not help
    assert list((tmp_path / "weights").glob("resnet20*")) == [] and leftovers(tmp_path) == []

    # a corrupted archive: its MD5 fails, nothing is unpacked
    server.files[ARCHIVE] = server.files[ARCHIVE][:-10] + b"0123456789"
    result = invoke(["data", "fetch", "--what", "cifar10", "--data-dir", str(tmp_path), "--mirror", server.url,
                     "--no-progress"], catalogue)
    assert result.exit_code == 1 and "md5" in result.output and "deleted" in result.output
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["weights"]


def test_a_corrupt_local_file_is_reported_and_replaced(tmp_path, server, catalogue):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / RESNETS["resnet20"]).write_bytes(b"not the checkpoint")
    check = invoke(["data", "check", "--what", "resnet20", "--data-dir", str(tmp_path)], catalogue)
    assert check.exit_code == 1 and "resnet20  corrupt" in check.output
    assert f"download: {default_catalogue().get('resnet20').url}" in check.output
    fetched = invoke(["data", "fetch", "--what", "resnet20", "--data-dir", str(tmp_path), "--mirror", server.url,
                      "--no-progress"], catalogue)
    assert fetched.exit_code == 0, fetched.output
    assert "replacing a corrupt copy" in fetched.output and "resnet20  verified" in fetched.output


def test_an_archive_copied_by_hand_installs_offline_and_replaces_a_corrupt_release(tmp_path, release, catalogue):
    # an air-gapped machine: the archive was copied into the data directory; a broken unpack lies there
    (tmp_path / ARCHIVE).write_bytes(release[0])
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"half a file")
    lines = []
    (state,) = fetch(["cifar10"], DataLayout.resolve(tmp_path), FetchOptions(offline=True, progress=False),
                     catalogue=catalogue, log=lines.append)
    assert state.complete and any("replacing" in line for line in lines)
    assert (tmp_path / ARCHIVE).read_bytes() == release[0]  # the user's file is kept
    assert leftovers(tmp_path) == []


def test_concurrent_fetches_download_once(tmp_path, server, catalogue):
    layout, errors = DataLayout.resolve(tmp_path), []

    def run() -> None:
        try:
            fetch(["resnet56"], layout, options(server), catalogue=catalogue)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and server.requests[RESNETS["resnet56"]] == 1
    assert inspect(catalogue.get("resnet56"), layout).complete


# -- offline, mirrors, where the check runs -----------------------------------------------------------
@pytest.mark.parametrize("how", ["flag", "env"])
def test_offline_with_a_missing_file_exits_2_naming_it(tmp_path, server, catalogue, monkeypatch, how):
    job, data = tmp_path / "job.yaml", tmp_path / "data"
    job.write_text(JOB)
    args = ["submit", str(job), "--address", "serial", "--data-dir", str(data), "--results", str(tmp_path / "r"),
            "--mirror", server.url]
    if how == "flag":
        args.append("--offline")
    else:
        monkeypatch.setenv("BENCH_OFFLINE", "1")
    result = invoke(args, catalogue)
    assert result.exit_code == 2, result.output
    assert str(data / "cifar10_test.npz") in result.output and str(data / "weights" / RESNETS["resnet20"]) in result.output
    assert f"bench data fetch --what cifar10,resnet20 --data-dir {data}" in result.output
    assert sum(server.requests.values()) == 0 and not (tmp_path / "r").exists()


def test_a_job_never_decides_where_files_are_written(tmp_path, server, catalogue, data_dir):
    """classifier.model_dir is only read: a missing checkpoint there is exit 2 naming the file, the field
    and the fetch command; nothing is created or downloaded, whether the folder exists or not."""
    job, chosen = tmp_path / "job.yaml", tmp_path / "chosen"
    absent, existing = tmp_path / "outside" / "deep" / "dir", tmp_path / "etc"
    existing.mkdir()
    for folder, command in ((absent, ["data", "fetch", "--job", str(job), "--no-progress"]),
                            (existing, ["data", "fetch", "--job", str(job), "--no-progress"]),
                            (existing, ["submit", str(job), "--address", "serial", "--results", str(tmp_path / "r"),
                                        "--no-progress"])):
        job.write_text(JOB.replace("classifier: resnet20", f"classifier: {{name: resnet20, model_dir: {folder}}}"))
        result = invoke([*command, "--data-dir", str(data_dir), "--mirror", server.url], catalogue)
        assert result.exit_code == 2, result.output
        assert f"{job}: classifier.model_dir: {folder / RESNETS['resnet20']} missing" in result.output
        assert "bench data fetch --what resnet20 --model-dir DIR" in result.output
    assert not (tmp_path / "outside").exists() and list(existing.iterdir()) == []
    assert sum(server.requests.values()) == 0 and not (tmp_path / "r").exists()

    # fetched into a folder the user chose, the job's model_dir reads it
    fetched = invoke(["data", "fetch", "--what", "resnet20", "--model-dir", str(chosen), "--data-dir", str(data_dir),
                      "--mirror", server.url, "--no-progress"], catalogue)
    assert fetched.exit_code == 0, fetched.output
    job.write_text(JOB.replace("classifier: resnet20", f"classifier: {{name: resnet20, model_dir: {chosen}}}"))
    check = invoke(["data", "check", "--job", str(job), "--data-dir", str(data_dir)], catalogue)
    assert check.exit_code == 0 and "resnet20  verified" in check.output, check.output


def test_the_check_runs_before_submission_for_a_cluster_address(tmp_path, catalogue):
    # HOST:PORT is a driver on the cluster (e.g. under `ray job submit`): its data is checked here,
    # before any connection to Ray (nothing listens on port 9).
    job = tmp_path / "job.yaml"
    job.write_text(JOB)
    result = invoke(["submit", str(job), "--address", "127.0.0.1:9", "--data-dir", str(tmp_path / "data"),
                     "--results", str(tmp_path / "r"), "--offline"], catalogue)
    assert result.exit_code == 2 and "resnet20-12fca82f.th" in result.output and "Ray at" not in result.output


def test_driver_sees_cluster_files(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for address in (None, "local", "serial", "auto", "10.0.0.1:6379"):
        assert driver_sees_cluster_files(address)
    assert not driver_sees_cluster_files("ray://10.0.0.1:10001")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert not driver_sees_cluster_files(None) and driver_sees_cluster_files("local")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # what `ray job submit` gives its entrypoint
    assert driver_sees_cluster_files(None)


def test_the_mirror_variable_and_option_are_honoured(tmp_path, server, catalogue, monkeypatch, data_dir):
    monkeypatch.setenv("BENCH_MIRROR", server.url)
    result = invoke(["data", "fetch", "--what", "resnet32", "--data-dir", str(tmp_path), "--no-progress"], catalogue)
    assert result.exit_code == 0, result.output
    assert dict(server.requests) == {RESNETS["resnet32"]: 1} and f"from {server.url}/{RESNETS['resnet32']}" in result.output

    monkeypatch.setenv("BENCH_MIRROR", "http://127.0.0.1:9")  # nothing listens there: --mirror must win
    result = invoke(["data", "fetch", "--what", "resnet44", "--data-dir", str(tmp_path), "--mirror", server.url,
                     "--no-progress"], catalogue)
    assert result.exit_code == 0 and server.requests[RESNETS["resnet44"]] == 1

    # a directory (a shared filesystem on an air-gapped site) is a mirror too, through file:// URLs
    monkeypatch.setenv("BENCH_MIRROR", str(data_dir / "weights"))
    assert mirror_url() == (data_dir / "weights").resolve().as_uri()
    result = invoke(["data", "fetch", "--what", "resnet56", "--data-dir", str(tmp_path), "--no-progress"], catalogue)
    assert result.exit_code == 0 and "resnet56  verified" in result.output and server.requests[RESNETS["resnet56"]] == 0


@pytest.mark.parametrize("variable, value, needle", [
    ("BENCH_MIRROR", "ftp://example.org/x", "BENCH_MIRROR='ftp://example.org/x'"),
    ("BENCH_MIRROR", "/no/such/dir", "existing directory"),
    ("BENCH_OFFLINE", "maybe", "BENCH_OFFLINE='maybe'"),
])
def test_bad_policy_values_exit_2(tmp_path, monkeypatch, catalogue, variable, value, needle):
    monkeypatch.setenv(variable, value)
    result = invoke(["data", "fetch", "--what", "resnet20", "--data-dir", str(tmp_path)], catalogue)
    assert result.exit_code == 2 and needle in result.output


def test_unknown_artifact_exits_2(tmp_path, catalogue):
    for command in ("check", "fetch"):
        result = invoke(["data", command, "--what", "resnet21", "--data-dir", str(tmp_path)], catalogue)
        assert result.exit_code == 2 and "unknown artifact 'resnet21'" in result.output and "Did you mean" in result.output


def test_offline_policy_values(monkeypatch):
    for value, expected in (("1", True), ("true", True), ("0", False), ("", False), ("off", False)):
        monkeypatch.setenv("BENCH_OFFLINE", value)
        assert offline_mode() is expected
    assert offline_mode(True)


def test_offline_wins_over_plugin_download_switches(tmp_path, monkeypatch):
    from bench.classifiers.robustbench_zoo import ZooModelNotFoundError, robustbench_model

    monkeypatch.setenv("BENCH_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError, match="downloads are off"):
        len(CIFAR10(root=tmp_path, download=True))
    with pytest.raises(ZooModelNotFoundError, match="downloads are off") as err:
        robustbench_model("Standard", tmp_path, allow_download=True)
    assert str(tmp_path / "cifar10" / "Linf" / "Standard.pt") in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_check_on_the_shared_data_directory(data_dir):
    result = CliRunner().invoke(main, ["data", "check", "--data-dir", str(data_dir)])
    assert result.exit_code == 1  # the full release is not there, only the test split
    assert "cifar10   partial" in result.output and f"{data_dir / 'cifar10_test.npz'} verified" in result.output
    assert all(f"{name}  verified" in result.output for name in RESNETS)
    demo = CliRunner().invoke(main, ["data", "check", "--data-dir", str(data_dir), "--job", str(REPO / "jobs" / "demo.yaml")])
    assert demo.exit_code == 0 and "cifar10   ready" in demo.output and "resnet20  verified" in demo.output
