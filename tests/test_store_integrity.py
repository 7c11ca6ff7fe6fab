"""The store checks what it reads (damaged pages, other schema versions, wrong types, old runs), survives
a garbage or old catalog and a read-only results directory, and never reads or writes outside its root."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.scheduler import SerialBackend, submit
from bench.schema import ROW_SCHEMA
from bench.store import DONE, ResultStore, StoreError

REPO = Path(__file__).resolve().parents[1]
from fake_tasks import fake_rows, fake_run_task, make_tasks
SPEC = {"name": "run"}


def _submitted(results: Path, n: int = 6, run: str = "run") -> tuple[ResultStore, list]:
    tasks = make_tasks(run=run, n=n)
    store = ResultStore(results)
    report = submit(run, SPEC, tasks, store, SerialBackend(fn=fake_run_task), progress=False)
    assert report.done == n
    return store, tasks


def _damage_data_page(path: Path, column: str = "l2") -> None:
    """Flip bytes at the end of one column chunk's last page: the footer stays intact, so does the
    file's size and modification time (as when a disk corrupts data in place)."""
    meta = pq.ParquetFile(path).metadata.row_group(0).column(ROW_SCHEMA.get_field_index(column))
    end = (meta.dictionary_page_offset or meta.data_page_offset) + meta.total_compressed_size
    data = bytearray(path.read_bytes())
    for k in range(end - 4, end - 1):
        data[k] ^= 0x5A
    before = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _rewrite(path: Path, table: pa.Table, metadata: dict[bytes, bytes]) -> None:
    pq.write_table(table.replace_schema_metadata(metadata), path)


# -- verification of what is read -------------------------------------------------------------------
def test_damaged_data_pages_are_rerun_by_submit_and_refused_by_the_leaderboard(tmp_path):
    results = tmp_path / "results"
    store, tasks = _submitted(results)
    victim = store.task_path("run", tasks[2].task_id)
    _damage_data_page(victim)
    assert pq.ParquetFile(victim).metadata.num_rows == 4  # footer intact: a metadata check accepts it
    # the leaderboard does not crash and does not print numbers: exit 2 naming the file and the fix
    board = CliRunner().invoke(main, ["leaderboard", "run", "--results", str(results), "--format", "csv"])
    assert board.exit_code == 2, board.output
    assert f"runs/run/tasks/{tasks[2].task_id}.parquet: damaged data" in board.output
    assert "Re-submit" in board.output and "Traceback" not in board.output
    with pytest.raises(StoreError, match="damaged data"):
        ResultStore(results).read_run("run")
    # a re-submit verifies it (its bytes no longer match the signature) and runs exactly that task again
    todo = ResultStore(results).begin_run("run", SPEC, tasks)
    assert [t.task_id for t in todo] == [tasks[2].task_id]


def test_reconcile_hashes_known_files_and_fully_verifies_only_changed_ones(tmp_path, monkeypatch):
    from bench.store import verify as verify_mod

    results = tmp_path / "results"
    store, tasks = _submitted(results)
    calls = []
    real_verify = verify_mod.verify
    monkeypatch.setattr(verify_mod, "verify", lambda data, expected: calls.append(expected.task_id) or real_verify(data, expected))
    assert ResultStore(results).begin_run("run", SPEC, tasks) == []
    assert calls == []  # every file had the signature the store recorded: hashed, not decoded
    _damage_data_page(store.task_path("run", tasks[4].task_id), column="seconds")
    todo = ResultStore(results).begin_run("run", SPEC, tasks)
    assert calls == [tasks[4].task_id] and [t.task_id for t in todo] == [tasks[4].task_id]


@pytest.mark.parametrize("case", ["schema v1", "schema v3", "wrong column type", "other images"])
def test_read_run_refuses_files_of_another_version_or_shape_and_submit_reruns_them(tmp_path, case):
    results = tmp_path / "results"
    store, tasks = _submitted(results)
    t = tasks[1]
    path = store.task_path("run", t.task_id)
    rows = fake_rows(t)
    meta = {b"task_id": t.task_id.encode(), b"schema_version": b"2", b"run": b"run"}
    if case == "schema v1":
        _rewrite(path, rows, {**meta, b"schema_version": b"1"})
        expected = "row schema version 1 (this bench reads version 2; written by an older bench)"
    elif case == "schema v3":
        _rewrite(path, rows, {**meta, b"schema_version": b"3"})
        expected = "row schema version 3"
    elif case == "wrong column type":
        eps = pa.field("eps", pa.float32(), nullable=False)
        _rewrite(path, rows.set_column(ROW_SCHEMA.get_field_index("eps"), eps, rows.column("eps").cast(pa.float32())), meta)
        expected = "eps is float not null, expected double not null"
    else:
        _rewrite(path, rows.set_column(ROW_SCHEMA.get_field_index("image_id"), ROW_SCHEMA.field("image_id"),
                                       pa.array([i + 1000 for i in t.image_ids], pa.int64())), meta)
        expected = "the image ids are not the task's images"
    with pytest.raises(StoreError) as error:
        ResultStore(results).read_run("run")
    assert expected in str(error.value) and t.task_id in str(error.value)
    assert [x.task_id for x in ResultStore(results).begin_run("run", SPEC, tasks)] == [t.task_id]
    assert not path.exists()


def test_a_run_written_by_an_older_bench_is_refused_on_read_and_rerun_on_submit(tmp_path):
    """The layout of bench <= 998142f: tasks/*.parquet with schema_version 1 and no manifest."""
    results = tmp_path / "results"
    ResultStore(results)  # a catalog
    old = make_tasks(run="old", n=2)
    folder = results / "runs" / "old" / "tasks"
    folder.mkdir(parents=True)
    for t in old:
        _rewrite(folder / f"{t.task_id}.parquet", fake_rows(t), {b"task_id": t.task_id.encode(), b"schema_version": b"1"})
    board = CliRunner().invoke(main, ["leaderboard", "old", "--results", str(results)])
    assert board.exit_code == 2 and "written by an older version of bench" in board.output
    assert "Re-submit its job" in board.output and "Traceback" not in board.output
    current = [t.__class__(**{**t.__dict__, "task_id": t.task_id + "-schema2"}) for t in old]
    store = ResultStore(results)
    assert store.begin_run("old", SPEC, current) == current  # all run again under the current schema
    assert sorted(p.name for p in (results / "runs/old/stale").iterdir()) == sorted(f"{t.task_id}.parquet" for t in old)


def test_damaged_run_metadata_is_reported_on_read_and_rewritten_by_submit(tmp_path):
    results = tmp_path / "results"
    _, tasks = _submitted(results)
    run_dir = results / "runs" / "run"
    (run_dir / "run.json").write_bytes(b"\x00garbage{")
    (run_dir / "versions" / "0001.json").write_bytes(b"not json")
    status = CliRunner().invoke(main, ["status", "run", "--results", str(results)])
    assert status.exit_code == 2 and "run.json is unreadable" in status.output and "re-submit" in status.output
    notes = []
    again = ResultStore(results, log=notes.append)
    assert again.begin_run("run", SPEC, tasks) == []  # the files are still recognised: nothing re-runs
    assert any("writing a new one" in n for n in notes)
    assert [v.number for v in again.versions("run")] == [2]  # the damaged version's number is not reused
    assert again.read_run("run").num_rows == 24


# -- the catalog is a cache ----------------------------------------------------------------------------
def _old_bench_catalog(path: Path) -> None:
    """The tables of bench 998142f's catalog (no catalog_info, no position/signature columns)."""
    path.unlink()
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE runs (name VARCHAR PRIMARY KEY, spec JSON, spec_hash VARCHAR(64), versions JSON, "
            "task_ids JSON, driver VARCHAR, created DATETIME, updated DATETIME);"
            "CREATE TABLE tasks (run VARCHAR, task_id VARCHAR, defense VARCHAR, attack VARCHAR, seed INTEGER, "
            "shard INTEGER, n_images INTEGER, status VARCHAR(8), attempts INTEGER, started DATETIME, finished DATETIME, "
            "seconds FLOAT, cpu_seconds FLOAT, error TEXT, output_path VARCHAR, row_count INTEGER, "
            "PRIMARY KEY (run, task_id));"
            "INSERT INTO runs VALUES ('run', '{}', 'x', '{}', '[]', NULL, '2025-01-01', '2025-01-01');")


@pytest.mark.parametrize("damage", ["garbage", "older bench", "damaged pages"])
def test_an_unusable_catalog_is_rebuilt_from_the_run_folders(tmp_path, damage):
    results = tmp_path / "results"
    store, tasks = _submitted(results)
    expected = store.read_run("run")
    store.engine.dispose()
    catalog = results / "catalog.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{catalog}{suffix}").unlink(missing_ok=True)
    if damage == "garbage":
        catalog.write_bytes(os.urandom(64 * 1024))
    elif damage == "older bench":
        _old_bench_catalog(catalog)
    else:
        data = bytearray(catalog.read_bytes())
        data[4096:12288] = os.urandom(8192)  # pages after the header
        catalog.write_bytes(bytes(data))
    before = catalog.read_bytes()
    runner = CliRunner()
    status = runner.invoke(main, ["status", "--results", str(results)])
    assert status.exit_code == 0, status.output
    assert "6 done" in status.output and "the next `bench submit` rebuilds it" in status.output
    board = runner.invoke(main, ["leaderboard", "run", "--results", str(results), "--format", "csv"])
    assert board.exit_code == 0, board.output
    assert catalog.read_bytes() == before  # readers never write
    # a writer moves it aside and rebuilds it; the files are verified again, nothing re-runs
    notes = []
    writer = ResultStore(results, log=notes.append)
    assert any("rebuilt from the run folders (1 run(s))" in n for n in notes)
    assert list(results.glob("catalog.sqlite.unusable-*")) or damage == "empty"
    assert writer.begin_run("run", SPEC, tasks) == []
    assert writer.read_run("run").equals(expected)
    assert {r.status for r in writer.tasks("run")} == {DONE} and all(r.file_sha256 for r in writer.tasks("run"))


def _reader_command(args: list[str], results: Path) -> list[str]:
    command = [sys.executable, "-m", "bench.cli", *args]
    if os.geteuid() == 0:
        # root ignores permission bits: give the command a private mount namespace in which the results
        # directory is a read-only bind mount (EROFS), whatever the permissions of the checkout around it
        remount = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
        command = ["unshare", "--mount", "sh", "-c", remount, str(results), *command]
    return command


@pytest.mark.slow  # three CLI processes
def test_a_read_only_results_directory_serves_status_and_leaderboard_and_refuses_submit(data_dir):
    base = Path(tempfile.mkdtemp(prefix="bench-readonly-"))
    results = base / "results"
    try:
        _submitted(results)
        assert not list(results.glob("catalog.sqlite-*"))  # the finished driver folded its log into the catalog
        job = base / "job.yaml"
        job.write_text((REPO / "tests" / "test_cli.py").read_text().split('GOOD_JOB = """\\\n')[1].split('"""')[0])
        for folder, dirs, files in os.walk(results):
            os.chmod(folder, 0o555)
            for name in files:
                os.chmod(Path(folder) / name, 0o444)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "HOME": str(base),
               "BENCH_DATA_DIR": str(data_dir)}
        env.pop("RAY_ADDRESS", None)
        listing = sorted(str(p) for p in results.rglob("*"))
        for args in (["status", "--results", str(results)],
                     ["leaderboard", "run", "--results", str(results), "--format", "csv"]):
            done = subprocess.run(_reader_command(args, results), check=False, capture_output=True, text=True, env=env, cwd=base, timeout=120)
            assert done.returncode == 0, done.stderr
            assert "Traceback" not in done.stderr
        submitted = subprocess.run(_reader_command(["submit", str(job), "--results", str(results), "--address", "serial",
                                                    "--no-progress"], results),
                                   check=False, capture_output=True, text=True, env=env, cwd=base, timeout=300)
        assert submitted.returncode == 2, submitted.stderr
        assert "is not writable" in submitted.stderr and "Traceback" not in submitted.stderr
        assert sorted(str(p) for p in results.rglob("*")) == listing  # nothing was created
    finally:
        for folder, dirs, files in os.walk(base):
            os.chmod(folder, 0o755)
        shutil.rmtree(base, ignore_errors=True)


# -- containment -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../x", "/abs/path", "a/b", "..", "", "ok\0nul", "x" * 300])
def test_run_names_that_would_leave_the_results_directory_are_refused(tmp_path, name):
    results = tmp_path / "a" / "results"
    store = ResultStore(results)
    tasks = [t.__class__(**{**t.__dict__, "run": name}) for t in make_tasks(n=1)]
    with pytest.raises(StoreError, match="one path component"):
        store.begin_run(name, SPEC, tasks)
    assert {p.name for p in tmp_path.rglob("*")} <= {"a", "results", "catalog.sqlite", "catalog.sqlite-wal",
                                                     "catalog.sqlite-shm"}


def test_symbolic_links_in_the_results_directory_are_not_followed(tmp_path):
    results, outside = tmp_path / "results", tmp_path / "outside"
    outside.mkdir()
    store, tasks = _submitted(results)
    # a run folder that is a link to elsewhere
    (results / "runs" / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StoreError, match="symbolic link"):
        store.begin_run("evil", SPEC, make_tasks(run="evil", n=1))
    assert list(outside.iterdir()) == []
    # a task file replaced by a link to a file outside: not read, and re-run (the link removed, not its target)
    foreign = outside / "foreign.parquet"
    shutil.copy(store.task_path("run", tasks[0].task_id), foreign)
    link = store.task_path("run", tasks[0].task_id)
    link.unlink()
    link.symlink_to(foreign)
    with pytest.raises(StoreError, match="symbolic link"):
        ResultStore(results, readonly=True).read_run("run")
    assert [t.task_id for t in ResultStore(results).begin_run("run", SPEC, tasks)] == [tasks[0].task_id]
    assert foreign.exists() and not link.is_symlink()
    # a sub-folder of a run that is a link
    shutil.rmtree(results / "runs" / "run" / "stale", ignore_errors=True)
    (results / "runs" / "run" / "stale").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StoreError, match="symbolic link"):
        ResultStore(results).begin_run("run", SPEC, tasks)


def test_a_job_named_to_escape_exits_2_and_writes_nothing_outside(tmp_path, data_dir):
    job = tmp_path / "job.yaml"
    text = (REPO / "tests" / "test_cli.py").read_text().split('GOOD_JOB = """\\\n')[1].split('"""')[0]
    job.write_text(text.replace("name: cli-test", "name: ../../escaped"))
    results = tmp_path / "deep" / "results"
    result = CliRunner().invoke(main, ["submit", str(job), "--results", str(results), "--address", "serial",
                                       "--data-dir", str(data_dir), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "deep" / "escaped").exists()
    assert not any(p.name == "escaped" for p in tmp_path.rglob("*"))
