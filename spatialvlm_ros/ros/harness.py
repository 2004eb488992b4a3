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
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any, Callable

import rclpy
from rclpy.context import Context
from rclpy.executors import Executor, MultiThreadedExecutor, SingleThreadedExecutor

EXECUTOR_KINDS = ('single_threaded', 'multi_threaded')


def isolated_env() -> int:
    """Return the domain id to use (env or random); default discovery to localhost."""
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    text = os.environ.get('ROS_DOMAIN_ID', '')
    return int(text) if text.isdigit() else random.randint(1, 100)


def make_executor(kind: str, context: Context | None = None, threads: int = 4) -> Executor:
    """Return an executor of ``kind`` (:data:`EXECUTOR_KINDS`) on ``context``."""
    if kind == 'single_threaded':
        return SingleThreadedExecutor(context=context)
    if kind == 'multi_threaded':
        return MultiThreadedExecutor(num_threads=threads, context=context)
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
