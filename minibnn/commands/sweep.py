"""``minibnn sweep SPEC.toml --out DIR``: run every point of a grid, locally or on Dask.

    DIR/sweep.toml        the spec the last invocation ran (``minibnn show DIR`` reads it)
    DIR/runs/<label>-<id>.h5  one ordinary run file per point: ``<label>`` names its values
                          of the options that vary (``lr=0.01_seed=1``), ``<id>`` is
                          ``sweep_spec.spec_id`` (``run_file_name``)
    DIR/summary.csv       one row per point: its grid values, status (done / failed /
                          pending), epochs, val_acc, test_acc, seconds, run_file, reason

Each point is an ordinary ``fit`` writing its run file after every epoch, so running the same
command again trains nothing that is finished and resumes unfinished points exactly where their
run files stopped (Ctrl-C or kill -9 loses at most the epoch in flight of each point).  A point
that fails is marked failed with its one-line reason and the others go on.  ``summary.csv`` is
rewritten atomically at most every ``SUMMARY_EVERY_S`` seconds and at the end (a kill leaves a
whole, earlier table; the run files are the truth, and a re-run rebuilds it).  A point's run
file is found by its id under either name, ``<label>-<id>.h5`` or the ``<id>.h5`` of folders made
before labels (resumed in place under that name), so a label that changes (an option gaining
values, the grid reordered) loses no run.  A folder holding another sweep is refused unless
``replace_spec``.  One sweep at a time may use ``DIR`` (an advisory lock, ``DIR/.lock``, names
the holder's pid).

Execution: ``workers`` local processes (default: one per core), each on one thread
(``--threads 1``: the same bits as any other thread count, ``kernels.threads``); or, with
``scheduler`` (``tcp://HOST:PORT``), the tasks of a Dask distributed cluster (the optional
extra ``dist``), whose workers must see ``DIR`` at the same path (a shared file system) and
should run one thread each (``dask worker --nthreads 1``).
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
import time
from typing import Any, Callable, Iterator, Sequence

from minibnn.data import check_data_dir
from minibnn.errors import MinibnnError, os_reason
from minibnn.commands.sweep_spec import Point, Sweep, read_sweep, value_key
from minibnn.run.stop_signals import raise_if_stopped

RESULT_COLUMNS = ("status", "epochs", "val_acc", "test_acc", "seconds", "run_file", "reason")


def run_point(task: dict[str, Any]) -> dict[str, Any]:
    """Train (or finish, or just read) one point; never raises for a failing run.

    ``task``: ``spec`` (``RunSpec.to_dict()``), ``run_file`` (path), ``local`` (machine-local
    settings).  Runs on one thread (``local["threads"]``, set by ``_task``: a worker per core).
    Returns the row's result columns.
    """
    from minibnn.kernels.threads import using_threads

    with using_threads(task["local"].get("threads")):
        try:
            return _train_point(task)
        except KeyboardInterrupt:
            raise
        except MinibnnError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        except Exception as exc:                    # a bug or resource error: keep the others
            first = str(exc).splitlines()[0] if str(exc) else ""
            reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return {**read_result(task["run_file"]), "status": "failed", "reason": reason}


def _train_point(task: dict[str, Any]) -> dict[str, Any]:
    from minibnn.run.spec import Local, spec_from_dict
    from minibnn.run.train import fit

    path, spec = task["run_file"], spec_from_dict(task["spec"])
    local = Local(**task["local"])
    quiet: Callable[[str], None] = lambda _: None       # noqa: E731
    if os.path.exists(path):
        if read_result(path)["status"] != "done":
            fit(None, path, resume=True, progress=False, log=quiet, local=task["local"])
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fit(spec, path, progress=False, log=quiet, local=local)
    return read_result(path)


def pending_row(path: str) -> dict[str, Any]:
    """The result columns of a point with nothing stored yet."""
    return {"status": "pending", "epochs": 0, "val_acc": "", "test_acc": "", "seconds": "",
            "run_file": path, "reason": ""}


def read_result(path: str) -> dict[str, Any]:
    """The result columns of a run file: done when its last epoch is stored, else pending."""
    from minibnn.run.files import load_run
    from minibnn.run.spec import read_stored_config

    empty = pending_row(path)
    if not os.path.exists(path):
        return empty
    try:
        run = load_run(path)
        spec, _ = read_stored_config(run.config_json)
    except MinibnnError as exc:
        return {**empty, "status": "failed", "reason": str(exc).splitlines()[0]}
    done = run.checkpoint.epoch if run.checkpoint is not None else 0
    m = run.metrics
    last = lambda name: _number(m[name][-1]) if m.get(name) else ""     # noqa: E731
    return {"status": "done" if done >= spec.loop.epochs else "pending", "epochs": done,
            "val_acc": last("val_acc"), "test_acc": last("test_acc"),
            "seconds": _number(sum(m.get("seconds", []))) if m.get("seconds") else "",
            "run_file": path, "reason": ""}


def _number(value: float) -> Any:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


# --- the summary file -------------------------------------------------------------------

def summary_rows(sweep: Sweep, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for point in sweep.points:
        values = {name: _cell(v) for name, v in point.values.items()}
        rows.append({**values, **results[point.id]})
    return rows


def _cell(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return value


def write_summary(path: str, sweep: Sweep, results: dict[str, dict[str, Any]]) -> None:
    from minibnn.run.files import atomic_bytes

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(sweep.axes) + list(RESULT_COLUMNS),
                            lineterminator="\n")
    writer.writeheader()
    folder = os.path.dirname(os.path.abspath(path))
    for row in summary_rows(sweep, results):       # run files relative to the sweep folder
        writer.writerow({**row, "run_file": os.path.relpath(row["run_file"], folder)})
    atomic_bytes(path, text.getvalue().encode())


def read_summary(path: str) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except OSError as exc:
        raise MinibnnError(f"cannot read {path}: {os_reason(exc)}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MinibnnError(f"cannot read {path}: not a sweep's summary table ({exc})") from None


# --- running ----------------------------------------------------------------------------

#: summary.csv is rewritten at most this often while points finish (and always at the end)
SUMMARY_EVERY_S = 5.0


def sweep(spec_path: str, out_dir: str, workers: int | None = None,
          scheduler: str | None = None, data_dir: str | None = None, progress: bool = True,
          log: Callable[[str], None] = print, replace_spec: bool = False
          ) -> list[dict[str, Any]]:
    """Run the sweep in ``spec_path`` into ``out_dir``; returns the summary rows.

    ``out_dir`` holding another sweep (a ``sweep.toml`` with other points, or one that cannot
    be read as a sweep spec) is refused unless ``replace_spec``: its run files stay, its
    summary.csv and sweep.toml become this sweep's."""
    from minibnn.run.files import atomic_bytes
    from minibnn.run.lock import hold

    if out_dir == "":
        raise MinibnnError("--out is empty; give the sweep's folder (DIR)")
    parsed, text = read_sweep(spec_path)
    if workers is not None and workers < 1:
        raise MinibnnError(f"--workers must be >= 1, got {workers}")
    if workers is not None and scheduler is not None:
        raise MinibnnError("--workers sets local processes; with --scheduler the cluster's "
                           "workers run the points: drop one")
    if scheduler is not None:
        check_scheduler(scheduler)
    local = parsed.local if data_dir is None else _with_data_dir(parsed, data_dir)
    if scheduler is None:                # a cluster's workers may keep a folder this machine lacks
        check_sweep_data_dir(local.data_dir, {p.spec.data.name for p in parsed.points},
                             "--data-dir" if data_dir is not None
                             else f"{spec_path} [base] data-dir")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise MinibnnError(f"cannot create {out_dir}: {os_reason(exc)}") from None
    runs = os.path.join(out_dir, "runs")
    with hold(os.path.join(out_dir, ".lock"), f"the sweep in {out_dir}"):
        if not replace_spec:
            _check_same_sweep(os.path.join(out_dir, "sweep.toml"), parsed)
        try:
            os.makedirs(runs, exist_ok=True)
        except OSError as exc:
            raise MinibnnError(f"cannot create {runs}: {os_reason(exc)}") from None
        atomic_bytes(os.path.join(out_dir, "sweep.toml"), text.encode())
        existing = find_run_files(runs, [p.id for p in parsed.points])
        axes = varying_axes(parsed)
        tasks = {p.id: _task(p, existing.get(p.id, os.path.join(runs, run_file_name(p, axes))),
                             local) for p in parsed.points}
        results = {pid: read_result(t["run_file"]) for pid, t in tasks.items()}
        summary = os.path.join(out_dir, "summary.csv")
        write_summary(summary, parsed, results)
        todo = [pid for pid, r in results.items() if r["status"] != "done"]
        log(f"sweep {spec_path}: {len(parsed.points)} points, {len(parsed.points) - len(todo)} "
            f"already done, {len(todo)} to run "
            f"({'on ' + scheduler if scheduler else f'{_workers(workers)} local workers'})")
        if parsed.repeated_trials:
            log(f"{parsed.repeated_trials} random trial(s) drew an earlier trial's values: "
                "each such run is made once")
        run_all = _run_dask if scheduler else _run_local
        bar = _bar(len(parsed.points), len(parsed.points) - len(todo), progress)
        written = time.monotonic()
        try:
            for pid, result in run_all([tasks[p] for p in todo], scheduler or workers):
                results[pid] = result
                if time.monotonic() - written >= SUMMARY_EVERY_S:   # atomic, so a kill
                    write_summary(summary, parsed, results)         # leaves a whole file
                    written = time.monotonic()
                bar.update(1)
                if result["status"] == "failed":
                    log(f"point {_describe(parsed, pid)} failed: {result['reason']}")
        except SchedulerLost:
            # the points in flight are unfinished, not failed: their run files resume (points
            # that finished or failed before the loss keep their rows)
            for pid in todo:
                if results[pid]["status"] not in ("done", "failed"):
                    results[pid] = read_result(tasks[pid]["run_file"])
            done = sum(r["status"] == "done" for r in results.values())
            raise MinibnnError(f"the Dask scheduler at {scheduler} was lost; {done} points "
                               f"done, {len(parsed.points) - done} unfinished; re-run to "
                               "resume") from None
        finally:
            bar.close()
            write_summary(summary, parsed, results)
        failed = sum(r["status"] == "failed" for r in results.values())
        done = sum(r["status"] == "done" for r in results.values())
        log(f"{done} of {len(parsed.points)} points done"
            f"{f', {failed} failed' if failed else ''}; summary {summary}")
        return summary_rows(parsed, results)


# --- run file names ---------------------------------------------------------------------

#: the longest label a run file name gets before ``-<id>.h5`` (the id keeps names unique)
MAX_LABEL = 80
#: characters a label keeps; every other run of characters becomes one ``-``
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")


def varying_axes(parsed: Sweep) -> tuple[str, ...]:
    """The columns that take more than one value over the sweep's points (a label's options)."""
    return tuple(a for a in parsed.axes
                 if len({value_key(p.values[a], a) for p in parsed.points}) > 1)


def run_file_name(point: Point, axes: Sequence[str]) -> str:
    """``lr=0.01_seed=1-0b7e868cf060.h5``: the point's values of ``axes``, made a safe file
    name (only ``[A-Za-z0-9._=-]``, at most ``MAX_LABEL`` characters), then its id; just
    ``<id>.h5`` when ``axes`` is empty."""
    label = "_".join(f"{a}={_cell(point.values[a])}" for a in axes)
    label = _UNSAFE.sub("-", label)[:MAX_LABEL].strip("-._")
    return f"{label}-{point.id}.h5" if label else f"{point.id}.h5"


def find_run_files(runs: str, ids: Sequence[str]) -> dict[str, str]:
    """The run file already in ``runs`` of each of ``ids`` that has one: ``<id>.h5`` (folders
    made before labels) or ``<label>-<id>.h5``; the old name wins if both exist, then the
    first in sorted order."""
    wanted, found = set(ids), {}
    try:
        names = sorted(os.listdir(runs))
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise MinibnnError(f"cannot list {runs}: {os_reason(exc)}") from None
    for name in names:
        stem = name[:-len(".h5")] if name.endswith(".h5") else ""
        pid = stem[-12:]
        if pid in wanted and (stem == pid or stem[-13:-12] == "-"):
            if stem == pid or pid not in found:
                found[pid] = os.path.join(runs, name)
    return found


def check_sweep_data_dir(data_dir: str | None, datasets: set[str], where: str) -> None:
    """``data.check_data_dir`` for a sweep's points: the folder must exist for the data sets
    that read one; the synthetic set refuses it only when every point is synthetic (points
    of other data sets need it)."""
    for dataset in sorted(datasets - {"synthetic"}) or ["synthetic"]:
        check_data_dir(data_dir, dataset, where)


def _check_same_sweep(path: str, parsed: Sweep) -> None:
    """A one-line error when the folder's ``sweep.toml`` is another sweep (other points), or
    cannot be read as one (an edited or damaged file is not replaced behind the user's back)."""
    if not os.path.exists(path):
        return
    folder = os.path.dirname(path) or "."
    replace = ("use another --out, or --replace-spec to make it this sweep (run files stay; "
               "summary.csv and sweep.toml are replaced)")
    try:
        stored, _ = read_sweep(path)
    except MinibnnError as exc:
        raise MinibnnError(f"{folder} holds a sweep.toml that cannot be read as a sweep spec "
                           f"({exc}): {replace}") from None
    old, new = {p.id for p in stored.points}, {p.id for p in parsed.points}
    if old != new:
        raise MinibnnError(f"{folder} holds another sweep ({len(old)} points, {len(old & new)} "
                           f"of them in this one): {replace}")


def _with_data_dir(parsed: Sweep, data_dir: str) -> Any:
    import dataclasses

    return dataclasses.replace(parsed.local, data_dir=data_dir)


def _task(point: Point, run_file: str, local: Any) -> dict[str, Any]:
    import dataclasses

    return {"id": point.id, "spec": point.spec.to_dict(),
            "run_file": os.path.abspath(run_file),
            "local": dataclasses.asdict(dataclasses.replace(local, threads=1))}


def _describe(parsed: Sweep, pid: str) -> str:
    point = next(p for p in parsed.points if p.id == pid)
    return " ".join(f"{k}={_cell(v)}" for k, v in point.values.items()) or pid


def _workers(workers: int | None) -> int:
    return workers or os.cpu_count() or 1


def _bar(total: int, done: int, enabled: bool) -> Any:
    from tqdm import tqdm

    # disable=None: tqdm draws only on a terminal
    return tqdm(total=total, initial=done, unit="point", desc="sweep",
                disable=True if not enabled else None)


def _run_local(tasks: list[dict[str, Any]], workers: int | None
               ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each task in one of ``workers`` spawned processes; results as they finish.

    The sweep hands each worker one task at a time over its own pipe, so it always knows which
    point a worker holds: a worker that dies (killed, out of memory) fails only that point, a
    new worker takes its place, and the other points go on. When the sweep ends for any reason
    (Ctrl-C, SIGTERM, an error) it terminates its workers; if it is killed outright they get
    SIGTERM from the kernel (``die_with_parent``).
    """
    if not tasks:
        return
    import multiprocessing
    from collections import deque
    from multiprocessing.connection import wait as wait_any

    import signal

    context = multiprocessing.get_context("spawn")     # no fork of a threaded parent
    queue = deque(tasks)
    by_id = {t["id"]: t for t in tasks}
    pipes: dict[Any, Any] = {}                         # pipe -> its worker process
    holds: dict[Any, str] = {}                         # pipe -> the point its worker runs
    target = min(_workers(workers), len(tasks))
    spare_starts = 4 * target                          # workers that die before any point

    def give_next(pipe: Any) -> None:
        task = queue.popleft() if queue else None       # None: no more points, it exits
        try:
            pipe.send(task)
        except OSError:                                 # it died: its sentinel says so next
            if task is not None:
                queue.appendleft(task)
            return
        if task is not None:
            holds[pipe] = task["id"]

    def start_worker() -> None:
        ours, theirs = context.Pipe()
        process = context.Process(target=_worker, args=(theirs, os.getpid()), daemon=True)
        pipes[ours] = process                           # tracked before it can run
        # the child inherits SIG_IGN for SIGINT from its first instruction: Ctrl-C is the
        # sweep's to handle, never a traceback from a worker still starting up
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            process.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        theirs.close()
        give_next(ours)

    try:
        for _ in range(target):
            start_worker()
        while holds or queue:
            raise_if_stopped()                          # a stop signal whose raise was lost
            if not pipes:                               # workers keep dying before a point
                while queue:
                    task = queue.popleft()
                    yield task["id"], {**_row_or_pending(task["run_file"]), "status": "failed",
                                       "reason": "worker lost before it started the point"}
                break
            sentinels = {process.sentinel: pipe for pipe, process in pipes.items()}
            for ready in wait_any(list(holds) + list(sentinels), timeout=1.0):
                pipe = sentinels.get(ready, ready)
                if pipe not in pipes:
                    continue                            # handled this round already
                try:
                    pid, result = pipe.recv() if ready is pipe else (None, None)
                except (EOFError, OSError):
                    pid = None
                if pid is not None:                     # a point finished
                    del holds[pipe]
                    yield pid, result
                    give_next(pipe)
                    continue
                process = pipes.pop(pipe)               # the worker is gone (or its pipe)
                if process.is_alive():
                    process.terminate()
                process.join()
                pipe.close()
                lost = holds.pop(pipe, None)
                if lost is not None:
                    code = process.exitcode
                    how = f"killed by signal {-code}" if code and code < 0 else f"exit {code}"
                    yield lost, {**_row_or_pending(by_id[lost]["run_file"]),
                                 "status": "failed", "reason": f"worker lost ({how})"}
                elif queue:
                    spare_starts -= 1                   # died between points, or at start
                if queue and len(pipes) < target and spare_starts > 0:
                    start_worker()
    finally:
        for pipe, process in pipes.items():
            if process.is_alive():
                process.terminate()
            process.join()
            pipe.close()


def _row_or_pending(path: str) -> dict[str, Any]:
    """``read_result``, or a pending row where even that fails (the sweep must go on)."""
    try:
        return read_result(path)
    except Exception:                                   # noqa: BLE001  (any: keep the others)
        return pending_row(path)


def _worker(pipe: Any, parent: int) -> None:
    """A local sweep worker: run the points the sweep sends, one at a time, until ``None``.
    Ctrl-C is the sweep's to handle (it terminates its workers), so a worker ignores SIGINT."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)
    while True:
        try:
            task = pipe.recv()
        except EOFError:                                # the sweep is gone
            return
        if task is None:
            return
        pipe.send((task["id"], run_point(task)))


def die_with_parent(parent: int) -> None:
    """A worker's first act: ask the kernel to send it SIGTERM when the sweep process dies,
    however it dies (kill -9 included), so no worker trains on as an orphan (Linux
    ``prctl(PR_SET_PDEATHSIG)``; elsewhere nothing is set). Its run file keeps every finished
    epoch, and the next ``minibnn sweep`` resumes it."""
    import ctypes
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)                   # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:                          # the parent died before prctl ran
        os.kill(os.getpid(), signal.SIGTERM)


def _result_of(future: Any, tasks: list[dict[str, Any]], pid: str) -> dict[str, Any]:
    """A finished future's row; a worker that died (killed, out of memory) fails its point."""
    try:
        return future.result()
    except Exception as exc:
        path = next(t["run_file"] for t in tasks if t["id"] == pid)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return {**read_result(path), "status": "failed", "reason": f"worker lost: {reason}"}


def check_scheduler(address: str) -> str:
    """``address`` if it is a Dask scheduler address ``tcp://HOST:PORT`` (or ``tls://``), else a
    one-line error: checked before anything runs, never a traceback from Dask."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:
        port, parts = None, None
    if parts is None or parts.scheme not in ("tcp", "tls") or not parts.hostname \
            or port is None or parts.path not in ("", "/"):
        raise MinibnnError(f"--scheduler must be a Dask scheduler address tcp://HOST:PORT (or "
                           f"tls://HOST:PORT), got {address!r}")
    return address


def _run_dask(tasks: list[dict[str, Any]], address: str
              ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each task on the Dask cluster at ``address``; results as they finish."""
    if not tasks:
        return
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise MinibnnError("--scheduler needs Dask distributed: pip install "
                           "'minibnn[dist]'") from None
    try:
        client = Client(address, timeout=10)
    except (OSError, TimeoutError, ValueError) as exc:
        raise MinibnnError(f"cannot reach the Dask scheduler at {address} "
                           f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                           ) from None
    try:
        futures = {client.submit(run_point, t, key=f"minibnn-{t['id']}", pure=False): t["id"]
                   for t in tasks}
        for future in as_completed(futures):
            raise_if_stopped()                   # a stop signal whose raise was lost
            if future.status == "cancelled" and client.status != "running":
                raise SchedulerLost(address)     # Dask cancels every future it had
            pid = futures[future]
            yield pid, _result_of(future, tasks, pid)
    finally:
        _close_quietly(client)


class SchedulerLost(MinibnnError):
    """The Dask scheduler went away during a sweep (the points it held are unfinished)."""


def _close_quietly(client: Any) -> None:
    """Close a Dask client; after a lost scheduler its reconnection attempts would log
    tracebacks, so Dask's loggers are silenced for the close."""
    import logging

    loggers = [logging.getLogger(name) for name in ("distributed", "distributed.client")]
    levels = [logger.level for logger in loggers]
    if client.status != "running":
        for logger in loggers:
            logger.setLevel(logging.CRITICAL + 1)
    try:
        client.close(timeout=5)
    except Exception:           # a client that cannot close cleanly is closed enough
        pass
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def run_cli(spec_path: str, out_dir: str, workers: int | None, scheduler: str | None,
            data_dir: str | None, progress: bool, replace_spec: bool = False) -> int:
    rows = sweep(spec_path, out_dir, workers, scheduler, data_dir, progress,
                 replace_spec=replace_spec)
    return 0 if all(r["status"] == "done" for r in rows) else 1
