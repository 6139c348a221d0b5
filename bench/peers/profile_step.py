"""Where a jitted train step spends its time on XLA:CPU: a per-HLO-op table from a JAX trace.

`python -m bench.peers.profile_step rm|policy|sample [--steps N] [--top K] [--src DIR]` traces N steps of
the `bench.peers.jax_rm` workload and prints, per op (thunk) name, the wall time summed over the
threads that ran it, per step, largest first, plus the share of the step it covers. The optimized
HLO is written to /tmp/warm_profile_<which>.hlo.txt, to look ops up by name.
"""
import argparse
import collections
import os
import re
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("which", choices=("rm", "policy", "sample"))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--src", default=None)
    args = ap.parse_args()
    if args.src:
        sys.path.insert(0, os.path.abspath(args.src))
    import jax
    from jax.profiler import ProfileData

    from bench.peers.jax_rm import build
    step, state, batches, _ = build(args.which)
    hlo = step.lower(state, batches[0]).compile().as_text()
    with open(f"/tmp/warm_profile_{args.which}.hlo.txt", "w") as f:
        f.write(hlo)
    for i in range(2):
        state, m = step(state, batches[i])
        jax.device_get(m)
    d = tempfile.mkdtemp(prefix="warm_prof_")
    t0 = time.perf_counter()
    with jax.profiler.trace(d):
        for i in range(args.steps):
            state, m = step(state, batches[i % len(batches)])
            jax.device_get(m)
    wall = (time.perf_counter() - t0) / args.steps
    path = [os.path.join(dp, f) for dp, _, fs in os.walk(d) for f in fs if f.endswith("xplane.pb")]
    prof = ProfileData.from_file(path[0])
    per_name, per_thread = collections.defaultdict(float), collections.defaultdict(float)
    for plane in prof.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for ev in line.events:
                name = ev.name
                if name.startswith(("PjitFunction", "ThunkExecutor", "TfrtCpuExecutable",
                                    "XlaModule", "$")) or " " in name:
                    continue
                if name.startswith("np.asarray"):  # the host waiting for the step
                    continue
                per_name[name] += ev.duration_ns / 1e9
                per_thread[line.name] += ev.duration_ns / 1e9
    total = sum(per_name.values())
    print(f"wall {wall:.3f}s/step; op time summed over threads {total / args.steps:.3f}s/step")
    kinds = collections.defaultdict(float)
    for name, t in per_name.items():
        kinds[name.split(".")[0].rstrip("_0123456789")] += t
    print("by kind:", ", ".join(f"{k} {v / args.steps * 1e3:.0f}ms" for k, v in
                                sorted(kinds.items(), key=lambda kv: -kv[1])[:12]))
    where = hlo_index(hlo)
    for name, t in sorted(per_name.items(), key=lambda kv: -kv[1])[:args.top]:
        shape, op = where.get(name, ("", ""))
        print(f"{t / args.steps * 1e3:9.2f} ms  {100 * t / total:5.1f}%  {name:28s} {shape:28s} {op}")


def hlo_index(hlo: str) -> dict[str, tuple[str, str]]:
    """{instruction name: (result shape, op_name metadata without the jit prefix)}."""
    out = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) [^\n]*?op_name=\"([^\"]*)\"", hlo, re.M):
        out[m.group(1)] = (m.group(2), m.group(3).replace("jit(train_step)/", ""))
    return out


if __name__ == "__main__":
    main()
