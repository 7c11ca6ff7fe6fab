"""The scheduler: runs a job's tasks on Ray (or serially) and writes each result to the store.

This is the only module that imports Ray (lazily, so ``bench list`` and the serial backend never pay
for it). The shape follows "Ray at the edge":

- :func:`init_ray` — one init function: reuse a Ray already initialised in this process, else the
  address given (``auto``, ``local``, ``HOST:PORT``, ``ray://...``; probed first, so a wrong one
  fails in seconds), else ``RAY_ADDRESS``, else start a local instance bound to 127.0.0.1 only
  (:func:`loopback_node`; dashboard URL and how to get its token printed). Never ``local_mode``.
- :func:`execute` — the one task wrapper, run remotely: it calls ``bench.worker.run_task`` and returns
  errors as values, so an application error (bad parameters, a bug, NaNs) is recorded for its task
  and not retried blindly; Ray's ``max_retries`` covers system failures (a lost worker or node).
- :class:`RayBackend` / :class:`SerialBackend` — the same interface: ``prepare(tasks)`` checks the
  resources against the cluster before anything is submitted (a GPU job on a cluster without GPUs
  fails fast, or falls back to CPU when the job says ``gpu_fallback: cpu``: never a hang), and
  ``run(tasks)`` yields ``(task, outcome)`` in completion order (``ray.wait``). On Ray the whole
  grid is queued at once (tasks named ``defense|attack|seed=S|shard=N``); each task is a streaming
  generator that first reports its start, so ``on_start`` (the catalog's ``running``) marks only
  what a worker really runs.
- :func:`submit` — the driver loop: reconcile with the store, run, write each round's results
  immediately (one store transaction per ``ray.wait`` round), show a progress bar with ETA.

A local Ray instance started here survives a SIGKILLed driver only partly (Ray 2.60 leaves its
dashboard and runtime-env agents behind), so :func:`init_ray` also starts a small reaper process that
waits for the driver to die and then stops every process still holding files in the Ray session
directory (Linux; elsewhere the reaper is not started).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import itertools
import os
import signal
import socket
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


def execute_streaming(fn: TaskFunction | None, task: Task, data_dir: str | None = None,
                      model_dir: str | None = None) -> Iterator[Any]:
    """:func:`execute` as a Ray streaming generator: first yields :class:`Started`, then the
    :class:`Outcome`. The first item tells the driver that the task left Ray's queue and runs on a
    worker, so the catalog's ``running`` set holds what really runs while the whole grid is queued."""
    yield Started(task.task_id, host=socket.gethostname(), pid=os.getpid())
    yield execute(fn, task, data_dir, model_dir)


@dataclass(frozen=True)
class Started:
    """The signal a task sends when a worker begins it."""

    task_id: str
    host: str
    pid: int


# -- resources ----------------------------------------------------------------------------------
def fit_resources(tasks: Sequence[Task], nodes: Sequence[tuple[float, float]], where: str) -> tuple[list[Task], list[str]]:
    """Check each task's resources against the nodes; fall back or fail before submitting.

    A task runs only where one node has both its GPUs and its CPUs (Ray never splits a task over
    nodes, and waits forever for an infeasible one), so the checks are per node, not against the
    largest GPU count and the largest CPU count of possibly different nodes.

    Args:
        tasks: The tasks.
        nodes: ``(gpus, cpus)`` of each live node.
        where: Describes the cluster in messages.

    Returns:
        The tasks, with GPU requests removed where the job allows the CPU fallback and CPU requests
        lowered to what the largest node with enough GPUs has (a task asking for more would wait
        forever), and notes saying so.

    Raises:
        SchedulerError: a task asks for more GPUs than any node has and ``gpu_fallback`` is ``error``,
            or the fallback would run an ``fp16`` task on a CPU (``bench.device.check_precision``
            refuses it there: every task would fail in its worker after the grid was queued).
    """
    max_gpus = max((g for g, _ in nodes), default=0.0)
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
            if task.payload.get("precision") == "fp16":
                raise SchedulerError(
                    f"task {task.cell} asks for {res.gpus:g} GPU(s) in precision fp16, but {where} has at most "
                    f"{max_gpus:g} GPU(s) per node and fp16 does not run on CPUs, so resources.gpu_fallback: cpu "
                    "cannot apply. Set precision: bf16 or fp32 in the job to run on CPUs, or run on a cluster "
                    "with GPUs (--address)."
                )
            notes.add(f"{where} has no node with {res.gpus:g} GPU(s): running on CPU (gpu_fallback: cpu)")
            res = dataclasses.replace(res, gpus=0.0)
        cpus = max(c for g, c in nodes if g >= res.gpus)  # some node has the GPUs (checked above)
        if res.cpus > cpus:
            notes.add(f"tasks ask for {res.cpus:g} CPUs but the largest node of {where} with {res.gpus:g} GPU(s) "
                      f"has {cpus:g}: using {cpus:g}")
            res = dataclasses.replace(res, cpus=float(cpus))
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

        node = (float(torch.cuda.device_count()), float(os.cpu_count() or 1))
        return fit_resources(tasks, [node], "this machine")

    def run(self, tasks: Sequence[Task], on_start: Callable[[Task], None] | None = None) -> Iterator[tuple[Task, Outcome]]:
        for task in tasks:
            if on_start is not None:
                on_start(task)
            yield task, execute(self.fn, task, self.data_dir, self.model_dir)

    def rounds(self, tasks: Sequence[Task], on_start: Callable[[list[Task]], None] | None = None
               ) -> Iterator[list[tuple[Task, Outcome]]]:
        """:meth:`run` as rounds of one task each (the interface of :meth:`RayBackend.rounds`)."""
        for task, outcome in self.run(tasks, on_start=None if on_start is None else lambda t: on_start([t])):
            yield [(task, outcome)]


def ray_task_name(task: Task) -> str:
    """The Ray task name: ``defense|attack|seed=S|shard=N`` (what the dashboard lists per task).

    Cell names match ``bench.spec``'s safe pattern, so the name needs no escaping.
    """
    return f"{task.cell}|seed={task.seed}|shard={task.shard}"


#: Default bound on tasks queued in Ray at once. Queued tasks hold only their small specs in the
#: driver (no worker, no object store space), so a whole grid of this size is submitted at once and
#: the dashboard shows its real size; larger grids are fed in windows of this size.
DEFAULT_MAX_QUEUED = 20_000


#: Fewest of the oldest pending tasks each ``ray.wait`` round watches (the default window is the larger of
#: this and twice the cluster's CPUs). Ray starts queued tasks in submission order when they ask for
#: the same resources, so the running ones are among the oldest; a task that ends outside the window
#: (an earlier task waits for a GPU while later CPU tasks run) is collected when the window reaches
#: it, its result kept in Ray's object store until then.
MIN_WAIT_WINDOW = 64


@dataclass
class RayBackend:
    """Runs the tasks as Ray Core tasks, in completion order.

    Every task is a streaming generator (:func:`execute_streaming`) that first reports that it
    started, then returns its :class:`Outcome`. So the whole grid can be queued in Ray at once —
    the dashboard counts every task of the job, named ``defense|attack|seed=S|shard=N`` — while
    ``on_start`` (the catalog's ``running`` state) fires only for tasks that a worker really runs,
    and each result leaves the object store as soon as it arrives.

    Ray must be initialised (:func:`init_ray`) before ``prepare``/``run``.

    Args:
        fn: Task function (default None: ``bench.worker.run_task``).
        data_dir: Data directory for the task function, as seen by the workers (default None).
        model_dir: Model directory for the task function (default None).
        max_pending: Most tasks queued in Ray and not yet collected (default None:
            :data:`DEFAULT_MAX_QUEUED`).
        max_retries: Ray retries when a worker dies (default 3); application errors are not retried.
        wait_window: How many of the oldest pending tasks each ``ray.wait`` watches (default None:
            twice the cluster's CPUs, at least :data:`MIN_WAIT_WINDOW`).
    """

    fn: TaskFunction | None = None
    data_dir: str | None = None
    model_dir: str | None = None
    max_pending: int | None = None
    max_retries: int = DEFAULT_MAX_RETRIES
    wait_window: int | None = None
    name: str = field(default="ray", init=False)

    def prepare(self, tasks: Sequence[Task]) -> tuple[list[Task], list[str]]:
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if not nodes:
            raise SchedulerError("the Ray cluster has no live node")
        capacities = [(float(n["Resources"].get("GPU", 0.0)), float(n["Resources"].get("CPU", 0.0))) for n in nodes]
        return fit_resources(tasks, capacities, "the Ray cluster")

    def run(self, tasks: Sequence[Task], on_start: Callable[[Task], None] | None = None) -> Iterator[tuple[Task, Outcome]]:
        """The outcomes one by one in completion order; ``on_start`` is called per task a worker begins."""
        started = None if on_start is None else lambda batch: [on_start(t) for t in batch]
        for batch in self.rounds(tasks, on_start=started):
            yield from batch

    def rounds(self, tasks: Sequence[Task], on_start: Callable[[list[Task]], None] | None = None
               ) -> Iterator[list[tuple[Task, Outcome]]]:
        """The outcomes in completion order, grouped by ``ray.wait`` round: everything that arrived
        while the driver handled the previous round, so the store writes a round at once.

        Args:
            tasks: The tasks to run.
            on_start: Called once per round with the tasks whose workers began in it (before any
                outcome of the round is yielded).
        """
        import ray

        remote = ray.remote(execute_streaming)
        # "DEFAULT": never inherit the placement group of a caller that is itself a Ray task (a Ray Tune
        # trial of bench.sweep drives its tasks from a 0-CPU bundle they would not fit in)
        fixed = dict(num_returns="streaming", max_retries=self.max_retries, retry_exceptions=False,
                     scheduling_strategy="DEFAULT")
        cap = max(1, self.max_pending or DEFAULT_MAX_QUEUED)
        window = max(1, self.wait_window or max(MIN_WAIT_WINDOW, 2 * int(ray.cluster_resources().get("CPU", 0))))
        # a task function given here is pickled (by value, when it lives in a script) once, not per task
        fn = None if self.fn is None else ray.put(self.fn)
        queue = list(reversed(tasks))
        pending: dict[Any, Task] = {}  # generator -> task, in submission order
        try:
            while queue or pending:
                while queue and len(pending) < cap:
                    task = queue.pop()
                    gen = remote.options(name=ray_task_name(task), num_cpus=task.resources.cpus,
                                         num_gpus=task.resources.gpus, **fixed).remote(
                        fn, task, self.data_dir, self.model_dir)
                    pending[gen] = task
                # ray.wait costs ~7 us per generator: waiting on all of a 10,000-task grid every round
                # would cost the driver more than the store; the oldest tasks are the ones running
                waitables = list(itertools.islice(pending, window))
                # everything that is ready now; only when nothing is, block until something is
                ready, _ = ray.wait(waitables, num_returns=len(waitables), timeout=0)
                if not ready:
                    ready, _ = ray.wait(waitables, num_returns=1)
                items = self._next_items(ready, pending)
                starts = [pending[gen] for gen, item in items if isinstance(item, Started)]
                if starts and on_start is not None:
                    on_start(starts)
                done = []
                for gen, item in items:
                    if not isinstance(item, Started):
                        done.append((pending.pop(gen), item))
                if done:
                    yield done
        finally:
            for gen in pending:  # interrupted: do not leave work running for a driver that is gone
                try:
                    ray.cancel(gen, force=True)
                except Exception:  # noqa: BLE001 - already finished or its worker is gone
                    pass

    def _next_items(self, ready: list[Any], pending: dict[Any, Task]) -> list[tuple[Any, Any]]:
        """The next item (:class:`Started` or :class:`Outcome`) of each ready generator, fetched with one
        ``ray.get`` (one per generator only when some task failed in the system)."""
        import ray

        refs, items = [], {}
        for gen in ready:
            try:
                refs.append((gen, next(gen)))
            except StopIteration:  # finished without an outcome: cannot happen, but never hang
                items[gen] = Outcome(pending[gen].task_id, error="the task ended without a result", kind="system")
            except Exception as exc:  # noqa: BLE001 - lost worker/node after max_retries
                items[gen] = self._system_failure(pending[gen], exc)
        try:
            items.update(zip((gen for gen, _ in refs), ray.get([ref for _, ref in refs])))
        except Exception:  # noqa: BLE001 - some task's worker or node was lost: fetch one by one
            for gen, ref in refs:
                try:
                    items[gen] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001
                    items[gen] = self._system_failure(pending[gen], exc)
        return [(gen, items[gen]) for gen in ready]

    def _system_failure(self, task: Task, exc: Exception) -> Outcome:
        return Outcome(task.task_id, error=f"system failure after {self.max_retries} retries: {exc!r}", kind="system")


def job_metadata(run: str, tasks: Sequence[Task], job_file: str | os.PathLike | None = None) -> dict[str, str]:
    """Metadata attached to the driver's Ray job: the run name, the grid's size and shape, the job file.

    The dashboard counts only tasks already handed to Ray; these fields say what the whole grid is.
    """
    cells = {t.cell for t in tasks}
    meta = {"bench_run": run, "bench_tasks": str(len(tasks)), "bench_cells": str(len(cells)),
            "bench_seeds": str(len({t.seed for t in tasks})), "bench_shards": str(len({t.shard for t in tasks}))}
    if job_file is not None:
        meta["bench_job_file"] = str(job_file)
    return meta


def make_backend(address: str | None, *, num_cpus: int | None = None, data_dir: str | None = None,
                 model_dir: str | None = None, fn: TaskFunction | None = None, dashboard: bool = True,
                 job_metadata: dict[str, str] | None = None, log: Log = _stderr) -> SerialBackend | RayBackend:
    """``serial`` -> :class:`SerialBackend`; anything else initialises Ray (see :func:`init_ray`)."""
    if address == "serial":
        return SerialBackend(fn=fn, data_dir=data_dir, model_dir=model_dir)
    init_ray(address, num_cpus=num_cpus, dashboard=dashboard, job_metadata=job_metadata, log=log)
    return RayBackend(fn=fn, data_dir=data_dir, model_dir=model_dir)


# -- Ray initialisation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RayInfo:
    """How this process is attached to Ray."""

    address: str
    dashboard_url: str | None
    session_dir: str | None
    started_here: bool


#: Seconds to wait for a TCP answer from the address given to ``--address`` before giving up.
CONNECT_TIMEOUT_SECONDS = 5.0

#: Ray 2.60 binds every server of a node (GCS, raylet, object manager, workers' and the driver's
#: gRPC servers, the dashboard agent, the runtime-env agent, the Prometheus metrics exporters) to the
#: node's IP when that IP is a loopback address, and to all interfaces otherwise. ``ray.init`` has no
#: option for it (``_node_ip_address="127.0.0.1"`` is rewritten to the machine's outward IP by
#: ``services.resolve_ip_for_localhost``); the node IP becomes 127.0.0.1 only through this
#: variable, which Ray itself sets to keep single-machine instances local on macOS and Windows.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def loopback_node() -> Iterator[None]:
    """Start Ray processes inside this block with node IP 127.0.0.1 (every port on loopback).

    The variable is inherited by the processes ``ray.init`` starts (GCS, raylet, dashboard, agents)
    and by the workers the raylet spawns later; this process's copy and Ray's cached constant are
    restored afterwards, so a later join of a real cluster is not affected.
    """
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = saved_env


def _host_port(target: str) -> tuple[str, int] | None:
    """``(host, port)`` of an address that names one (``HOST:PORT``, ``ray://HOST:PORT``), else None."""
    rest = target.split("://", 1)[1] if "://" in target else target
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def probe_address(target: str, timeout: float = CONNECT_TIMEOUT_SECONDS) -> tuple[str, int]:
    """Fail fast when nothing listens at a cluster address (``ray.init`` would retry for minutes).

    ``auto`` is resolved the way Ray resolves it (the address file of the cluster started on this
    machine). Only reachability is checked: a port that answers but is not a Ray GCS is left to Ray.

    Raises:
        SchedulerError: no cluster is recorded for ``auto``, the host does not resolve, or the TCP
            connection is refused or times out.
    """
    if target == "auto":
        from ray._private import services

        try:  # RAY_ADDRESS, else the address file of `ray start` (as recorded: no localhost rewrite)
            resolved = services.get_ray_address_from_environment(target, None)
        except Exception as exc:  # noqa: BLE001 - ConnectionError and friends: no cluster here
            raise SchedulerError(f"--address auto: no Ray cluster is running on this machine ({exc}); "
                                 "start one with `ray start --head` or omit --address") from exc
        if resolved is None:
            raise SchedulerError("--address auto: no Ray cluster is running on this machine; start one with "
                                 "`ray start --head` or omit --address")
        target = resolved
    hp = _host_port(target)
    if hp is None:
        raise SchedulerError(f"--address {target!r} is not auto, local, serial, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection(hp, timeout=timeout):
            pass
    except OSError as exc:
        raise SchedulerError(f"no Ray cluster answers at {target!r} ({exc}); check --address / RAY_ADDRESS") from exc
    return hp


def _use_token_if_available() -> None:
    """Send the local Ray token (``~/.ray/auth_token``) when joining a cluster, as ``ray start`` does.

    A cluster started with token authentication (Ray 2.60's default when a token exists) refuses a
    driver without it, and ``ray.init(address=...)`` does not pick the file up by itself; an explicit
    ``RAY_AUTH_MODE`` is left alone.
    """
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available)
    except ImportError:  # an older Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface (127.0.0.0/8, ::1, ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dashboard_token_hint() -> str | None:
    """How to open a token-protected dashboard, or None when token authentication is off.

    The printed URL alone shows a token dialog; the token is what ``ray get-auth-token`` prints
    (stored in ``~/.ray/auth_token``). The token itself is never logged.
    """
    try:
        from ray._raylet import AuthenticationMode, get_authentication_mode

        if get_authentication_mode() != AuthenticationMode.TOKEN:
            return None
    except Exception:  # noqa: BLE001 - an older Ray without token authentication
        return None
    return "the dashboard asks for a token: paste the output of `ray get-auth-token` (~/.ray/auth_token)"


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool = True, *,
             object_store_memory: int | None = None, job_metadata: dict[str, str] | None = None,
             log: Log = _stderr) -> RayInfo:
    """Attach this process to Ray: reuse -> ``address`` -> ``RAY_ADDRESS`` -> start a local instance.

    A local instance listens on 127.0.0.1 only (:func:`loopback_node`); its dashboard URL is
    printed with how to get the token it asks for. A cluster address is probed first, so a wrong
    one fails within :data:`CONNECT_TIMEOUT_SECONDS` instead of hanging.

    Args:
        address: ``None`` (use ``RAY_ADDRESS`` if set, else start locally), ``"auto"`` (join the
            cluster running on this machine), ``"local"`` (always start a new local instance),
            ``"HOST:PORT"`` or ``"ray://HOST:PORT"`` (join that cluster). Default None.
        num_cpus: CPUs of a local instance (default None: all of the machine's). Ignored, with a
            note, when joining a cluster.
        dashboard: Start the dashboard of a local instance on 127.0.0.1 and print its URL
            (default True).
        object_store_memory: Bytes of a local instance's object store (default None: Ray's choice).
        job_metadata: String metadata of this driver's Ray job (``bench submit`` puts the run name
            and the grid size there; ``ray job list`` and the dashboard's job page show it).
        log: Where messages go (default: stderr).

    Raises:
        SchedulerError: nothing answers at the address, or a local instance cannot start.
    """
    import ray

    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        return RayInfo(address=ctx.gcs_address, dashboard_url=None, session_dir=None, started_here=False)
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    common: dict[str, Any] = dict(configure_logging=True, logging_level="warning", log_to_driver=False)
    if job_metadata:
        common["job_config"] = ray.job_config.JobConfig(metadata=dict(job_metadata))
    if target == "local":
        try:
            with loopback_node():
                ctx = ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard,
                               dashboard_host="127.0.0.1", object_store_memory=object_store_memory, **common)
        except Exception as exc:  # noqa: BLE001 - Ray raises many types for a failed start
            raise SchedulerError(f"could not start a local Ray instance: {exc}") from exc
        session_dir = ctx.address_info.get("session_dir")
        _start_reaper(session_dir)
    else:
        if num_cpus is not None:
            log(f"note: --num-cpus is ignored when joining the cluster at {target}")
        host, _ = probe_address(target)
        _use_token_if_available()
        # A cluster bound to loopback (ours, or `ray start` with the same setting) is reachable only
        # over loopback, but Ray rewrites 127.0.0.1 to the outward IP unless the node IP is loopback.
        joining = loopback_node() if is_loopback(host) else contextlib.nullcontext()
        try:
            with joining:
                ctx = ray.init(address=target, **common)
        except Exception as exc:  # noqa: BLE001
            raise SchedulerError(f"no Ray cluster answers at {target!r}: {exc}") from exc
        session_dir = ctx.address_info.get("session_dir")
    url = f"http://{ctx.dashboard_url}" if getattr(ctx, "dashboard_url", None) else None
    hint = dashboard_token_hint() if url else None
    log(f"Ray at {ctx.address_info.get('gcs_address', target)}; dashboard: {url or 'not running'}"
        + (f" ({hint})" if hint else "") + f"; logs: {session_dir}/logs")
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

    The results of one round of the backend (everything that finished while the driver handled the
    previous round) are written together (``ResultStore.record_results``: one flush, one catalog
    transaction), and the tasks that started in a round are marked running in one transaction.

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
    from bench.store import Finished

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
            rounds = backend.rounds(todo, on_start=lambda ts: store.mark_running_many(run, [t.task_id for t in ts])) \
                if todo else ()
            for batch in rounds:
                ok = [(task, outcome) for task, outcome in batch if outcome.ok]
                errors = store.record_results([Finished(task, outcome.result, outcome.seconds, outcome.cpu_seconds)
                                               for task, outcome in ok])
                for (task, outcome), error in zip(ok, errors):
                    if error is None:
                        done += 1
                        compute += outcome.seconds
                    else:  # the store could not write it and recorded why
                        failed.append((task.task_id, task.cell, _last_line(error)))
                for task, outcome in batch:
                    if not outcome.ok:
                        error = outcome.error or "unknown error"
                        store.record_failure(run, task.task_id, error, seconds=outcome.seconds)
                        failed.append((task.task_id, task.cell, _last_line(error)))
                for task, _ in batch:
                    advance(task.cell)
                finished = done + len(failed)
                if finished // TRIM_EVERY_TASKS != (finished - len(batch)) // TRIM_EVERY_TASKS:
                    _trim_heap()
    finally:
        store.end_run(run)
    return SubmitReport(run=run, total=len(tasks), skipped=len(tasks) - len(todo), done=done, failed=failed,
                        wall_seconds=time.perf_counter() - start, compute_seconds=compute, notes=notes)


#: The driver hands memory freed by finished tasks back to the OS after this many tasks (:func:`_trim_heap`).
TRIM_EVERY_TASKS = 1000


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None elsewhere (musl, macOS, Windows)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim") if name else None
    except (OSError, AttributeError):
        return None
    return trim


def _trim_heap() -> None:
    """Return the free memory of the driver's heap to the OS.

    Ray's threads and the store allocate and free small blocks per task in several glibc arenas;
    glibc keeps the freed pages, so the driver's resident memory grew by ~12 kB per task (10,000
    tasks: +130 MB, ``benchmarks/scale.py``) with nothing alive in it: ``malloc_trim`` every
    :data:`TRIM_EVERY_TASKS` tasks keeps it flat. A no-op without glibc.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


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
