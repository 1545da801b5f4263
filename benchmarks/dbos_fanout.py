"""The DBOS side of the fan-out benchmark (`benchmarks/fanout.py`).

The same work as ``benchmarks/apps/fanout_zart.py``: a parent workflow enqueues ``n``
no-op child workflows on a queue and joins them by their handles, one recorded
``get_result`` at a time. The queue decides the shape: the fan-out's queue runs as many
children as the workers have room for, the map's also caps them globally (its
``max_concurrency``). The driver registers the queues; a worker only listens:

    python -m benchmarks.dbos_fanout worker --url URL --executor-id w0 --listen zfan_parent,zfan_map

It launches DBOS with the durable benchmark's configuration (``dbos_workflow.config``)
and runs workflows of the queues named by ``--listen`` until SIGTERM.
"""

from __future__ import annotations

import argparse

from dbos import DBOS

from benchmarks import dbos_workflow

#: The parent runs from a queue of its own, so it never takes a child's place.
PARENT_QUEUE = "zfan_parent"
#: Children of the fan-out (no global limit) and of the map (global limit).
FANOUT_QUEUE = "zfan_fanout"
MAP_QUEUE = "zfan_map"
PARENT = "zbench_fan_parent"
BRANCH = "zbench_fan_branch"


@DBOS.workflow(name=BRANCH)
def branch(i: int) -> int:
    """The child: no work, so only the fan-out and join are measured; returns its argument."""
    return i


@DBOS.workflow(name=PARENT)
def parent(n: int, queue_name: str, poll: float) -> int:
    """Enqueue `n` children on `queue_name`, then collect their results in order."""
    queue = DBOS.retrieve_queue(queue_name)
    assert queue is not None, f"queue {queue_name} is not registered"
    handles = [queue.enqueue(branch, i) for i in range(n)]
    # DBOS polls a child's status every polling_interval_sec (default 1 s) until it ends.
    return sum(handle.get_result(polling_interval_sec=poll) for handle in handles)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker")
    worker.add_argument("--url", required=True)
    worker.add_argument("--executor-id", required=True)
    worker.add_argument("--listen", required=True, help="comma-separated queue names")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    queues = [name for name in args.listen.split(",") if name]
    dbos_workflow.serve(
        args.url, args.executor_id, before_launch=lambda: DBOS.listen_queues(queues)
    )


if __name__ == "__main__":
    main()
