"""Drive several training workers (`jax_rm.py`, `torch_rm.py`) in alternation, in one sitting.

Each worker warms up on its own, then the parent asks them in turn for K timed steps, round after
round, so that whatever else loads the machine falls on all of them alike; the result per worker is
the median over rounds. Each turn also records how many cores other processes kept busy during
it (from /proc/stat, less the worker's own CPU time): a turn under `QUIET` cores of other load is
a quiet one, the only kind that says how fast a trainer is on this CPU. PyTorch's OpenMP threads
spin-wait, so a busy neighbour slows it several times more than XLA's thread pool.
"""
import os
import statistics
import subprocess
import sys
import time

QUIET = 0.15  # a turn is quiet when other processes used less than this many cores during it


def busy_s() -> float:
    """CPU seconds all processes have spent busy (not idle, not waiting for I/O) since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


class Worker:
    def __init__(self, name: str, argv: list[str], env: dict | None = None, cwd: str | None = None):
        self.name, self.times, self.cpu, self.others, self.extra = name, [], [], [], []
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=env, cwd=cwd)
        self.n_params = int(self._expect("ready")[0])

    def _expect(self, word: str) -> list[str]:
        for line in self.proc.stdout:
            if line.startswith("@@"):
                parts = line[2:].split()
                if parts[0] != word:
                    raise RuntimeError(f"{self.name}: expected {word}, got {line!r}")
                return parts[1:]
        raise RuntimeError(f"{self.name}: exited with {self.proc.wait()} before '{word}'")

    def run(self, steps: int) -> float:
        """Time `steps` steps; also how many cores other processes kept busy meanwhile."""
        b0, t0 = busy_s(), time.perf_counter()
        self.proc.stdin.write(f"run {steps}\n")
        self.proc.stdin.flush()
        out = self._expect("done")
        b1, t1 = busy_s(), time.perf_counter()
        self.times.append(float(out[0]))
        self.cpu.append(float(out[1]))
        self.others.append(max(0.0, (b1 - b0) - float(out[1])) / (t1 - t0))
        self.extra.append(out[2:])
        return self.times[-1]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=120)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def alternate(specs: dict[str, dict], *, rounds: int, steps: int, log=sys.stderr) -> dict:
    """{name: median seconds per step} of workers built from `specs` (Worker kwargs), started one
    after another (so compilation does not overlap) and run `rounds` times `steps` steps each."""
    workers = {}
    try:
        for name, kw in specs.items():
            t0 = time.perf_counter()
            workers[name] = Worker(name, **kw)
            print(f"[peers] {name}: ready in {time.perf_counter() - t0:.1f}s "
                  f"({workers[name].n_params:,} parameters)", file=log, flush=True)
        for r in range(rounds):
            order = list(workers.values())
            if r % 2:
                order.reverse()  # no side always runs right after the same neighbour
            for w in order:
                w.run(steps)
            print(f"[peers] round {r + 1}/{rounds}: " + ", ".join(
                f"{w.name} {w.times[-1] / steps:.3f}s/step (cpu {w.cpu[-1] / steps:.2f}s, "
                f"others {w.others[-1]:.2f} cores)"
                for w in workers.values()),
                file=log, flush=True)
        return {name: {"s_per_step": statistics.median(w.times) / steps,
                       "cpu_s_per_step": statistics.median(w.cpu) / steps,
                       "n_params": w.n_params,
                       "all_s_per_step": [round(t / steps, 4) for t in w.times],
                       "others_cores": [round(x, 3) for x in w.others],
                       "quiet_s_per_step": [round(t / steps, 4) for t, o in zip(w.times, w.others)
                                            if o < QUIET]}
                for name, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
