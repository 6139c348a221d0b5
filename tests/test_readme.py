"""The README's generated blocks agree with the files they are generated from."""
import os

import pytest

from conftest import REPO


def _block(text, begin, end):
    assert text.count(begin) == 1 and text.count(end) == 1, f"markers {begin!r} / {end!r}"
    return text.split(begin, 1)[1].split(end, 1)[0].strip("\n")


def test_benchmark_table_is_generated_from_bench_results(tmp_path):
    from bench import table
    doc = open(table.BENCH_MD, encoding="utf-8").read()
    want = table.block(table.load(table.RESULTS), table.load(table.RESULTS_GPU))
    assert _block(doc, table.BEGIN, table.END) == want, (
        "docs/benchmarks.md's table disagrees with bench/results*.json: "
        "run python -m bench.table --write")
    # every number in the block comes from the files: a changed value changes the block
    results = dict(table.load(table.RESULTS), kv_cache_speedup=12.75)
    assert "12.75" in table.block(results, None)
    # and the rewrite touches only what lies between the markers
    copy = tmp_path / "doc.md"
    copy.write_text("head\n" + table.BEGIN + "\nold\n" + table.END + "\ntail\n")
    table.rewrite(str(copy), "new")
    assert copy.read_text() == "head\n" + table.BEGIN + "\nnew\n" + table.END + "\ntail\n"


def test_claims_blocks_are_generated_from_recorded_runs():
    """The default demo's, the base-seed and the FULL=1 claims tables (docs/results.md) and the
    primary claims (README.md) come from bench/claims/*.json, which bench.record_demo copies from
    fresh runs' claims.json."""
    from bench import table
    from warm_jax.eval import tables as T
    blocks = table.claims_blocks()
    assert set(blocks[table.RESULTS_MD]) == {(T.DEMO_BEGIN, T.DEMO_END), (T.BASE_BEGIN, T.BASE_END),
                                             (T.CPU_BEGIN, T.CPU_END), (T.FULL_BEGIN, T.FULL_END)}, (
        "record the default demo, base seed 1 and FULL=1: python -m bench.record_demo")
    assert (T.PRIMARY_BEGIN, T.PRIMARY_END) in blocks[table.README]
    recorded = {n for n in table.BASE_SEED_RUNS + (table.FULL_RUN,)
                if table.load(os.path.join(table.CLAIMS_DIR, f"{n}.json")) is not None}
    assert recorded, "no recorded run: python -m bench.record_demo"
    if table.FULL_RUN not in recorded:
        assert blocks[table.RESULTS_MD][(T.FULL_BEGIN, T.FULL_END)] == table.NO_FULL
    if not any(all(table.load(os.path.join(table.CLAIMS_DIR, f"{n}.json")) for n in pair)
               for pair in table.CPU_RUNS):
        assert blocks[table.RESULTS_MD][(T.CPU_BEGIN, T.CPU_END)] == table.NO_CPU
    if not set(table.BASE_SEED_RUNS) <= recorded:
        assert blocks[table.RESULTS_MD][(T.BASE_BEGIN, T.BASE_END)] == table.NO_BASE
    for path, file_blocks in blocks.items():
        text = open(path, encoding="utf-8").read()
        for (begin, end), want in file_blocks.items():
            assert _block(text, begin, end) == want, (
                f"{os.path.relpath(path, REPO)}'s generated blocks disagree with bench/claims/: "
                "run python -m bench.table --write")


def test_readmes_cross_cpu_counts_are_the_records():
    """README's sentence on another CPU counts, per base seed, the claims decided on both CPUs
    whose outcome changes (bench/claims/ records)."""
    from bench import table
    from warm_jax.eval.tables import outcome_changes
    pairs = [[table.load(os.path.join(table.CLAIMS_DIR, f"{n}.json")) for n in pair]
             for pair in table.CPU_RUNS]
    if not all(all(p) for p in pairs):
        pytest.skip("both base seeds are not recorded on both CPUs")
    counts = [outcome_changes(p) for p in pairs]
    assert len({len(decided) for decided, _ in counts}) == 1
    text = " ".join(open(os.path.join(REPO, "README.md"), encoding="utf-8").read().split())
    want = (f"{len(counts[0][1])} and {len(counts[1][1])} of the {len(counts[0][0])} claims "
            "decided on both CPUs change outcome")
    assert want in text, want


def test_readme_is_short_and_cites_only_what_exists():
    import re
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    assert len(text.splitlines()) <= 250
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        if not link.startswith("http"):
            assert os.path.exists(os.path.join(REPO, link)), link
    for doc in os.listdir(os.path.join(REPO, "docs")):
        if doc.endswith(".md"):
            body = open(os.path.join(REPO, "docs", doc), encoding="utf-8").read()
            for link in re.findall(r"\]\(([^)#]+)\)", body):
                if not link.startswith("http"):
                    assert os.path.exists(os.path.join(REPO, "docs", link)), (doc, link)
            assert not re.search(r"\bissue \d", body), doc


def test_base_seed_check_names_a_flip():
    from warm_jax.eval.tables import base_seed_block
    c = lambda o, e, i="x": {"claim": i, "outcome": o, "effect": e}  # noqa: E731
    ok = base_seed_block([{"base_seed": 0, "claims": [c("reproduced", 0.1)]},
                          {"base_seed": 1, "claims": [c("inconclusive", 0.02)]}])
    assert "none goes from reproduced to contradicted" in ok and "0 of 1 claims" in ok
    assert "(x differ)" in ok
    # a claim without inputs on one base seed is not counted as "the same outcome"
    two = base_seed_block([{"base_seed": 0, "claims": [c("reproduced", 0.1), c(None, None, "y")]},
                           {"base_seed": 1, "claims": [c("reproduced", 0.2), c(None, None, "y")]}])
    assert "1 of 1 claims decided on every base seed" in two
    bad = base_seed_block([{"base_seed": 0, "claims": [c("reproduced", 0.1)]},
                           {"base_seed": 1, "claims": [c("contradicted", -0.1)]}])
    assert "**x go from reproduced to contradicted**" in bad
    # the cross-CPU block: one table per base seed, columns named by CPU and commit
    from warm_jax.eval.tables import cpu_block
    rec = lambda cpu, o: {"base_seed": 1, "cpu": cpu, "commit": "0123456789",  # noqa: E731
                          "claims": [c(o, 0.1)]}
    cpus = cpu_block([[rec("Intel", "reproduced"), rec("AMD", "reproduced")]])
    assert cpus.startswith("Base seed 1:") and "| claim | Intel (0123456) | AMD (0123456) |" in cpus
    assert "1 of 1 claims decided on every CPU have the same outcome on each;" in cpus


def test_goals_are_judged_by_their_direction():
    from bench import table
    rows = [("a", "x", (">=", 1.0)), ("b", "y", ("<=", 1.5)), ("c", "z", None)]
    out = table._rows({"a": 0.99, "b": 1.5, "c": 3}, rows)
    assert out[0].endswith("| **not met** |") and out[1].endswith("| met |")
    assert out[2].endswith("|  |  |")
    assert "not measured" in table._rows({}, rows)[0]


def test_record_test_reads_pytest_summaries_and_refuses_red_runs(tmp_path):
    from bench.record_test import main, parse
    assert parse("x\n194 passed, 2 skipped in 554.34s (0:09:14)\n") == {
        "passed": 194, "skipped": 2, "seconds": 554.34}
    assert parse("=== 3 passed in 1.50s ===") == {"passed": 3, "seconds": 1.5}
    red = tmp_path / "red.log"
    red.write_text("2 failed, 194 passed, 2 skipped in 554.34s (0:09:14)\n")
    assert main([str(red)]) == 2
    empty = tmp_path / "empty.log"
    empty.write_text("no tests ran in 0.01s\n")
    assert main([str(empty)]) == 2


def test_readmes_real_data_prose_is_the_record():
    """The real-data section's counts (pairs, what the limits cut, the fine-tuned weights) are the
    recorded run's (bench/real/, bench.record_real); its table is a generated block (above)."""
    from bench import table
    r = table.load(table.REAL_RUN)
    if r is None:
        pytest.skip("no real-data run recorded: python -m bench.record_real")
    h = r["heldout"]
    t = h["truncation"]
    text = " ".join(open(os.path.join(REPO, "README.md"), encoding="utf-8").read().split())
    for want in (f"the {t['pairs']:,} HH-RLHF",
                 f"({t['prompts']:,} prompts, {t['responses']:,} responses)",
                 f"{h['trained_parameters'] / 1e6:.1f}M of the {h['parameters'] / 1e6:.0f}M "
                 "weights", f"{h['pairs']} test pairs"):
        assert want in text, want
