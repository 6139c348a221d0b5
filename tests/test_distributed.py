"""Multi-host on one machine: two CPU processes join through jax.distributed and reduce together."""
import os
import socket
import subprocess
import sys

from conftest import FAST_XLA, REPO


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


STAGES = ("{'pretrain': @warm_jax.pretrain, 'sft': @warm_jax.sft, 'ood_pairs': @warm_jax.ood_pairs, "
          "'rm_clean': @clean/warm_jax.train_reward_models, "
          "'average_clean': @clean/warm_jax.average_reward_models}")


def test_two_processes_write_one_workdir_once_and_resume_on_one(tmp_path):
    """pretrain -> OOD pairs -> population RM -> averaging under jax.distributed (2 CPU processes x 2 devices):
    a third launch onto the locked outputs fails at once; process 0 is SIGKILLed mid-export (its
    peer is then killed too, as a scheduler would); the run resumes on ONE process; every log
    row appears once and every checkpoint names its base."""
    import glob
    import signal
    import time

    from conftest import demo_cmd, run_demo, subprocess_env
    from warm_jax.checkpoint import Checkpointer
    from warm_jax.metrics import read_jsonl
    wd = str(tmp_path / "mh")
    port = _free_port()
    procs = []
    for pid in range(2):
        env = subprocess_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                             JAX_PROCESS_ID=str(pid), JAX_PLATFORMS="cpu",
                             **({"WARM_JAX_KILL_AT": "rm.export#2"} if pid == 0 else {}))
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2 " + FAST_XLA
        procs.append(subprocess.Popen(demo_cmd(wd, f"--gin.warm_jax.run.stages={STAGES}"),
                                      cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.time() + 120
        while not glob.glob(os.path.join(wd, ".locks", "*")) and time.time() < deadline:
            time.sleep(0.2)
        third = run_demo(wd, f"--gin.warm_jax.run.stages={STAGES}")
        assert third.returncode == 1 and "is being written by another launch" in third.stderr, \
            third.stderr[-2000:]
        err0 = procs[0].communicate(timeout=600)[1]
        assert procs[0].returncode == -signal.SIGKILL, err0[-3000:]
        assert "kill_point: SIGKILL at rm.export" in err0
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.communicate()
    assert os.path.isdir(os.path.join(wd, "rm", "clean", "seed_0", "members", "member_0"))
    assert not os.path.isdir(os.path.join(wd, "rm", "clean", "seed_0", "members", "member_1"))
    r = run_demo(wd, f"--gin.warm_jax.run.stages={STAGES}")  # one process resumes
    assert r.returncode == 0, r.stderr[-3000:]
    for log in glob.glob(os.path.join(wd, "**", "*.jsonl"), recursive=True):
        rows = read_jsonl(log)
        if log.endswith("train.jsonl"):
            steps = [row["step"] for row in rows]
            assert steps == sorted(set(steps)), f"{log}: rows {steps}"
    for s in (0, 1):
        assert [r["member"] for r in read_jsonl(os.path.join(wd, "rm", "clean", f"seed_{s}",
                                                             "eval.jsonl"))] == [0, 1]
    for d in glob.glob(os.path.join(wd, "**", "checkpoints"), recursive=True) + \
            glob.glob(os.path.join(wd, "rm", "clean", "*", "*", "*")):
        if os.path.isdir(d) and any(x.isdigit() for x in os.listdir(d)):
            ck = Checkpointer(d, read_only=True)
            assert all(ck.restore_meta(s).get("base_fingerprint") for s in ck.all_steps()), d
