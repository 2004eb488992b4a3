"""
Run the data engine on Ray Data: the same shards as ``synth.dataset.run_dataset``, on a cluster.

A Ray Dataset holds the indices of the shards not yet finished (one block per shard); ``map``
calls the pure :func:`~spatialvlm_ros.synth.dataset.process_shard` on each, on whatever node
has a free CPU, and returns the shard's path and row count. The driver records every finished
shard in the manifest as the multiprocessing runner does (the same
:func:`~spatialvlm_ros.synth.dataset.prepare_run`, :func:`~spatialvlm_ros.synth.dataset.
record_shard` and :func:`~spatialvlm_ros.synth.dataset.finish_run`), so the shards are
byte-identical to ``run_dataset``'s whatever the number of nodes or CPUs, and a run stopped
half-way resumes with the missing shards (with either runner).

On a cluster the workers write their shards straight into ``config.out``: it must be a folder
that every node and the driver see at the same path (NFS, a mounted bucket). Ray is imported
only here, only when a run starts.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from spatialvlm_ros.synth.dataset import (
    DatasetConfig,
    finish_run,
    prepare_run,
    process_shard,
    record_shard,
)


class _ShardTask:
    """Ray Data ``map`` function: one row ``{'shard': k}`` -> the processed shard's record."""

    def __init__(self, config: DatasetConfig) -> None:
        self.config = config

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        shard_index = int(row['shard'])
        started = time.perf_counter()
        path = process_shard(self.config, shard_index)
        return {'shard': shard_index, 'path': str(path), 'seconds': time.perf_counter() - started,
                'node': os.uname().nodename}


def run_dataset_ray(config: DatasetConfig, num_cpus: int | None = None,
                    address: str | None = None, progress: bool = True) -> dict[str, Any]:
    """
    Write (or finish) the dataset of ``config`` with Ray Data; return the summary.

    :param config: the run (``config.out`` must be shared by all nodes on a cluster).
    :param num_cpus: CPUs of the local Ray instance started here (None: all); ignored when
        joining a cluster (``address``) or when Ray is already initialised.
    :param address: a Ray cluster to join (``'auto'``, ``'ray://host:10001'``, ...); None
        starts a local instance.
    :param progress: show a progress bar of scenes.

    Ray started here is shut down at the end; an already initialised Ray is used as is.
    """
    import ray
    from tqdm import tqdm

    if num_cpus is not None and num_cpus < 1:
        raise ValueError(f'num_cpus must be >= 1, got {num_cpus}')
    run, shards, pending = prepare_run(config)
    started = time.perf_counter()
    bar = tqdm(total=config.num_scenes, desc='scenes', unit='scene', disable=not progress)
    bar.update(config.num_scenes - sum(config.shard_range(k)[1] - config.shard_range(k)[0]
                                       for k in pending))
    owns_ray = False
    try:
        if pending:
            if not ray.is_initialized():
                os.environ.setdefault('RAY_USAGE_STATS_ENABLED', '0')
                ray.init(address=address or None,
                         num_cpus=None if address else num_cpus,
                         include_dashboard=False, log_to_driver=False,
                         logging_level='error', configure_logging=True)
                owns_ray = True
            logging.getLogger('ray.data').setLevel(logging.WARNING if progress else logging.ERROR)
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False
            context.print_on_execution_start = False
            dataset = ray.data.from_items([{'shard': k} for k in pending],
                                          override_num_blocks=len(pending))
            dataset = dataset.map(_ShardTask(config), num_cpus=1)
            for row in dataset.iter_rows():
                bar.update(record_shard(config, run, shards, int(row['shard']), row['path']))
    finally:
        bar.close()
        if owns_ray:
            ray.shutdown()
    cpus = num_cpus if not address else None
    return finish_run(config, pending, time.perf_counter() - started, runner='ray',
                      workers=cpus, ray_address=address)
