"""Multi-host on one machine: two CPU processes join through jax.distributed and reduce together."""
import os
import socket
import subprocess
import sys

from conftest import REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_share_one_global_array():
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(pid), PYTHONPATH=REPO)
        procs.append(subprocess.Popen([sys.executable, os.path.join(REPO, "tests",
                                                                    "_multihost_worker.py")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outs = [p.communicate(timeout=180)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    results = sorted(line for out in outs for line in out.splitlines() if line.startswith("RESULT"))
    # 2 processes x 2 devices; rows of 1s from process 0 and 2s from process 1: 6*1 + 6*2 = 18
    assert results == [f"RESULT process={i} of 2 devices=4 global_shape=(4, 3) sum=18.0"
                       for i in range(2)], outs
