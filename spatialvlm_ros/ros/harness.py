"""
An rclpy session for in-process graphs (own Context, background executor), and the executors.

Used by the live bag replay, the tests and the benchmarks. The domain id comes from
``ROS_DOMAIN_ID`` or is drawn at random (1..100) so an in-process graph does not talk to a
robot on the default domain; discovery defaults to localhost.

:func:`make_executor` builds the executor a node spins on: ``'single_threaded'`` runs callbacks
in the spinning thread, ``'multi_threaded'`` hands them to a thread pool (needed where callbacks
block, e.g. nodes that wait on each other in one process). rclpy's experimental
``EventsExecutor`` (Jazzy 7.1.6) is not offered: measured here, its spin thread busy-waits at a
whole core even with nothing to do.

``'multi_threaded'`` is :class:`PacedMultiThreadedExecutor`, rclpy's ``MultiThreadedExecutor``
without its dispatch busy loop (ros2/rclpy#1452, fixed upstream by ros2/rclpy#1547 after
Jazzy's 7.1.6): a callback handed to the thread pool but not yet started is yielded again by
``wait_for_ready_callbacks``, submitted again, and the spin thread loops on it holding the GIL.
Measured here with the reward node and a reliable input: malformed images (which return at
once from the callback) took 200-300 ms each instead of 5 ms, with the spin thread at a whole
core and its list of submitted handlers growing with every loop.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any, Callable

import rclpy
from rclpy.context import Context
from rclpy.executors import (
    ConditionReachedException,
    Executor,
    ExternalShutdownException,
    MultiThreadedExecutor,
    ShutdownException,
    SingleThreadedExecutor,
    TimeoutException,
)

EXECUTOR_KINDS = ('single_threaded', 'multi_threaded')


def isolated_env() -> int:
    """Return the domain id to use (env or random); default discovery to localhost."""
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    text = os.environ.get('ROS_DOMAIN_ID', '')
    return int(text) if text.isdigit() else random.randint(1, 100)


class PacedMultiThreadedExecutor(MultiThreadedExecutor):
    """
    rclpy's ``MultiThreadedExecutor`` without the dispatch busy loop (see the module docstring).

    Each ready callback is submitted once, and the spin thread waits for a worker to take it
    before looking for more work. A handler still in the pool (submitted, not returned) is
    never submitted again. While one waits for a free worker the spin thread sleeps in
    ``threading.Event.wait`` (GIL released) instead of spinning; with every worker blocked it
    looks again every ``start_wait_s``, as rclpy's loop would, so callbacks that wait on each
    other behave as with the stock class.
    Exceptions raised by callbacks still surface from ``spin_once``.
    """

    start_wait_s = 0.05

    def __init__(self, num_threads: int | None = None, *, context: Context | None = None) -> None:
        super().__init__(num_threads, context=context)
        self._in_pool: dict[int, threading.Event] = {}  # id(handler) -> taken by a worker
        self._in_pool_lock = threading.Lock()
        self._handlers: list[Any] = []  # submitted handlers whose exceptions are still due

    def _spin_once_impl(self, timeout_sec: Any = None,
                        wait_condition: Callable[[], bool] = lambda: False) -> None:
        try:
            handler, _, _ = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException,
                ConditionReachedException):
            return
        key = id(handler)
        with self._in_pool_lock:
            taken = self._in_pool.get(key)
            submit = taken is None
            if submit:
                taken = self._in_pool[key] = threading.Event()
        if submit:
            self._executor.submit(self._run, handler, key, taken)
            self._handlers.append(handler)
        if not taken.wait(self.start_wait_s):
            return  # every worker is busy: look again (rclpy's behaviour, without the spin)
        # taken, but the handler may not have flagged itself as executing yet: yield the GIL
        while not (handler.executing() or handler.done()) and key in self._in_pool:
            time.sleep(0.0002)
        for done in [h for h in self._handlers if h.done()]:
            self._handlers.remove(done)
            done.result()  # raise the callback's exception, as rclpy does

    def _run(self, handler: Any, key: int, taken: threading.Event) -> None:
        taken.set()
        try:
            handler()
        finally:
            with self._in_pool_lock:
                self._in_pool.pop(key, None)


def make_executor(kind: str, context: Context | None = None, threads: int = 4) -> Executor:
    """Return an executor of ``kind`` (:data:`EXECUTOR_KINDS`) on ``context``."""
    if kind == 'single_threaded':
        return SingleThreadedExecutor(context=context)
    if kind == 'multi_threaded':
        return PacedMultiThreadedExecutor(num_threads=threads, context=context)
    raise ValueError(f'executor must be one of {EXECUTOR_KINDS}, not {kind!r}')


class RosHarness:
    """An rclpy context plus a background executor (see :func:`make_executor`)."""

    def __init__(self, domain_id: int | None = None, threads: int = 4,
                 executor: str = 'multi_threaded') -> None:
        self.domain_id = isolated_env() if domain_id is None else domain_id
        self.context = Context()
        rclpy.init(context=self.context, domain_id=self.domain_id)
        self.executor = make_executor(executor, self.context, threads)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        self.nodes: list[Any] = []

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # ends with the context
            pass

    def add(self, node: Any) -> Any:
        """Add ``node`` to the executor and return it."""
        self.executor.add_node(node)
        self.nodes.append(node)
        return node

    def remove(self, node: Any) -> None:
        """Remove ``node`` from the executor and destroy it."""
        self.executor.remove_node(node)
        self.nodes.remove(node)
        node.destroy_node()

    @staticmethod
    def wait_for(condition: Callable[[], Any], timeout: float, poll: float = 0.005) -> bool:
        """Return True as soon as ``condition()`` is truthy, False at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            if condition():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)

    def close(self) -> None:
        """Stop the executor, destroy the nodes and shut the context down."""
        self.executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=5.0)
        for node in list(self.nodes):
            try:
                node.destroy_node()
            except Exception:  # best effort during teardown
                pass
        self.nodes = []
        rclpy.try_shutdown(context=self.context)

    def __enter__(self) -> RosHarness:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
