"""Data parallelism within one job: the batch sharded over all local devices, the state replicated.

With ``data_parallel: true`` the runner builds a one-axis mesh over ``jax.local_devices()`` (the GPUs
SLURM gave the job: the preset's ``gpu`` resource) and places every training and preconditioner-fit
batch with its example axis split over the mesh, and the parameters, optimizer state and BN
statistics replicated. The jitted step is unchanged: XLA partitions it from those placements and
inserts the all-reduces that the batch means need, so a 2-device run computes the 1-device run's
numbers up to float summation order (tested on CPU with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class Placement:
    """Where the loop's arrays go: nowhere special on one device, sharded or replicated on a mesh."""

    def __init__(self, enabled: bool, devices=None):
        devices = list(devices if devices is not None else jax.local_devices())
        self.devices = devices if enabled else devices[:1]
        self.mesh = Mesh(np.array(self.devices), ("data",)) if len(self.devices) > 1 else None

    @property
    def count(self) -> int:
        return len(self.devices)

    def check_batch(self, what: str, size: int) -> None:
        if self.mesh is not None and size % self.count:
            raise ValueError(f"data_parallel: {what}={size} does not split evenly over {self.count} devices; "
                             f"use a multiple of {self.count} or data_parallel=false")

    def replicate(self, tree):
        if self.mesh is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def stacked(self, tree):
        """Micro-batches stacked as (k, batch, ...): the batch axis (1) split over the devices."""
        if self.mesh is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec(None, "data")))

    def flat(self, tree):
        """One batch as (batch, ...): its first axis split over the devices."""
        if self.mesh is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec("data")))
