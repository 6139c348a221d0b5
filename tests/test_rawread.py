"""Byte-range reads of orbax checkpoints (`warm_jax.average.rawread`) and the averaging command."""
import os
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest

from warm_jax.average import hostsum, rawread, soup
from warm_jax.average.__main__ import main as average_main
from warm_jax.checkpoint import Checkpointer, flatten, restore_params


def _tree(seed):
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=(64, 33)).astype(np.float32),  # indirect (> 1 KiB)
            "b": rng.normal(size=(5,)).astype(np.float32),  # small enough to be stored inline
            "s": np.float32(rng.normal()),  # a scalar: zarr's chunk key "0"
            "h": rng.normal(size=(40, 20)).astype(ml_dtypes.bfloat16)}


def _save(path, tree, step=3):
    Checkpointer(str(path), max_to_keep=1).save(step, {"params": tree},
                                                 {"base_fingerprint": "base"})
    return str(path)


def _plan(d):
    ck = Checkpointer(d, read_only=True)
    leaves = flatten(ck.array_metadata())
    return rawread.plan(ck.item_dir(None, "state"), leaves), leaves


def test_plan_maps_every_array_to_its_saved_bytes(tmp_path):
    tree = _tree(0)
    plan, leaves = _plan(_save(tmp_path / "m", tree))
    assert plan is not None and set(plan) == {f"params/{k}" for k in tree}
    assert plan["params/b"].inline is not None and plan["params/w"].inline is None
    for k, x in tree.items():
        x = np.asarray(x).reshape(-1)
        m = rawread.mapped(plan[f"params/{k}"], leaves[f"params/{k}"].dtype, 0, x.size)
        assert m.array.dtype == x.dtype
        np.testing.assert_array_equal(m.array, x)
        m.close()
        if x.size > 3:  # a window that starts off any page boundary
            m = rawread.mapped(plan[f"params/{k}"], x.dtype, 3, x.size - 1)
            np.testing.assert_array_equal(m.array, x[3:-1])
            m.close()


def test_compressed_or_foreign_checkpoints_are_not_planned_and_still_average(tmp_path):
    trees = [_tree(i) for i in range(3)]
    dirs = []
    for i, t in enumerate(trees):  # orbax's default handler: zstd-compressed arrays
        mngr = ocp.CheckpointManager(str(tmp_path / f"z{i}"), item_handlers={
            "state": ocp.PyTreeCheckpointHandler(use_compression=True),
            "meta": ocp.JsonCheckpointHandler()})
        mngr.save(1, args=ocp.args.Composite(state=ocp.args.PyTreeSave({"params": t}),
                                             meta=ocp.args.JsonSave({"base_fingerprint": "b"})))
        mngr.wait_until_finished()
        dirs.append(str(tmp_path / f"z{i}"))
    assert _plan(dirs[0])[0] is None
    avg, _ = soup.stream_average(dirs)
    for k in trees[0]:
        expect = sum(np.asarray(t[k], np.float32) for t in trees) / np.float32(3)
        np.testing.assert_allclose(np.asarray(avg["params"][k], np.float32), expect,
                                   rtol=1e-2 if k == "h" else 1e-6, atol=1e-6)


def test_mapped_and_tensorstore_reads_give_bit_identical_averages(tmp_path, monkeypatch):
    trees = [_tree(i) for i in range(4)]
    dirs = [_save(tmp_path / f"m{i}", t) for i, t in enumerate(trees)]
    w = [0.1, 0.2, 0.3, 0.4]
    fast, _ = soup.stream_average(dirs, w, chunk_bytes=256)
    monkeypatch.setattr(hostsum, "_BLOCK", 7)  # blocks and windows that split arrays unevenly
    members = soup._open(dirs)
    _, leaves = soup._check(members)
    small = soup._host_sum(members, leaves, soup.normalise_weights(w, 4), 300, window_bytes=44)
    for k, x in small.items():  # the average is cast back to each leaf's dtype
        np.testing.assert_array_equal(x.astype(leaves[k].dtype),
                                      np.asarray(fast[k.split("/")[0]][k.split("/")[1]]))
    monkeypatch.setattr(rawread, "plan", lambda *a: None)
    slow, _ = soup.stream_average(dirs, w, chunk_bytes=256)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                 fast, slow)
    # tensorstore reads in windows of whole rows (one row of "w" is 132 bytes: 1 row each)
    ts_small = soup._host_sum(members, leaves, soup.normalise_weights(w, 4), 300, window_bytes=44)
    for k, x in ts_small.items():
        np.testing.assert_array_equal(x, small[k])
    # the values are Σ w_i x_i summed in member order in float32
    expect = np.float32(w[0]) * trees[0]["w"]
    for wi, t in zip(w[1:], trees[1:]):
        expect = expect + np.float32(wi) * t["w"]
    np.testing.assert_array_equal(np.asarray(fast["params"]["w"]), expect)
    assert fast["params"]["h"].dtype == jnp.bfloat16


def test_a_truncated_member_is_a_clear_error_and_writes_nothing(tmp_path):
    dirs = [_save(tmp_path / f"m{i}", _tree(i)) for i in range(2)]
    plan, _ = _plan(dirs[1])
    data = plan["params/w"].path
    with open(data, "r+b") as f:
        f.truncate(plan["params/w"].offset + 10)
    out = tmp_path / "avg"
    with pytest.raises(soup.AverageError, match="truncated"):
        soup.average_checkpoints(dirs, str(out))
    assert not out.exists() or Checkpointer(str(out), read_only=True).latest_step() is None


def test_average_command_line_writes_the_weighted_average_and_refuses_bad_input(tmp_path, capsys):
    trees = [_tree(i) for i in range(3)]
    dirs = [_save(tmp_path / f"m{i}", t) for i, t in enumerate(trees)]
    out = str(tmp_path / "avg")
    assert average_main([out, *dirs, "--weights", "1", "1", "2"]) == 0
    got, meta = restore_params(out)
    w = np.array([0.25, 0.25, 0.5], np.float32)
    expect = w[0] * trees[0]["w"] + w[1] * trees[1]["w"] + w[2] * trees[2]["w"]
    np.testing.assert_allclose(np.asarray(got["w"]), expect, rtol=1e-6, atol=1e-7)
    assert meta["weights"] == [0.25, 0.25, 0.5]
    missing = str(tmp_path / "nope")
    assert average_main([str(tmp_path / "avg2"), dirs[0], missing]) == 2
    assert f"member {missing} is missing or unreadable" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "avg2") or not os.listdir(tmp_path / "avg2")


def _cli(*args, env=None):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "warm_jax.average", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_the_command_sums_early_in_a_forked_process_and_gets_the_checked_sums_bits(tmp_path):
    trees = [_tree(i) for i in range(3)]
    dirs = [_save(tmp_path / f"m{i}", t) for i, t in enumerate(trees)]
    w = ["1", "2", "5"]
    out, late = str(tmp_path / "avg"), str(tmp_path / "late")
    run = _cli("-v", out, *dirs, "--weights", *w)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == out and "used the early sum of 3 members" in run.stderr
    run = _cli("-v", "--no-early-sum", late, *dirs, "--weights", *w)
    assert run.returncode == 0 and "early sum" not in run.stderr, run.stderr
    (got, meta), (ref, _) = restore_params(out), restore_params(late)
    for k in trees[0]:  # bit for bit the sum made after the checks, in this process
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(ref[k]))
    ws = soup.normalise_weights([1, 2, 5], 3)
    expect = sum((np.float32(wi) * t["w"] for wi, t in zip(ws[1:], trees[1:])),
                 np.float32(ws[0]) * trees[0]["w"])
    np.testing.assert_array_equal(np.asarray(got["w"]), expect)
    assert got["h"].dtype == jnp.bfloat16 and meta["weights"] == ws
    bad = _cli(str(tmp_path / "b"), dirs[0], str(tmp_path / "missing"))
    assert bad.returncode == 2 and "is missing or unreadable" in bad.stderr
    assert not os.path.exists(tmp_path / "b")


def test_an_early_sum_of_other_weights_or_of_unplannable_members_is_not_used(tmp_path):
    import subprocess
    import sys
    trees = [_tree(i) for i in range(2)]
    dirs = [_save(tmp_path / f"m{i}", t) for i, t in enumerate(trees)]
    # started for weights 1:1, asked for 1:3 (as if a member had changed in between): unused
    script = ("import sys, logging; from warm_jax.average.presum import PreSum\n"
              "p = PreSum.start(sys.argv[2:], [1, 1])\n"
              "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
              "from warm_jax.average import soup\n"
              "soup.average_checkpoints(sys.argv[2:], sys.argv[1], [1, 3], presum=p)\n"
              "import glob, os; fds = [os.path.realpath(f) for f in glob.glob('/proc/self/fd/*')]\n"
              "print('memfds open:', sum(f.startswith('/memfd:') for f in fds))\n")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "avg"), *dirs],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "early sum read other members, extents or weights: unused" in run.stderr
    assert "memfds open: 0" in run.stdout  # the unused sum's memory is freed, not kept beside
    got, _ = restore_params(str(tmp_path / "avg"))
    np.testing.assert_array_equal(np.asarray(got["w"]), np.float32(0.25) * trees[0]["w"] +
                                  np.float32(0.75) * trees[1]["w"])
    # a member the child cannot read raw (truncated data file): its error, no early sum, no output
    plan, _ = _plan(dirs[1])
    with open(plan["params/w"].path, "r+b") as f:
        f.truncate(plan["params/w"].offset + 10)
    run = _cli("-v", str(tmp_path / "t"), *dirs)
    assert run.returncode == 2 and "truncated" in run.stderr and "no early sum" in run.stderr
    assert not os.path.exists(tmp_path / "t")


def test_one_writer_per_average_and_a_full_disk_is_one_clear_error(tmp_path, monkeypatch):
    from warm_jax.guards import LockedError
    dirs = [_save(tmp_path / f"m{i}", _tree(i)) for i in range(2)]
    out = tmp_path / "avg"
    out.mkdir()
    # another process holds the output's lock: a flock on another open file stands in for it
    import fcntl
    fd = os.open(out / ".average.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(LockedError, match="being written by another"):
            soup.average_checkpoints(dirs, str(out))
        assert os.listdir(out) == [".average.lock"]
    finally:
        os.close(fd)

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Checkpointer, "save", full)
    fresh = tmp_path / "avg2"
    with pytest.raises(soup.AverageError, match="No space left on device.*nothing was committed"):
        soup.average_checkpoints(dirs, str(fresh))
    assert not fresh.exists()  # a failed average leaves no directory behind


@pytest.mark.parametrize("lost", ["_METADATA", "manifest.ocdbt"])
@pytest.mark.parametrize("which", [0, 1])
def test_a_member_with_lost_metadata_is_named_as_unreadable(tmp_path, lost, which):
    dirs = [_save(tmp_path / f"m{i}", _tree(i)) for i in range(2)]
    os.remove(os.path.join(dirs[which], "3", "state", lost))
    out = tmp_path / "avg"
    with pytest.raises(soup.AverageError, match=rf"member {dirs[which]}: step 3 lists no arrays"):
        soup.average_checkpoints(dirs, str(out))
    assert not out.exists()


def test_the_command_killed_from_outside_leaves_nothing_trusted_and_no_process(tmp_path):
    """SIGKILL of `python -m warm_jax.average` at random moments (seeded): no output a rerun would
    trust, no early-sum process left summing, and the rerun's average is the uninterrupted one."""
    import random
    import signal
    import subprocess
    import sys
    import time
    rng = np.random.default_rng(0)
    trees = [{"w": rng.normal(size=(1024, 2048)).astype(np.float32),   # 8 MiB per member
              "b": rng.normal(size=(7,)).astype(np.float32)} for _ in range(3)]
    dirs = [_save(tmp_path / f"m{i}", t) for i, t in enumerate(trees)]
    ref = str(tmp_path / "ref")
    assert _cli(ref, *dirs).returncode == 0
    want, _ = restore_params(ref)
    out = str(tmp_path / "avg")
    jitter = random.Random(0)   # one kill during the imports, then later ones (seeded)
    committed = []
    for delay in (0.15, jitter.uniform(0.4, 1.2), jitter.uniform(1.2, 2.5)):
        proc = subprocess.Popen([sys.executable, "-m", "warm_jax.average", out, *dirs],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)
        left = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if out.encode() in f.read():
                        left.append(pid)
            except OSError:
                pass
        assert not left, f"processes still running for {out}: {left}"
        done = os.path.isdir(out) and Checkpointer(out, read_only=True).latest_step() is not None
        committed.append(done)
        if done:   # killed after the commit: it must be whole; start the next kill afresh
            got, _ = restore_params(out)
            for k in want:
                np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))
            shutil.rmtree(out)
    assert committed[0] is False   # 0.15 s is inside the imports: nothing may be committed
    run = _cli(out, *dirs)   # the rerun after the last kill finishes the average
    assert run.returncode == 0, run.stderr
    got, _ = restore_params(out)
    for k in want:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))


def test_the_library_call_in_a_fresh_process_sums_early_like_the_command(tmp_path):
    """`warm_jax.average.average` before JAX is imported: the early sum is used, the bits are
    `soup.average_checkpoints`' own; after JAX is imported it sums in-process, same bits."""
    import subprocess
    import sys
    trees = [_tree(i) for i in range(3)]
    dirs = [_save(tmp_path / f"m{i}", t) for i, t in enumerate(trees)]
    script = ("import sys, logging\n"
              "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
              "if sys.argv[1] == 'late': import jax\n"
              "from warm_jax.average import average\n"
              "print(average(sys.argv[3:], sys.argv[2], [1, 2, 5]))\n")
    for when in ("early", "late"):
        run = subprocess.run([sys.executable, "-c", script, when, str(tmp_path / when), *dirs],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert ("used the early sum of 3 members" in run.stderr) == (when == "early"), run.stderr
    (early, _), (late, _) = restore_params(str(tmp_path / "early")), restore_params(
        str(tmp_path / "late"))
    ref = str(tmp_path / "ref")
    soup.average_checkpoints(dirs, ref, [1, 2, 5])
    got_ref, _ = restore_params(ref)
    for k in trees[0]:
        np.testing.assert_array_equal(np.asarray(early[k]), np.asarray(got_ref[k]))
        np.testing.assert_array_equal(np.asarray(late[k]), np.asarray(got_ref[k]))
