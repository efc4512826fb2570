"""A one-process Dask cluster on loopback, for checks that kill a scheduler mid-sweep.

    python scripts/dask_cluster.py        # prints the scheduler address, then serves 10 min

Scheduler and worker are threads of this process (``processes=False``, over TCP), so killing
the process (kill -9) takes both at once: no orphaned worker keeps a run file locked. Used by
tests/test_sweep.py and scripts/reliability_table.py.
"""
import time

from distributed import LocalCluster

if __name__ == "__main__":
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                           host="127.0.0.1", dashboard_address=None)
    print(cluster.scheduler_address, flush=True)
    time.sleep(600)
