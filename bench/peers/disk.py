"""Disk-side measurements for the averaging comparison: cold caches, the I/O floor, GNU time runs.

The floor of a tool = reading its own input bytes cold (page cache evicted with
posix_fadvise(DONTNEED) after a sync) + writing its output's bytes once (buffered, as the tools
write, from a synced page cache). Reads are timed four ways (into a buffer or by sendfile, which
copies nothing into the process; sequential or one thread per file) and the fastest counts. The
durable floor adds the fsync that orbax (not mergekit) does. On a VM, evicting clears the guest's
page cache only.
"""
import concurrent.futures
import os
import re
import subprocess
import time

CHUNK = 16 << 20


def files_under(*dirs: str) -> list[str]:
    return sorted(os.path.join(dp, f) for d in dirs for dp, _, fs in os.walk(d) for f in fs)


def nbytes(*dirs: str) -> int:
    return sum(os.path.getsize(p) for p in files_under(*dirs))


def evict(*dirs: str) -> None:
    """Drop these files' pages from the page cache (clean pages only: sync first)."""
    os.sync()
    for p in files_under(*dirs):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _read(path: str) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while True:
            k = f.readinto(view)
            if not k:
                return n
            n += k


def _sendfile(path: str) -> int:
    """Read a file through the kernel only (sendfile to /dev/null): no copy into this process."""
    n = 0
    with open(path, "rb", buffering=0) as f, open(os.devnull, "wb", buffering=0) as sink:
        size = os.fstat(f.fileno()).st_size
        while n < size:
            k = os.sendfile(sink.fileno(), f.fileno(), n, size - n)
            if not k:
                break
            n += k
    return n


def read_cold_s(*dirs: str) -> float:
    """Best of four cold reads of every file under `dirs`: into a buffer or through the kernel
    only (sendfile, no copy into the process), each sequential and with one thread per file."""
    paths = files_under(*dirs)
    times = []
    for reader in (_read, _sendfile):
        for parallel in (False, True):
            evict(*dirs)
            t0 = time.perf_counter()
            if parallel:
                with concurrent.futures.ThreadPoolExecutor(min(8, len(paths))) as ex:
                    list(ex.map(reader, paths))
            else:
                for p in paths:
                    reader(p)
            times.append(time.perf_counter() - t0)
    return min(times)


def write_s(directory: str, n: int, durable: bool = False) -> float:
    """Write `n` bytes (buffered, then close) into a scratch file under `directory`, starting from
    a clean page cache (sync first: dirty pages another tool left would slow it); `durable` adds
    the fsync that puts them on the disk, as orbax does before it commits a checkpoint."""
    path = os.path.join(directory, ".floor_write")
    block = os.urandom(CHUNK)
    os.sync()
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        left = n
        while left > 0:
            left -= f.write(block[:min(left, CHUNK)])
        if durable:
            os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    os.remove(path)
    return dt


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                out += kids
                todo += kids
        except OSError:
            pass
    return out


def _memfd_kb(pids: list[int]) -> int:
    """KiB allocated to the memory files (memfd) these processes hold open, each counted once:
    pages of a memfd that no process maps at the moment appear in no RssShmem."""
    seen = {}
    for p in pids:
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{p}/fd/{fd}").startswith("/memfd:"):
                    st = os.stat(f"/proc/{p}/fd/{fd}")
                    seen[st.st_ino] = st.st_blocks // 2
            except OSError:
                continue
    return sum(seen.values())


def _memory_kb(pids: list[int]) -> tuple[int, int]:
    """(anonymous, total) resident memory of these processes together, in KiB, counting shared
    memory once (the early sum's memfd, which the averaging command's two processes both map):
    shared = the larger of max RssShmem and the memfds' allocated pages (`_memfd_kb`);
    anonymous = Σ RssAnon + shared (heap, not file pages a tool maps);
    total = Σ (VmRSS − RssShmem) + shared. A kernel without RssShmem (< 4.5) counts 0 there."""
    anon = total = shmem = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                st = f.read()
        except OSError:
            continue

        def get(key):
            m = re.search(key + r":\s*(\d+)", st)
            return int(m.group(1)) if m else 0
        a, rss, sh = get("RssAnon"), get("VmRSS"), get("RssShmem")
        anon, total, shmem = anon + a, total + rss - sh, max(shmem, sh)
    shmem = max(shmem, _memfd_kb(pids))
    return anon + shmem, total + shmem


def gnu_time(argv: list[str], env: dict | None = None, cwd: str | None = None) -> dict:
    """Run `argv` under /usr/bin/time -v: {wall_s, max_rss_mb, user_s, sys_s}, and max_anon_mb:
    the peak of its resident anonymous memory, sampled every 10 ms from /proc (GNU time's maximum
    RSS also counts the pages of files a tool maps, such as mergekit's safetensors inputs)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-v"] + argv, env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_anon = peak_total = 0
    while proc.poll() is None:
        anon, total = _memory_kb(_descendants(proc.pid))
        peak_anon, peak_total = max(peak_anon, anon), max(peak_total, total)
        time.sleep(0.01)
    stdout, stderr = proc.communicate()
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(f"{argv[:3]} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    err = out.stderr

    def field(name):
        return re.search(re.escape(name) + r":\s*([\d.:]+)", err).group(1)
    h_m_s = [float(x) for x in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")]
    gnu_wall = sum(v * 60 ** i for i, v in enumerate(reversed(h_m_s)))
    return {"wall_s": round(gnu_wall, 3), "outer_wall_s": round(wall, 3),
            # GNU time's figure is one process's peak; a tool that forks (the averaging command's
            # early sum) is charged its whole process tree, sampled, where that is larger
            "max_rss_mb": max(int(field("Maximum resident set size (kbytes)")), peak_total) / 1024,
            "max_anon_mb": peak_anon / 1024,
            "user_s": float(field("User time (seconds)")),
            "sys_s": float(field("System time (seconds)"))}
