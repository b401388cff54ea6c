"""A backfill on a real two-node Ray cluster on this machine, with the worker node killed
mid-run: ``python ray_cluster_backfill.py INPUT OUTPUT`` prints a JSON summary.

Run as its own process by tests/scale/test_backfill.py (a process can join one Ray
cluster only, and the test session already runs a local Ray). ``ray.cluster_utils.Cluster``
starts a head node (GCS, raylet, 1 CPU) and a second raylet (1 CPU, own object store) as
separate processes on 127.0.0.1; the backfill joins with ``ray_address`` exactly as
``postemb backfill --ray-address`` does. After the first finished split the worker node is
killed (SIGKILL of its raylet and workers, not a graceful drain) and a replacement node
joins, as an autoscaler would; the run must still commit every file. If it fails, the
rerun must finish the job (resume), never write a row twice.
"""
import json
import sys

from ray.cluster_utils import Cluster

from postemb_rt import backfill as bf


def main(inp: str, out: str) -> int:
    # the GCS declares a node dead after `health_check_failure_threshold` missed checks `health_check_period_ms`
    # apart: 3 x 1 s here, not Ray's 5 x 3 s, which left the run waiting ~10 s more for the killed node's actor
    fast_death = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, include_dashboard=False,
                                                                _system_config=fast_death))
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes(timeout=120)
    events = {"killed": False, "first_error": None, "runs": 0}

    def kill_worker_node(row, report):
        if not events["killed"] and not row["error"]:
            events["killed"] = True
            cluster.remove_node(worker, allow_graceful=False)
            cluster.add_node(num_cpus=1)

    try:
        reports = []
        for attempt in range(2):
            events["runs"] += 1
            try:
                r = bf.backfill(inp, out, num_workers=2, rows_per_split=3, ray_address=cluster.address,
                                on_split=None if attempt else kill_worker_node)
                reports.append(r)
                break
            except bf.BackfillError as exc:  # some splits failed: the rerun resumes them
                events["first_error"] = str(exc)[:500]
                reports.append(exc.report)
        print(json.dumps(events | {"committed": sum(r.files_committed for r in reports),
                                   "skipped_in_last": reports[-1].files_skipped,
                                   "workers": reports[0].workers, "splits_run": [r.splits_run for r in reports]}))
    finally:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
