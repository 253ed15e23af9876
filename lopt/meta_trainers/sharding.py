"""Meta-training over many devices and hosts: a 1-d device mesh whose axis ``tasks`` splits the task batch.

The estimator's state (inner states of a batch of tasks, PES accumulators) is sharded along its task axis; theta,
the outer optimizer state, the PRNG key and the metrics are replicated. ``meta_train`` jits its meta-step with
these shardings and GSPMD partitions the estimator's ``vmap`` over tasks: every device unrolls its own tasks, and
the mean over tasks that forms the meta-gradient becomes an all-reduce, so every device ends the step with the
same meta-gradient and the same new theta. The estimators need no change; the same program runs on one CPU
device, on forced host devices, on a multi-GPU host and, after ``jax.distributed.initialize``, on several hosts.

Several processes: every process computes the same initial state from the seed (or restores the same checkpoint)
and places only the shards of its own devices (``place``); ``to_host`` gathers global arrays back before a
checkpoint is written (by process 0 alone).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lopt.types import PyTree

TASKS = "tasks"
_FORCE_FLAG = "--xla_force_host_platform_device_count"


def use_all_cpu_cores() -> int | None:
  """Gives the CPU backend one device per core unless the user chose a count; call before JAX starts.

  One XLA:CPU device runs a meta-step mostly on one core, so on a CPU machine the task batch only uses every core
  when it is split over as many host devices. Nothing changes when ``XLA_FLAGS`` already sets
  ``--xla_force_host_platform_device_count`` or ``jax_num_cpu_devices`` is set (e.g. ``JAX_NUM_CPU_DEVICES``).
  Harmless on GPU and TPU machines: the extra CPU devices are not the default backend.

  Returns:
    The number of CPU devices requested, or None when the user's setting is kept.
  """
  if _FORCE_FLAG in os.environ.get("XLA_FLAGS", "") or jax.config.jax_num_cpu_devices >= 0:
    return None
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
  jax.config.update("jax_num_cpu_devices", cores)
  return cores


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, auto_detect: bool = False) -> bool:
  """Starts ``jax.distributed`` when any argument is given or ``auto_detect`` is set; call before JAX starts.

  Arguments left as None are detected by JAX from the cluster environment (Slurm, Open MPI, Cloud TPU pod
  slices, ...). On CPU, cross-process collectives use gloo over TCP.

  Returns:
    Whether the distributed system was started.
  """
  if coordinator_address is None and num_processes is None and process_id is None and not auto_detect:
    return False
  # jax's CPU collectives default to gloo (``jax_cpu_collectives_implementation``); an explicit "mpi" is kept.
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  # Device counts are logged by ``describe``: asking for them here would start the backends.
  logging.info("jax.distributed started (coordinator %s, CPU collectives: %s).",
               coordinator_address or "detected", jax.config.jax_cpu_collectives_implementation)
  return True


def is_main_process() -> bool:
  """True in the process that writes metrics, config and checkpoints (process 0)."""
  return jax.process_index() == 0


def _counts_that_fit(per_process: int, processes: int) -> list[int]:
  return [processes * k for k in range(1, per_process + 1)]


def resolve_num_devices(requested: int | None, task_batch_sizes: Sequence[int], *, num_tasks: int) -> int:
  """The number of devices to split the task batch over.

  Args:
    requested: an explicit count, or None (or 0) for the largest count that divides every task batch and fits the
      devices present. With several processes the count is a multiple of the process count (every process
      contributes the same number of its local devices).
    task_batch_sizes: the length of every per-task axis of the estimator state (usually just ``num_tasks``;
      ES with several pairs per task has ``num_tasks * num_pairs`` slots).
    num_tasks: the estimator's task batch, named in errors.

  Returns:
    The device count.

  Raises:
    ValueError: naming both numbers when an explicit count does not divide the task batch, exceeds the devices
      present, or is not a multiple of the process count.
  """
  processes, local, total = jax.process_count(), jax.local_device_count(), jax.device_count()
  sizes = sorted({int(s) for s in task_batch_sizes} | {int(num_tasks)})
  divides = lambda n: all(s % n == 0 for s in sizes)
  if requested:
    if requested < 1 or requested > total:
      raise ValueError(f"num_devices={requested} but only {total} devices are present ({jax.default_backend()}, "
                       f"{processes} process(es)). On CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N "
                       "for more host devices.")
    if requested % processes:
      raise ValueError(f"num_devices={requested} is not a multiple of the {processes} processes: every process "
                       "must feed the same number of devices.")
    if not divides(requested):
      raise ValueError(f"num_devices={requested} does not divide the task batch of {num_tasks} tasks "
                       f"(per-task state axes of lengths {sizes}); use a device count that divides {num_tasks}.")
    return requested
  fitting = [n for n in _counts_that_fit(local, processes) if divides(n)]
  if not fitting:
    raise ValueError(f"The task batch of {num_tasks} tasks cannot be split evenly over the {processes} processes; "
                     f"use a number of tasks that is a multiple of {processes}.")
  return fitting[-1]


def task_mesh(num_devices: int) -> Mesh:
  """A 1-d mesh with axis ``tasks`` over ``num_devices`` devices, the same number from every process."""
  processes = jax.process_count()
  per_process = num_devices // processes
  devices = []
  for p in range(processes):
    devices += sorted((d for d in jax.devices() if d.process_index == p), key=lambda d: d.id)[:per_process]
  return Mesh(np.array(devices), (TASKS,))


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where each part of the meta-training state lives: the mesh and the shardings built on it."""

  mesh: Mesh

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  @property
  def replicated(self) -> NamedSharding:
    """Theta, the outer optimizer state, keys and metrics: one full copy per device."""
    return NamedSharding(self.mesh, PartitionSpec())

  def task_sharded(self, state: PyTree, task_axes: PyTree) -> PyTree:
    """Shardings for ``state`` that split each leaf along its task axis (None in ``task_axes``: replicated)."""

    def sharding(leaf, axis):
      if axis is None:
        return self.replicated
      spec = [None] * np.ndim(leaf)
      spec[axis] = TASKS
      return NamedSharding(self.mesh, PartitionSpec(*spec))

    return jax.tree.map(sharding, state, task_axes)

  def place(self, tree: PyTree, shardings: PyTree) -> PyTree:
    """Global arrays for ``tree`` (the same values in every process), each process filling only its own devices."""

    def put(leaf, sharding):
      host = np.asarray(leaf)
      return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    if not isinstance(shardings, NamedSharding):
      return jax.tree.map(put, tree, shardings)
    return jax.tree.map(lambda leaf: put(leaf, shardings), tree)


def task_batch_sizes(state: PyTree, task_axes: PyTree) -> list[int]:
  """The lengths of the per-task axes of ``state``."""
  sizes = jax.tree.map(lambda leaf, axis: None if axis is None else np.shape(leaf)[axis], state, task_axes)
  return sorted(set(jax.tree.leaves(sizes)))


def to_host(tree: PyTree) -> PyTree:
  """Numpy copies of every leaf; arrays spread over several processes are gathered (a collective: call it in all)."""
  leaves, treedef = jax.tree.flatten(tree)
  remote = [i for i, x in enumerate(leaves)
            if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated]
  gathered = multihost_utils.process_allgather([leaves[i] for i in remote], tiled=True) if remote else []
  gathered = dict(zip(remote, gathered))
  out = []
  for i, leaf in enumerate(leaves):
    if i in gathered:
      leaf = gathered[i]
    elif isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      leaf = leaf.addressable_data(0)  # fully replicated: the local copy is the whole value
    out.append(np.asarray(leaf) if isinstance(leaf, (jax.Array, np.ndarray, np.generic)) else leaf)
  return jax.tree.unflatten(treedef, out)


def any_process(flag: bool) -> bool:
  """True when ``flag`` is true in any process (a collective with several processes)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.array([flag], np.int32))))


def describe(placement: Placement, num_tasks: int) -> str:
  """One line for the log: how the task batch is split."""
  n = placement.num_devices
  return (f"Splitting {num_tasks} tasks over {n} {jax.default_backend()} device(s) of {jax.device_count()} "
          f"({math.ceil(num_tasks / n)} per device, {jax.process_count()} process(es)).")


__all__ = ["Placement", "TASKS", "any_process", "describe", "initialize_distributed", "is_main_process",
           "resolve_num_devices", "task_batch_sizes", "task_mesh", "to_host", "use_all_cpu_cores"]
