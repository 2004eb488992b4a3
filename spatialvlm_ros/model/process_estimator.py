"""
A distance estimator that runs in a child process, with its own interpreter and GIL.

Why: the model's Python code (one small torch call after another for a compact model) needs the
GIL between operations. Inside a ROS node it shares that lock with the executor and the
callbacks, and measured on the 2-core CPU of ``benchmarks/bench_node.py`` one answer of the
shipped model took 33-38 ms in the node against 26 ms alone. In a child process it runs at its
standalone speed, and the parent only waits on a pipe (which releases the GIL).

:class:`ProcessEstimator` wraps any estimator built by a picklable ``build(**kwargs)`` (e.g.
:func:`spatialvlm_ros.model.estimator.build_estimator`), keeps the ``estimate`` / ``close``
protocol and reports the keywords the wrapped ``estimate`` accepts (``estimate_keywords``), so
callers pass only those. The child is started with ``spawn`` (safe with CUDA and threads), and
closing the estimator ends the child, which frees all of its memory, GPU memory included. The
child ignores Ctrl-C (the parent ends it) and exits by itself when the parent dies, as its end
of the pipe then reads EOF: no model process is left behind.

Messages are pickled through a ``multiprocessing`` pipe between this process and the child it
started, never read from a file or a socket others can reach. Errors: a build failure raises in
the constructor with the child's message; an exception in ``estimate`` is raised here as
:class:`EstimatorProcessError` (the child keeps serving); a dead or hung child raises
:class:`EstimatorProcessError` naming its exit code, and later calls say why it was closed
(the exit code, the timeout, or an interrupted call, whose late reply is never taken for the
next call's).
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from typing import Any, Callable

import numpy as np

from spatialvlm_ros.model.estimator import DistanceEstimate, keyword_names


class EstimatorProcessError(RuntimeError):
    """The child process failed, died, timed out, or its estimator raised."""


def _keywords(function: Callable[..., Any]) -> tuple[str, ...] | None:
    """Return the keyword names ``function`` takes beyond (image, subject, target); None = any."""
    names = keyword_names(function)
    if names is None:
        return None
    return tuple(sorted(names - {'image', 'subject', 'target'}))


def _serve(conn: Any, build: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Child: build the estimator, answer requests until 'close' or the pipe closes."""
    # Ctrl-C reaches the whole process group: the parent decides when this process ends (it
    # closes the pipe or sends 'close'); if the parent dies, recv() sees EOF and this returns
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        estimator = build(**kwargs)
        info = {'name': str(getattr(estimator, 'name', '') or type(estimator).__name__),
                'device': str(getattr(estimator, 'device', '') or ''),
                'keywords': _keywords(estimator.estimate)}
    except BaseException as exc:  # report any build failure to the parent, then exit
        conn.send(('error', f'{type(exc).__name__}: {exc}'))
        conn.close()
        return
    conn.send(('ready', info))
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return  # the parent went away
            if message[0] == 'close':
                return
            _, image, subject, target, options = message
            try:
                reply = ('ok', estimator.estimate(image, subject, target, **options))
            except Exception as exc:  # the parent raises it; this process keeps serving
                reply = ('error', f'{type(exc).__name__}: {exc}')
            conn.send(reply)
    finally:
        try:
            estimator.close()
        finally:
            conn.close()


class ProcessEstimator:
    """
    Run ``build(**kwargs)``'s estimator in a spawned child process.

    :param build: picklable callable (a module-level function or class) returning an estimator
        with ``estimate(image, subject, target, **keywords) -> DistanceEstimate`` and
        ``close()``.
    :param kwargs: keyword arguments of ``build`` (picklable).
    :param start_timeout_s: most seconds to wait for the child to build the estimator.
    :param call_timeout_s: most seconds one ``estimate`` may take; None waits forever. After a
        timeout the child is stopped and the estimator is closed (its state is unknown).

    ``image`` is RGB uint8 HxWx3 as for any estimator. Not thread-safe: one call at a time.
    """

    def __init__(self, build: Callable[..., Any], kwargs: dict[str, Any] | None = None, *,
                 start_timeout_s: float = 600.0, call_timeout_s: float | None = 120.0) -> None:
        if call_timeout_s is not None and call_timeout_s <= 0:
            raise ValueError(f'call_timeout_s must be > 0 or None, got {call_timeout_s}')
        context = multiprocessing.get_context('spawn')
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=_serve, args=(child_conn, build, kwargs or {}),
                                        name='spatialvlm-estimator', daemon=True)
        self._process.start()
        child_conn.close()
        self._call_timeout_s = call_timeout_s
        self._closed = False
        self._closed_because = ''  # why a call stopped the process (timeout, death, interrupt)
        kind, payload = self._receive(start_timeout_s, 'building the estimator')
        if kind != 'ready':
            self._stop()
            raise EstimatorProcessError(f'the estimator process could not build the estimator: '
                                        f'{payload}')
        self.name: str = payload['name']
        self.device: str = payload['device']
        self.estimate_keywords: tuple[str, ...] | None = payload['keywords']
        self.pid: int | None = self._process.pid

    def _receive(self, timeout_s: float | None, doing: str) -> tuple[Any, ...]:
        try:
            ready = self._conn.poll(timeout_s)
        except (EOFError, OSError):
            ready = True  # recv below reports the broken pipe
        if not ready:
            self._stop()
            self._closed_because = f'it took longer than {timeout_s} s {doing}'
            raise EstimatorProcessError(f'the estimator process took longer than {timeout_s} s '
                                        f'{doing}; it was stopped')
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise self._gone(f'died while {doing}') from None

    def _gone(self, what: str) -> EstimatorProcessError:
        """Reap the dead child, close this end and return the error naming its exit code."""
        self._process.join(timeout=5.0)
        code = self._process.exitcode
        self._stop()
        self._closed_because = f'it {what} (exit code {code})'
        return EstimatorProcessError(f'the estimator process {what} (exit code {code})')

    def estimate(self, image: np.ndarray, subject: str, target: str,
                 **keywords: Any) -> DistanceEstimate:
        """
        Return the child's estimate for ``image`` (RGB uint8 HxWx3).

        Keywords the wrapped ``estimate`` does not accept are dropped (see
        ``estimate_keywords``). Raises :class:`EstimatorProcessError` as described above.
        """
        if self._closed:
            why = f': {self._closed_because}' if self._closed_because else ''
            raise EstimatorProcessError(f'the estimator process was closed{why}')
        if self.estimate_keywords is not None:
            keywords = {k: v for k, v in keywords.items() if k in self.estimate_keywords}
        start = time.perf_counter()
        try:
            self._conn.send(('estimate', image, subject, target, keywords))
        except (BrokenPipeError, EOFError, OSError):
            raise self._gone('is gone') from None
        # one call at a time, and a timeout stops the child: this reply is this call's
        try:
            kind, payload = self._receive(self._call_timeout_s, 'estimating')
        except BaseException as exc:
            if not self._closed:  # interrupted (Ctrl-C): its reply would answer the next call
                self._stop()
                self._closed_because = f'a call was interrupted ({type(exc).__name__})'
            raise
        if kind == 'error':
            raise EstimatorProcessError(f'the estimator raised in its process: {payload}')
        result: DistanceEstimate = payload
        result.latency_s = time.perf_counter() - start
        return result

    @property
    def alive(self) -> bool:
        """Return whether the child process is running."""
        return self._process.is_alive()

    def _stop(self) -> None:
        self._closed = True
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=10.0)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout=5.0)
        self._conn.close()

    def close(self) -> None:
        """Close the wrapped estimator and end the child (waits up to 30 s, then kills it)."""
        if self._closed:
            return
        try:
            self._conn.send(('close',))
        except (BrokenPipeError, EOFError, OSError):
            pass  # already gone: _stop reaps it
        self._process.join(timeout=30.0)
        self._stop()

    def __enter__(self) -> ProcessEstimator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
