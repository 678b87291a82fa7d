"""Where stages run: the one place that picks a Dask cluster and executes shards.

The scheduler address is taken from, in order: the ``--scheduler`` option,
the ``DASK_SCHEDULER_ADDRESS`` environment variable, else a new LocalCluster.
This is the only module that reads the environment for cluster settings.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from msdmatch.errors import MsdmatchError, ParameterError, StageError

#: Environment given to LocalCluster workers so that numba, BLAS and
#: onnxruntime use one thread per worker thread.
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}

#: glibc malloc settings for worker processes, replacing Dask's default
#: ``MALLOC_TRIM_THRESHOLD_=65536``.  Setting any malloc threshold turns off
#: glibc's adaptive mmap threshold, so with Dask's value every array over
#: 128 kB is mapped and unmapped on each use; featurize ran 1.8x slower per
#: item in a worker than in a plain process.  These are glibc's own adaptive
#: ceilings (32 MB mmap, 64 MB trim): memory above them still goes back to the
#: OS.  They must be set before the worker process starts, hence
#: ``pre-spawn-environ``; deploy/dask-config.yaml sets the same for Kubernetes.
WORKER_MALLOC = {
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 32 * 2**20,
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 64 * 2**20,
}

#: How often Dask's own monitors wake.  At Dask's defaults (event-loop tick
#: 20 ms, statistical profiler 10 ms, system monitor 500 ms) an idle
#: LocalCluster of 2 workers took 124 ms of CPU per second (the client and
#: scheduler 50, each worker 37); at these, 36 ms.  On a cluster whose
#: workers fill every core, that CPU is taken from the stage's tasks.  The
#: dashboard still shows every plot, the CPU and memory ones refreshed every
#: 2 s and the profile sampled at 10 Hz.  deploy/dask-config.yaml sets the same.
MONITORING = {
    "distributed.admin.tick.interval": "200ms",
    "distributed.worker.profile.interval": "100ms",
    "distributed.admin.system-monitor.interval": "2s",
}


class QuietAsyncio(WorkerPlugin):
    """Keep asyncio's leftover-task tracebacks out of a LocalCluster worker's stderr.

    LocalCluster workers write to the terminal of the command that started
    them.  When storage is lost, aiohttp leaves request tasks behind whose
    errors nobody retrieves, and asyncio prints each one as a traceback
    ("Task exception was never retrieved").  The error that matters reaches
    the user as one line from :func:`run_shards`.  Registered as a plugin, so
    a worker that replaces a dead one is quieted too.
    """

    name = "msdmatch-quiet-asyncio"

    def setup(self, worker) -> None:
        """Raise the worker's ``asyncio`` logger to CRITICAL."""
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def scheduler_address(option: str | None) -> str | None:
    """The scheduler to submit to, or ``None`` for a LocalCluster."""
    return option or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def client_for(
    scheduler: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    dashboard: bool = True,
    quiet: bool = False,
) -> Iterator[Any]:
    """A ``distributed.Client`` for the chosen cluster, closed on exit.

    Parameters
    ----------
    scheduler : str, optional
        ``tcp://host:port`` of a running scheduler; see :func:`scheduler_address`.
    n_workers : int, optional
        LocalCluster workers (default: one per core).
    threads_per_worker : int
        LocalCluster threads per worker.
    dashboard : bool
        Serve the dashboard (LocalCluster only).
    quiet : bool
        Do not print the dashboard link.
    """
    import dask
    from distributed import Client, LocalCluster

    for name in ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.worker"):
        logging.getLogger(name).setLevel(logging.ERROR)
    address = scheduler_address(scheduler)
    if address:
        try:
            client = Client(address, timeout="20s")
        except OSError as e:
            raise ParameterError(f"cannot reach Dask scheduler {address!r}: {e}; is the address right and "
                             "the scheduler running?") from None
        _say(f"dask: scheduler {address}  dashboard {client.dashboard_link}", quiet)
        try:
            yield client
        finally:
            client.close()
        return
    n = n_workers or os.cpu_count() or 1
    # The workers ignore SIGINT (they inherit SIG_IGN): Ctrl-C in a terminal reaches the
    # whole process group, and only this process should react, by closing the cluster.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
    try:
        with dask.config.set({**WORKER_MALLOC, **MONITORING}):
            cluster = LocalCluster(
                n_workers=n,
                threads_per_worker=threads_per_worker,
                processes=True,
                dashboard_address="127.0.0.1:0" if dashboard else None,
                env=WORKER_ENV,
                # task errors reach the user as one line from run_shards, not as worker log tracebacks
                silence_logs=logging.CRITICAL,
            )
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    client = Client(cluster)
    client.register_plugin(QuietAsyncio())
    _say(f"dask: LocalCluster with {n} workers, scheduler {cluster.scheduler_address}  "
         f"dashboard {client.dashboard_link}", quiet)
    try:
        yield client
    finally:
        _close_quietly(client, cluster)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _close_quietly(client, cluster) -> None:
    """Close the client and the cluster without letting shutdown noise reach the terminal."""
    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    with contextlib.suppress(Exception):
        client.close()
    with contextlib.suppress(Exception):
        cluster.close()


@contextlib.contextmanager
def using_client(client=None, *, scheduler: str | None = None, n_workers: int | None = None,
                 dashboard: bool = True, quiet: bool = False) -> Iterator[Any]:
    """The caller's client if it gave one, else a new one from :func:`client_for`, closed on exit."""
    if client is not None:
        yield client
        return
    with client_for(scheduler, n_workers=n_workers, dashboard=dashboard, quiet=quiet) as c, _sigint_remembered():
        yield c


_SIGINT_SEEN = False


@contextlib.contextmanager
def _sigint_remembered() -> Iterator[None]:
    """Remember a Ctrl-C as well as raising it, so that one swallowed is raised again.

    Python raises KeyboardInterrupt in whatever code runs when SIGINT arrives; inside
    a callback (distributed's garbage-collection diagnosis, a weakref finalizer) it is
    printed as "Exception ignored" and lost, and the stage would run on to the end.
    The wait loops call :func:`_raise_if_interrupted` after each finished task.
    """
    global _SIGINT_SEEN
    if not _main_thread() or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield  # another thread, or SIGINT ignored (a background job) or handled by the caller
        return

    def on_sigint(signum, frame):
        global _SIGINT_SEEN
        _SIGINT_SEEN = True
        raise KeyboardInterrupt

    _SIGINT_SEEN = False
    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        _SIGINT_SEEN = False


def _raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C arrived during this job (see :func:`_sigint_remembered`)."""
    if _SIGINT_SEEN:
        raise KeyboardInterrupt


def active_client():
    """The ``distributed.Client`` this process is already using, or None."""
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def worker_threads() -> int:
    """Threads of the Dask worker running the calling task (1 outside a worker)."""
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError):
        return 1


def total_threads(client) -> int:
    """Worker threads available on the cluster."""
    return max(1, sum(client.nthreads().values()))


def _apply_one(fn: Callable, kwargs: dict) -> Callable:
    def run(part: list) -> list:
        return [fn(x, **kwargs) for x in part]

    run.__name__ = getattr(fn, "__name__", "task")
    return run


def run_shards(
    client,
    fn: Callable,
    shards: Sequence,
    *,
    name: str,
    kwargs: dict | None = None,
    progress: bool = True,
    retries: int = 2,
    check: Callable[[], None] | None = None,
) -> list:
    """Run ``fn(shard, **kwargs)`` for every shard as one task each.

    The shards go through a Dask bag with one shard per partition, so the
    dashboard shows tasks named ``<name>``.  Results come back in shard
    order.  A task that still fails after ``retries`` retries fails the
    stage at once: the tasks not yet finished are cancelled (what they
    committed stays), so a lasting storage outage costs one task's retry
    budget rather than every task's.

    ``check()``, if given, is called as each task finishes (a store lease's
    :meth:`~msdmatch.io.lock.Lease.check`); if it raises, the tasks not yet
    finished are cancelled and its error ends the stage.

    Raises
    ------
    MsdmatchError
        The task's own error if it is one, else :class:`StageError`.
    """
    import dask.bag as db
    from distributed import as_completed

    if not shards:
        return []
    bag = db.from_sequence(list(shards), partition_size=1)
    token = f"{name}-{uuid.uuid4().hex[:8]}"
    bag = bag.map_partitions(_apply_one(fn, kwargs or {}), token=token)
    # Shard functions are idempotent (a part is rewritten whole), so a task that
    # failed on a transient error (S3 outage, lost worker) can simply run again.
    futures = client.compute(bag.to_delayed(optimize_graph=False), retries=retries)
    index = {f.key: i for i, f in enumerate(futures)}
    results: list = [None] * len(futures)
    bar = _bar(len(futures), name, progress)
    try:
        for n_done, fut in enumerate(as_completed(futures)):
            if fut.status == "error":
                exc = fut.exception()  # before the cancel, which forgets it
                client.cancel(futures)
                raise _task_error(exc, name=name, done=n_done, total=len(futures), retries=retries)
            results[index[fut.key]] = fut.result()[0]
            bar.update(1)
            _raise_if_interrupted()
            if check is not None:
                try:
                    check()
                except MsdmatchError:
                    client.cancel(futures)
                    raise
    finally:
        bar.close()
    return results


def _task_error(exc: BaseException, *, name: str, done: int, total: int, retries: int) -> MsdmatchError:
    """The one-line error that ends a stage whose task failed for good."""
    if isinstance(exc, MsdmatchError):
        return exc
    err = StageError(
        f"a {name} task failed after {retries} retries ({one_line(exc)}); {done} of {total} tasks "
        "had finished and are kept: re-run the same command to resume"
    )
    err.__cause__ = exc
    return err


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, for one-line error reports."""
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0][:300]}" if msg else type(exc).__name__


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="task", disable=None if enabled else True, file=sys.stderr)


# ----------------------------------------------------------------------------- batched stages


def hold(client, fn: Callable, items: Sequence, *, name: str, retries: int = 2, **kwargs) -> list:
    """Submit ``fn(item, **kwargs)`` per item and return the futures, to be held for the whole stage.

    The results stay in the memory of the workers that computed them (a
    match job's loaded database shards), and the tasks that take them as
    arguments run there.  A worker that dies takes its results with it;
    Dask recomputes them from the same call when a task needs them again.
    Release them with :func:`release` once the stage is done.
    """
    token = uuid.uuid4().hex[:8]
    return [client.submit(fn, x, key=f"{name}-{i}-{token}", retries=retries, **kwargs)
            for i, x in enumerate(items)]


def release(futures: Sequence) -> None:
    """Let the workers drop what :func:`hold` kept."""
    for f in futures:
        f.release()


def run_batches(
    client,
    batches: Sequence,
    graph: Callable[[Callable, Any], Any],
    *,
    name: str,
    max_in_flight: int,
    progress: bool = True,
    retries: int = 2,
    unit: str = "batch",
    weight: Callable[[Any], int] = lambda b: 1,
) -> list:
    """Run a stage batch by batch with at most ``max_in_flight`` batches submitted at once.

    ``graph(submit, batch)`` submits one batch's tasks through ``submit(fn,
    *args, name=..., **kwargs)`` (a ``client.submit`` with retries and a
    unique key ``<name>-<n>-<token>``; futures may be passed as arguments)
    and returns the future of its last task, whose result must be small:
    it is what this returns for the batch.  A batch's intermediate results
    are released as soon as its last task is done, so the workers' memory is
    bounded by the batches in flight and the client's by their small
    results.  Batches run in the order given (earlier ones have priority).

    Raises
    ------
    MsdmatchError
        The task's own error if it is one, else :class:`StageError`, once a
        batch's task failed after ``retries`` retries; batches not finished
        are cancelled, those finished stay committed.
    """
    from distributed import as_completed

    if not batches:
        return []
    token = uuid.uuid4().hex[:8]
    counter = iter(range(1 << 62))

    def submit(fn: Callable, *args, name: str, **kwargs):
        return client.submit(fn, *args, key=f"{name}-{next(counter)}-{token}", retries=retries,
                             priority=-order, **kwargs)

    results: list = [None] * len(batches)
    pending = list(enumerate(batches))[::-1]
    index: dict[str, int] = {}
    ac = as_completed()
    in_flight: list = []
    order = 0

    def top_up() -> None:
        nonlocal order
        while pending and len(in_flight) < max_in_flight:
            i, b = pending.pop()
            order = i
            fut = graph(submit, b)
            index[fut.key] = i
            in_flight.append(fut)
            ac.add(fut)

    bar = _bar(sum(weight(b) for b in batches), f"{name} ({unit})", progress)
    n_done = 0
    try:
        top_up()
        for fut in ac:
            in_flight.remove(fut)
            if fut.status == "error":
                exc = fut.exception()
                client.cancel(in_flight)
                raise _task_error(exc, name=name, done=n_done, total=len(batches), retries=retries)
            i = index.pop(fut.key)
            results[i] = fut.result()
            fut.release()
            n_done += 1
            bar.update(weight(batches[i]))
            _raise_if_interrupted()
            top_up()
    finally:
        bar.close()
    return results
