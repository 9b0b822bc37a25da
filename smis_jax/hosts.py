"""Several processes on one run (multi-host, ``train.run --distributed``): who writes, and waiting for each other.

Every process runs the same program on its share of a global device mesh, so every process computes the same
metrics, previews and exports. What is written once (``config.json``, ``metrics.jsonl``, the inversion cache,
preview images, ``export/``, and any folder removed or moved) is written by the *writer*, process 0, alone;
orbax checkpoints are the exception: every process calls save and restore, and orbax coordinates who writes what.
Where the others must not run ahead of a write (or must not read a file while it is being replaced), every process
calls :func:`barrier` with the same name. With one process, everything here is a no-op.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["is_writer", "barrier", "from_writer", "replicate", "local_checkpointer"]


def is_writer() -> bool:
    """True on the one process that writes the files written once (process 0)."""
    return jax.process_index() == 0


BARRIER_TIMEOUT_S = 24 * 3600  # a barrier may wait for the writer's whole inversion
_barriers = [0]


def barrier(name: str) -> None:
    """Wait until every process has reached ``barrier(name)`` (the same calls in the same order everywhere);
    no-op with one process.

    A barrier of jax's coordination service (through orbax), not a device collective: on CPU the first collective
    sets up gloo, which gives up when the processes arrive more than 30 s apart (``Gloo context initialization
    failed: ... GetKeyValue() timed out``), and a process waiting here may wait minutes (the writer inverting)."""
    if jax.process_count() > 1:
        import orbax.checkpoint as ocp

        _barriers[0] += 1  # coordination-service barrier ids are used once
        ocp.multihost.get_barrier_sync_fn()(key=f"smis-jax {_barriers[0]}: {name}",
                                            timeout_ms=BARRIER_TIMEOUT_S * 1000)


def from_writer(tree: Any) -> Any:
    """The writer's values of ``tree`` (numpy arrays) on every process. The other processes pass a tree of the
    same structure, shapes and dtypes (e.g. zeros): only the writer's values travel. No-op with one process."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    barrier("from_writer")  # the broadcast is a collective: arrive together (see barrier)
    return multihost_utils.broadcast_one_to_all(jax.tree.map(np.asarray, tree), is_source=is_writer())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` (the same values on every process) as arrays replicated over every device of ``mesh``.

    Goes through host memory: with several processes, ``jax.device_put`` of an array already on a local device
    onto a mesh spanning other processes gives (jax 0.10.2, CPU) an array whose shards cannot be read back
    (``addressable_shards`` raises), which orbax does when it saves; from numpy it is sound.
    """
    return jax.device_put(jax.device_get(tree), NamedSharding(mesh, P()))


def local_checkpointer():
    """An orbax ``StandardCheckpointer`` for this process alone (numpy trees: converted folders, ``export/``).

    orbax's default takes every process to be saving or restoring together and waits for all of them; a tree
    that one process writes (the writer's ``export/``) or that each reads for itself (a generator) must not."""
    import orbax.checkpoint as ocp

    me = jax.process_index()
    return ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me}))
