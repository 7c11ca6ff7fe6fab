"""The scheduler: runs a job's tasks on Ray (or serially) and writes each result to the store.

This is the only module that imports Ray (lazily, so ``bench list`` and the serial backend never pay
for it). The shape follows "Ray at the edge":

- :func:`init_ray` — one init function: reuse a Ray already initialised in this process, else the
  address given (``auto``, ``local``, ``HOST:PORT``, ``ray://...``), else ``RAY_ADDRESS``, else start
  a local instance (dashboard bound to 127.0.0.1, its URL printed). Never ``local_mode``.
- :func:`execute` — the one task wrapper, run remotely: it calls ``bench.worker.run_task`` and returns
  errors as values, so an application error (bad parameters, a bug, NaNs) is recorded for its task
  and not retried blindly; Ray's ``max_retries`` covers system failures (a lost worker or node).
- :class:`RayBackend` / :class:`SerialBackend` — the same interface: ``prepare(tasks)`` checks the
  resources against the cluster before anything is submitted (a GPU job on a cluster without GPUs
  fails fast, or falls back to CPU when the job says ``gpu_fallback: cpu``: never a hang), and
  ``run(tasks)`` yields ``(task, outcome)`` in completion order (``ray.wait``) with a cap on the
  number of pending tasks.
- :func:`submit` — the driver loop: reconcile with the store, run, write each result immediately,
  show a progress bar with ETA.

A local Ray instance started here survives a SIGKILLed driver only partly (Ray 2.60 leaves its
dashboard and runtime-env agents behind), so :func:`init_ray` also starts a small reaper process that
waits for the driver to die and then stops every process still holding files in the Ray session
directory (Linux; elsewhere the reaper is not started).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from bench.tasks import Task

#: Ray retries a task this many times when its worker or node dies (system failures only).
DEFAULT_MAX_RETRIES = 3

TaskFunction = Callable[..., Any]  # run_task(task, *, data_dir=None, model_dir=None) -> ShardResult
Log = Callable[[str], None]


class SchedulerError(RuntimeError):
    """The tasks cannot run where they were sent (no GPU on the cluster, no cluster at the address)."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the task wrapper ---------------------------------------------------------------------------
@dataclass
class Outcome:
    """What one task produced: a result, or the error text (an application error, as a value)."""

    task_id: str
    result: Any = None
    error: str | None = None
    seconds: float = 0.0      # wall time in the worker
    cpu_seconds: float = 0.0  # CPU time of the worker process (insensitive to other load on the machine)
    #: "application" (raised by the task) or "system" (worker lost after Ray's retries)
    kind: str = "application"

    @property
    def ok(self) -> bool:
        return self.error is None


def default_task_function() -> TaskFunction:
    from bench.worker import run_task

    return run_task


def execute(fn: TaskFunction | None, task: Task, data_dir: str | None = None, model_dir: str | None = None) -> Outcome:
    """Run ``fn(task, data_dir=..., model_dir=...)`` and return its result or its error as a value.

    Args:
        fn: The task function; None means ``bench.worker.run_task``.
        task: The task.
        data_dir: Passed through to the task function (default None: its own default).
        model_dir: Passed through to the task function (default None).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        result = (fn or default_task_function())(task, data_dir=data_dir, model_dir=model_dir)
    except Exception:  # noqa: BLE001 - an application error is data for the catalog
        return Outcome(task.task_id, error=traceback.format_exc(), seconds=time.perf_counter() - start,
                       cpu_seconds=time.process_time() - cpu_start)
    return Outcome(task.task_id, result=result, seconds=time.perf_counter() - start,
                   cpu_seconds=time.process_time() - cpu_start)


# -- resources ----------------------------------------------------------------------------------
def fit_resources(tasks: Sequence[Task], max_gpus: float, max_cpus: float, where: str) -> tuple[list[Task], list[str]]:
    """Check each task's resources against the largest node; fall back or fail before submitting.

    Args:
        tasks: The tasks.
        max_gpus: GPUs of the largest node (0 on a CPU-only cluster).
        max_cpus: CPUs of the largest node.
        where: Describes the cluster in messages.

    Returns:
        The tasks, with GPU requests removed where the job allows the CPU fallback and CPU requests
        lowered to what a node has (a task asking for more would wait forever), and notes saying so.

    Raises:
        SchedulerError: a task asks for more GPUs than any node has and ``gpu_fallback`` is ``error``.
    """
    out, notes = [], set()
    for task in tasks:
        res = task.resources
        if res.gpus > max_gpus:
            if res.gpu_fallback != "cpu":
                raise SchedulerError(
                    f"task {task.cell} asks for {res.gpus:g} GPU(s) but {where} has at most {max_gpus:g} per node. "
                    "Run on a cluster with GPUs (--address), lower resources.gpus, or set "
                    "resources.gpu_fallback: cpu in the job to run on CPUs instead."
                )
            notes.add(f"{where} has no node with {res.gpus:g} GPU(s): running on CPU (gpu_fallback: cpu)")
            res = dataclasses.replace(res, gpus=0.0)
        if res.cpus > max_cpus:
            notes.add(f"tasks ask for {res.cpus:g} CPUs but {where} has {max_cpus:g} per node: using {max_cpus:g}")
            res = dataclasses.replace(res, cpus=float(max_cpus))
        out.append(task if res == task.resources else dataclasses.replace(task, resources=res))
    return out, sorted(notes)


# -- backends -----------------------------------------------------------------------------------
@dataclass
class SerialBackend:
    """Runs the tasks one after the other in this process (tests, and ``--address serial``).

    Args:
        fn: Task function (default None: ``bench.worker.run_task``).
        data_dir: Data directory for the task function (default None).
        model_dir: Model directory for the task function (default None).
    """

    fn: TaskFunction | None = None
    data_dir: str | None = None
    model_dir: str | None = None
    name: str = field(default="serial", init=False)

    def prepare(self, tasks: Sequence[Task]) -> tuple[list[Task], list[str]]:
        import torch

        gpus = float(torch.cuda.device_count())
        return fit_resources(tasks, gpus, float(os.cpu_count() or 1), "this machine")

    def run(self, tasks: Sequence[Task], on_start: Callable[[Task], None] | None = None) -> Iterator[tuple[Task, Outcome]]:
        for task in tasks:
            if on_start is not None:
                on_start(task)
            yield task, execute(self.fn, task, self.data_dir, self.model_dir)


@dataclass
class RayBackend:
    """Runs the tasks as Ray Core tasks, in completion order, with a cap on pending tasks.

    Ray must be initialised (:func:`init_ray`) before ``prepare``/``run``.

    Args:
        fn: Task function (default None: ``bench.worker.run_task``).
        data_dir: Data directory for the task function, as seen by the workers (default None).
        model_dir: Model directory for the task function (default None).
        max_pending: Most tasks submitted and not yet collected (default None: twice the number of
            tasks the cluster can run at once, at least 2) — keeps the object store and the
            catalog's ``running`` set small on long jobs.
        max_retries: Ray retries when a worker dies (default 3); application errors are not retried.
    """

    fn: TaskFunction | None = None
    data_dir: str | None = None
    model_dir: str | None = None
    max_pending: int | None = None
    max_retries: int = DEFAULT_MAX_RETRIES
    name: str = field(default="ray", init=False)

    def prepare(self, tasks: Sequence[Task]) -> tuple[list[Task], list[str]]:
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if not nodes:
            raise SchedulerError("the Ray cluster has no live node")
        max_gpus = max(float(n["Resources"].get("GPU", 0.0)) for n in nodes)
        max_cpus = max(float(n["Resources"].get("CPU", 0.0)) for n in nodes)
        return fit_resources(tasks, max_gpus, max_cpus, "the Ray cluster")

    def _cap(self, tasks: Sequence[Task]) -> int:
        if self.max_pending is not None:
            return max(1, self.max_pending)
        import ray

        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        per_task = max((t.resources.cpus for t in tasks), default=1.0) or 1.0
        return max(2, int(2 * cpus // per_task))

    def run(self, tasks: Sequence[Task], on_start: Callable[[Task], None] | None = None) -> Iterator[tuple[Task, Outcome]]:
        import ray

        remote = ray.remote(execute)
        cap = self._cap(tasks)
        queue = list(reversed(tasks))
        pending: dict[Any, Task] = {}
        try:
            while queue or pending:
                while queue and len(pending) < cap:
                    task = queue.pop()
                    ref = remote.options(
                        name=task.cell,  # the dashboard groups progress by defense|attack cell
                        num_cpus=task.resources.cpus,
                        num_gpus=task.resources.gpus,
                        max_retries=self.max_retries,
                        retry_exceptions=False,
                    ).remote(self.fn, task, self.data_dir, self.model_dir)
                    pending[ref] = task
                    if on_start is not None:
                        on_start(task)
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                task = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - lost worker/node after max_retries
                    outcome = Outcome(task.task_id, error=f"system failure after {self.max_retries} retries: {exc!r}", kind="system")
                yield task, outcome
        finally:
            for ref in pending:  # interrupted: do not leave work running for a driver that is gone
                ray.cancel(ref, force=True)


def make_backend(address: str | None, *, num_cpus: int | None = None, data_dir: str | None = None,
                 model_dir: str | None = None, fn: TaskFunction | None = None, dashboard: bool = True,
                 log: Log = _stderr) -> SerialBackend | RayBackend:
    """``serial`` -> :class:`SerialBackend`; anything else initialises Ray (see :func:`init_ray`)."""
    if address == "serial":
        return SerialBackend(fn=fn, data_dir=data_dir, model_dir=model_dir)
    init_ray(address, num_cpus=num_cpus, dashboard=dashboard, log=log)
    return RayBackend(fn=fn, data_dir=data_dir, model_dir=model_dir)


# -- Ray initialisation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RayInfo:
    """How this process is attached to Ray."""

    address: str
    dashboard_url: str | None
    session_dir: str | None
    started_here: bool


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = True, *,
             object_store_memory: int | None = None, log: Log = _stderr) -> RayInfo:
    """Attach this process to Ray: reuse -> ``address`` -> ``RAY_ADDRESS`` -> start a local instance.

    Args:
        address: ``None`` (use ``RAY_ADDRESS`` if set, else start locally), ``"auto"`` (join the
            cluster running on this machine), ``"local"`` (always start a new local instance),
            ``"HOST:PORT"`` or ``"ray://HOST:PORT"`` (join that cluster). Default None.
        num_cpus: CPUs of a local instance (default None: all of the machine's). Ignored, with a
            note, when joining a cluster.
        dashboard: Start the dashboard of a local instance on 127.0.0.1 and print its URL
            (default True).
        object_store_memory: Bytes of a local instance's object store (default None: Ray's choice).
        log: Where messages go (default: stderr).

    Raises:
        SchedulerError: nothing answers at the address.
    """
    import ray

    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return RayInfo(address=ctx.gcs_address, dashboard_url=None, session_dir=None, started_here=False)
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    common = dict(configure_logging=True, logging_level="warning", log_to_driver=False)
    if target == "local":
        try:
            ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard,
                           dashboard_host="127.0.0.1", object_store_memory=object_store_memory, **common)
        except Exception as exc:  # noqa: BLE001 - Ray raises many types for a failed start
            raise SchedulerError(f"could not start a local Ray instance: {exc}") from exc
        session_dir = ctx.address_info.get("session_dir")
        _start_reaper(session_dir)
    else:
        if num_cpus is not None:
            log(f"note: --num-cpus is ignored when joining the cluster at {target}")
        try:
            ctx = ray.init(address=target, **common)
        except Exception as exc:  # noqa: BLE001
            raise SchedulerError(f"no Ray cluster answers at {target!r}: {exc}") from exc
        session_dir = ctx.address_info.get("session_dir")
    url = f"http://{ctx.dashboard_url}" if getattr(ctx, "dashboard_url", None) else None
    log(f"Ray at {ctx.address_info.get('gcs_address', target)}; dashboard: {url or 'not running'}; "
        f"logs: {session_dir}/logs")
    return RayInfo(address=ctx.address_info.get("gcs_address", target), dashboard_url=url,
                   session_dir=session_dir, started_here=target == "local")


def run_function(fn: Callable[..., Any], kwargs: dict[str, Any], *, address: str | None,
                 num_gpus: float = 0.0, num_cpus: float = 1.0, log: Log = _stderr) -> Any:
    """Run ``fn(**kwargs)`` as one Ray task (``address="serial"``: here) and return its result.

    Used by training commands (IRAD) when a cluster is given. Errors raise in the caller.

    Args:
        fn: A picklable function.
        kwargs: Its keyword arguments.
        address: As for :func:`init_ray`, or ``"serial"`` to call ``fn`` in this process.
        num_gpus: GPUs for the task (default 0); more than any node has raises SchedulerError.
        num_cpus: CPUs for the task (default 1).
        log: Where messages go (default: stderr).
    """
    if address == "serial":
        return fn(**kwargs)
    import ray

    init_ray(address, dashboard=False, log=log)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    max_gpus = max((float(n["Resources"].get("GPU", 0.0)) for n in nodes), default=0.0)
    if num_gpus > max_gpus:
        raise SchedulerError(f"{fn.__name__} asks for {num_gpus:g} GPU(s) but the Ray cluster has at most {max_gpus:g} per node")
    ref = ray.remote(fn).options(name=getattr(fn, "__name__", "function"), num_gpus=num_gpus, num_cpus=num_cpus,
                                 max_retries=DEFAULT_MAX_RETRIES, retry_exceptions=False).remote(**kwargs)
    return ray.get(ref)


def shutdown_ray() -> None:
    import ray

    ray.shutdown()


# -- the driver loop -------------------------------------------------------------------------------
@dataclass
class SubmitReport:
    """What a submit did."""

    run: str
    total: int           # tasks of the run's current task set
    skipped: int         # already done before this submit
    done: int            # finished now
    failed: list[tuple[str, str, str]]  # (task id, cell, first line of the error)
    wall_seconds: float
    compute_seconds: float  # sum of the finished tasks' compute time
    notes: list[str]


def submit(run: str, spec: Any, tasks: Sequence[Task], store: Any,
           backend: SerialBackend | RayBackend | Callable[[], SerialBackend | RayBackend], *,
           progress: bool = True, log: Log = _stderr) -> SubmitReport:
    """Run the tasks of a job that are not done yet, writing each result to the store as it arrives.

    Args:
        run: The run name (the job's name).
        spec: The job spec, recorded in the catalog.
        tasks: The job's full task set (``bench.tasks.expand_tasks``).
        store: A ``bench.store.ResultStore``; it reconciles first, so done tasks are skipped.
        backend: Where to run, or a zero-argument factory of it, called only when some task is
            left to run (so an unchanged re-submit never starts Ray).
        progress: Show a progress bar with ETA on stderr (default True).
        log: Where notes go (default: stderr).

    Raises:
        SchedulerError: the resources cannot be met (checked before any task is submitted).
    """
    start = time.perf_counter()
    todo = store.begin_run(run, spec, tasks)
    done, failed, compute, notes = 0, [], 0.0, []
    try:
        if todo:
            if callable(backend) and not isinstance(backend, (SerialBackend, RayBackend)):
                backend = backend()
            todo, notes = backend.prepare(todo)  # fail fast, before anything is submitted
            for note in notes:
                log(f"note: {note}")
        with _Progress(len(todo), enabled=progress and bool(todo)) as advance:
            for task, outcome in (backend.run(todo, on_start=lambda t: store.mark_running(t.run, t.task_id))
                                  if todo else ()):
                if outcome.ok and store.record_result(task, outcome.result, outcome.seconds, outcome.cpu_seconds):
                    done += 1
                    compute += outcome.seconds
                else:
                    if outcome.ok:  # the store could not write it and recorded why
                        error = next(r.error for r in store.tasks(run) if r.task_id == task.task_id) or "write failed"
                    else:
                        error = outcome.error or "unknown error"
                        store.record_failure(run, task.task_id, error, seconds=outcome.seconds)
                    failed.append((task.task_id, task.cell, _last_line(error)))
                advance(task.cell)
    finally:
        store.end_run(run)
    return SubmitReport(run=run, total=len(tasks), skipped=len(tasks) - len(todo), done=done, failed=failed,
                        wall_seconds=time.perf_counter() - start, compute_seconds=compute, notes=notes)


def _last_line(error: str) -> str:
    lines = [ln for ln in error.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else error


class _Progress:
    """A rich progress bar with ETA on stderr; a no-op when disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled

    def __enter__(self) -> Callable[[str], None]:
        if not self.enabled:
            return lambda _cell: None
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            console=Console(stderr=True))
        self.bar.start()
        self.id = self.bar.add_task("tasks", total=self.total)
        return lambda cell: self.bar.update(self.id, advance=1, description=f"tasks (last: {cell})")

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.stop()


# -- reaper: stop what a SIGKILLed driver leaves behind ------------------------------------------------
def _start_reaper(session_dir: str | None) -> None:
    if not session_dir or not Path("/proc/self/fd").is_dir():
        return
    subprocess.Popen(
        [sys.executable, "-m", "bench.scheduler", "--reap", str(os.getpid()), session_dir],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the driver's process group: a kill of the group spares it
        close_fds=True,
    )


def _start_ticks(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _holders(session_dir: str) -> list[int]:
    """Processes (other than this one) with a file open under ``session_dir``."""
    prefix, me, out = os.path.realpath(session_dir), os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if any(os.readlink(fd).startswith(prefix) for fd in (entry / "fd").iterdir()):
                out.append(int(entry.name))
        except OSError:
            continue
    return out


def reap_after(driver_pid: int, session_dir: str, poll: float = 0.5, grace: float = 3.0) -> list[int]:
    """Wait for ``driver_pid`` to exit, then stop the processes still using ``session_dir``.

    Returns:
        The pids that had to be stopped (empty after a clean ``ray.shutdown()``).
    """
    start = _start_ticks(driver_pid)
    while start is not None and _start_ticks(driver_pid) == start:
        time.sleep(poll)
    time.sleep(1.0)  # Ray's own fate-sharing stops most processes first
    victims = stopped = _holders(session_dir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while victims and time.monotonic() < deadline:
            victims = [p for p in victims if _start_ticks(p) is not None and _is_running(p)]
            time.sleep(0.1)
    return stopped


def _is_running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--reap":
    reap_after(int(sys.argv[2]), sys.argv[3])
