import gzip
import json
import os

import numpy as np
import pytest

from conftest import REPO
from warm_jax.data import inspect as inspect_cli
from warm_jax.data.pipeline import batch_iterator, trim_to_bucket
from warm_jax.data.preferences import DataError, LoadPolicy, encode_pairs, read_preferences, split_hh
from warm_jax.data.real import PreferenceFileConfig, PreferenceFileTask, default_hh_path
from warm_jax.data.tokenizer import ByteTokenizer
from warm_jax.data.toy import EOS, ToyTask, ToyTaskConfig

HH = default_hh_path()
needs_hh = pytest.mark.skipif(HH is None, reason="HH-RLHF sample not found: set WARM_HH_PATH or "
                              "place ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz")
TLDR = os.path.join(REPO, "tests", "fixtures", "tldr_comparisons.jsonl")


@needs_hh
def test_real_hh_sample_loads_2312_pairs_split_correctly():
    pairs, summary = read_preferences(HH)
    assert summary.format == "hh" and len(pairs) == 2312 == summary.pairs
    assert all(p.prompt.strip() for p in pairs)
    assert summary.empty_responses == 4 and summary.hh_split_repaired == 5
    # line 1, checked by hand
    p = pairs[0]
    assert p.prompt.startswith("\n\nHuman: what are some pranks with a pen i can do?")
    assert p.prompt.endswith("do not have anything to do with pens\n\nAssistant:")
    assert p.chosen.startswith("No, sorry!  All of these involve a pen")
    assert p.rejected.startswith("There are lots of funny things you can do with pens")
    # line 87: the chosen assistant turn is empty (kept, encoded as a lone EOS)
    assert pairs[86].chosen == "" and pairs[86].rejected.startswith("Sure, the address is")
    # line 1689: the chosen response itself contains "Human:" turns; the split is repaired
    p = pairs[1688]
    assert p.prompt.endswith("what time should I do it?\n\nAssistant:")
    assert p.rejected.startswith("I'd suggest that you do it between 3 AM and 7 AM")
    arr = encode_pairs(pairs, ByteTokenizer(), max_prompt_len=64, max_response_len=32)
    assert arr["prompt"].shape == (2312, 64) and (arr["chosen_mask"].sum(1) >= 1).all()


@needs_hh
def test_hh_task_splits_are_disjoint_and_deterministic():
    t = PreferenceFileTask(PreferenceFileConfig(path=HH, max_prompt_len=64, max_response_len=32))
    sizes = {s: len(t.preference_split(s)["prompt"]) for s in ("train", "validation", "test")}
    assert sizes == {"train": 1850, "validation": 231, "test": 231}
    t2 = PreferenceFileTask(PreferenceFileConfig(path=HH, max_prompt_len=64, max_response_len=32))
    np.testing.assert_array_equal(t.preference_split("test")["chosen"],
                                  t2.preference_split("test")["chosen"])


def test_tldr_fixture_loads():
    pairs, s = read_preferences(TLDR)
    assert s.format == "tldr" and len(pairs) == 3
    assert pairs[0].prompt.startswith("SUBREDDIT: r/Cooking\nTITLE: Why is my cooking bland?\nPOST:")
    assert pairs[0].prompt.endswith("\nTL;DR:") and pairs[0].chosen.startswith("My food is bland")
    assert pairs[1].chosen.startswith("Roommate keeps eating")  # choice = 1
    assert "TITLE" not in pairs[2].prompt  # a null title is left out


def _write(tmp_path, lines, name="d.jsonl", raw=False):
    path = tmp_path / name
    if raw:
        path.write_bytes(b"\n".join(lines) + b"\n")
    else:
        path.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")
    return str(path)


GOOD = {"prompt": "p", "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize("lines, policy, message", [
    ([GOOD, "{not json"], LoadPolicy(), ":2: malformed JSON"),
    ([GOOD, {"prompt": "p", "chosen": "a"}], LoadPolicy(), ":2: missing field 'rejected' (format jsonl)"),
    ([GOOD, {"prompt": "p", "chosen": 3, "rejected": "b"}], LoadPolicy(), ":2: field 'chosen' must be a string"),
    ([GOOD, {"prompt": " ", "chosen": "a", "rejected": "b"}], LoadPolicy(), ":2: empty prompt"),
    ([GOOD, {"prompt": "p", "chosen": "", "rejected": "b"}], LoadPolicy(on_empty="error"),
     ":2: empty chosen response (policy on_empty='error')"),
    ([GOOD, {"prompt": "p", "chosen": "a", "rejected": "a"}], LoadPolicy(on_identical="error"),
     ":2: chosen == rejected (policy on_identical='error')"),
    ([GOOD, [1, 2]], LoadPolicy(), ":2: expected a JSON object, got an array"),
    ([{"chosen": "\n\nHuman: x\n\nAssistant: a", "rejected": "totally different"}], LoadPolicy(),
     ":1: chosen and rejected share no '\\n\\nAssistant:' turn"),
])
def test_malformed_input_errors_name_file_and_line(tmp_path, lines, policy, message):
    path = _write(tmp_path, lines)
    with pytest.raises(DataError) as e:
        read_preferences(path, policy=policy)
    assert str(e.value).startswith(path) and message in str(e.value), str(e.value)


def test_invalid_utf8_error_or_counted_replacement(tmp_path):
    path = _write(tmp_path, [json.dumps(GOOD).encode(), b'{"prompt": "p\xff", "chosen": "a", "rejected": "b"}'],
                  raw=True)
    with pytest.raises(DataError, match=r":2: invalid UTF-8 at byte 13"):
        read_preferences(path)
    pairs, s = read_preferences(path, policy=LoadPolicy(on_bad_utf8="replace"))
    assert len(pairs) == 2 and s.replaced_utf8 == 1 and "\ufffd" in pairs[1].prompt


def test_counted_policies_drop_nothing_silently(tmp_path):
    path = _write(tmp_path, [GOOD, {"prompt": "p", "chosen": "a", "rejected": "a"}, "", GOOD,
                             {"prompt": "p", "chosen": "", "rejected": "b"}])
    pairs, s = read_preferences(path)
    assert (s.lines, s.blank_lines, s.pairs, s.skipped_identical, s.duplicates,
            s.empty_responses) == (5, 1, 3, 1, 1, 1)
    assert s.lines == s.pairs + s.blank_lines + s.skipped_identical


def test_over_length_policies(tmp_path):
    pairs = [read_preferences(_write(tmp_path, [{"prompt": "x" * 20, "chosen": "y" * 3,
                                                 "rejected": "z" * 12}]))[0][0]]
    tok = ByteTokenizer()
    with pytest.raises(DataError, match=r"d.jsonl:1: prompt 21 / responses \[4, 13\] tokens exceed"):
        encode_pairs(pairs, tok, max_prompt_len=8, max_response_len=8,
                     policy=LoadPolicy(over_length="error"))
    _, s = read_preferences(_write(tmp_path, [GOOD]))
    arr = encode_pairs(pairs, tok, max_prompt_len=8, max_response_len=8, summary=s)
    assert (s.truncated_prompts, s.truncated_responses) == (1, 1)
    assert arr["prompt"][0, 0] == tok.bos_id and tok.decode(arr["prompt"][0]) == "x" * 7
    assert tok.decode(arr["rejected"][0]) == "z" * 8 and arr["chosen"][0, 3] == tok.eos_id
    with pytest.raises(DataError, match="every pair was skipped"):
        encode_pairs(pairs, tok, max_prompt_len=8, max_response_len=8,
                     policy=LoadPolicy(over_length="skip"))


def test_inspect_cli(tmp_path, capsys):
    assert inspect_cli.main([TLDR, "--format", "tldr"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pairs"] == 3 and out["lengths"]["chosen_tokens"]["max"] > 1
    bad = _write(tmp_path, [GOOD, "{oops"])
    assert inspect_cli.main([bad]) == 2
    assert f"error: {bad}:2: malformed JSON" in capsys.readouterr().err


# --- every bad input is a DataError naming file:line and the reason (robustness issue) ------------
def _gz(tmp_path, data: bytes, name="d.jsonl.gz"):
    path = tmp_path / name
    path.write_bytes(gzip.compress(data, mtime=0))
    return str(path)


GOOD_BYTES = ((json.dumps(GOOD) + "\n") * 40).encode()


def _gz_cut(tmp_path, n_bytes):
    """A gzipped file cut short by n_bytes (a copy interrupted mid-transfer)."""
    path = _gz(tmp_path, GOOD_BYTES)
    os.truncate(path, os.path.getsize(path) - n_bytes)
    return path


def _gz_bad_crc(tmp_path):
    path = tmp_path / "crc.jsonl.gz"
    data = bytearray(gzip.compress(GOOD_BYTES, mtime=0))
    data[-8] ^= 0xFF  # the trailer's CRC32
    path.write_bytes(bytes(data))
    return str(path)


@pytest.mark.parametrize("make, message", [
    (lambda t: str(t / "absent.jsonl"), ": preference file does not exist"),
    (lambda t: str(t), ": is a directory, not a preference file"),
    (lambda t: _write(t, [GOOD], name="plain.jsonl.gz"), ": not gzip data although the name ends in .gz"),
    (lambda t: _gz_cut(t, 20), ": truncated gzip data"),
    (lambda t: _gz_cut(t, 4), ": truncated gzip data"),
    (_gz_bad_crc, ":41: corrupt gzip data (CRC check failed"),
    (lambda t: _write(t, [gzip.compress(b"{}\n")], raw=True),
     ":1: invalid UTF-8 at byte 1 (the file looks gzip-compressed: name it .gz)"),
])
def test_file_level_problems_are_data_errors(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(DataError) as e:
        read_preferences(path)
    assert str(e.value).startswith(path) and message in str(e.value), str(e.value)


def _tldr_record(**change):
    rec = {"info": {"post": "a post", "title": "t", "subreddit": "s"},
           "summaries": [{"text": " one"}, {"text": " two"}], "choice": 0}
    for key, v in change.items():
        if key.startswith("info_"):
            rec["info"][key[5:]] = v
        else:
            rec[key] = v
    return rec


@pytest.mark.parametrize("change, message", [
    ({"info": ["post"]}, ":2: field 'info' must be an object, got an array"),
    ({"summaries": "one, two"}, ":2: 'summaries' must be a list of 2"),
    ({"summaries": ["one", "two"]},
     ":2: 'summaries[0]' must be an object with a string 'text', got a string"),
    ({"summaries": [{"text": "a"}, {"text": 7}]},
     ":2: field 'summaries[1].text' must be a string, got a number"),
    ({"summaries": [{"text": "a"}, {}]}, ":2: missing field 'summaries[1].text' (format tldr)"),
    ({"choice": 1.0}, ":2: 'choice' must be 0, 1 or a boolean, got 1.0"),
    ({"choice": "1"}, ":2: 'choice' must be 0, 1 or a boolean, got '1'"),
    ({"choice": 2}, ":2: 'choice' must be 0, 1 or a boolean, got 2"),
    ({"info_post": {"body": "x"}}, ":2: field 'info.post' must be a string or null, got an object"),
    ({"info_post": None, "info_article": 5},
     ":2: field 'info.article' must be a string or null, got a number"),
    ({"info_post": None}, ":2: missing field 'info.post' (format tldr)"),
    ({"info_title": ["a", "b"]}, ":2: field 'info.title' must be a string or null, got an array"),
    ({"info_subreddit": {"name": "s"}}, ":2: field 'info.subreddit' must be a string or null, got an object"),
])
def test_tldr_wrong_json_types_name_the_field(tmp_path, change, message):
    path = _write(tmp_path, [_tldr_record(), _tldr_record(**change)])
    with pytest.raises(DataError) as e:
        read_preferences(path, "tldr")
    assert str(e.value).startswith(path) and message in str(e.value), str(e.value)


def test_tldr_boolean_choice_and_null_title_are_accepted(tmp_path):
    pairs, _ = read_preferences(_write(tmp_path, [_tldr_record(choice=True, info_title=None)]))
    assert (pairs[0].chosen, pairs[0].rejected) == ("two", "one") and "TITLE" not in pairs[0].prompt


HH_CONV = {"chosen": "\n\nHuman: hi\n\nAssistant: yes", "rejected": "\n\nHuman: hi\n\nAssistant: no"}


@pytest.mark.parametrize("lines, fmt, message", [
    ([HH_CONV, {**HH_CONV, "chosen": ["yes"]}], "auto", ":2: field 'chosen' must be a string, got an array"),
    ([GOOD, {**GOOD, "prompt": None}], "auto", ":2: field 'prompt' must be a string, got null"),
    ([GOOD, '"just a string"'], "auto", ":2: expected a JSON object, got a string"),
    ([GOOD, "3"], "jsonl", ":2: expected a JSON object, got a number"),
    ([GOOD, "null"], "jsonl", ":2: expected a JSON object, got null"),
    ([GOOD, "1" * 5000], "jsonl", ":2: malformed JSON: Exceeds the limit"),
    ([GOOD, "[" * 100000], "jsonl", ":2: malformed JSON: maximum recursion depth"),
    ([GOOD, '{"prompt": "p", "chosen": "a\\ud800", "rejected": "b"}'], "auto",
     ":2: chosen text holds a lone surrogate \\ud800 (a bad JSON \\u escape"),
    ([_tldr_record(), _tldr_record(info_post="x\udfff")], "tldr", ":2: prompt text holds a lone surrogate"),
    ([HH_CONV, {**GOOD, **HH_CONV}], "hh", ":2: the record has a 'prompt' key, which format 'hh' would "
     "ignore; prompt/chosen/rejected records are read by format 'jsonl'"),
    ([HH_CONV, {**GOOD, **HH_CONV}], "auto", ":2: the record has a 'prompt' key"),
])
def test_wrong_types_surrogates_and_stray_keys_name_file_and_line(tmp_path, lines, fmt, message):
    path = _write(tmp_path, lines)
    with pytest.raises(DataError) as e:
        read_preferences(path, fmt)
    assert str(e.value).startswith(path) and message in str(e.value), str(e.value)


def test_surrogates_follow_the_utf8_policy_and_valid_pairs_pass(tmp_path):
    path = _write(tmp_path, [GOOD, '{"prompt": "p\\ud83d\\ude00", "chosen": "a\\ud800", "rejected": "b"}'])
    pairs, s = read_preferences(path, policy=LoadPolicy(on_bad_utf8="replace"))
    assert pairs[1].prompt == "p\U0001F600" and pairs[1].chosen == "a\ufffd" and s.replaced_utf8 == 1
    encode_pairs(pairs, ByteTokenizer(), max_prompt_len=8, max_response_len=8)  # now encodable


def test_hh_record_with_a_prompt_key_is_read_by_jsonl_and_auto(tmp_path):
    path = _write(tmp_path, [{**HH_CONV, "prompt": "P"}])
    for fmt in ("jsonl", "auto"):
        pairs, s = read_preferences(path, fmt)
        assert s.format == "jsonl" and pairs[0].prompt == "P"


@pytest.mark.parametrize("name, content, message", [
    ("absent.jsonl", None, ": preference file does not exist"),
    ("t.jsonl", [GOOD, {**GOOD, "chosen": {"a": 1}}], ":2: field 'chosen' must be a string"),
    ("t.jsonl", [_tldr_record(info="x")], ":1: field 'info' must be an object"),
    ("s.jsonl", ['{"prompt": "p", "chosen": "\\ud800", "rejected": "b"}'],
     ":1: chosen text holds a lone surrogate"),
    ("h.jsonl", [{**GOOD, **HH_CONV}], ":1: the record has a 'prompt' key"),
    ("g.jsonl.gz", [GOOD], ": not gzip data"),
])
def test_inspect_cli_reports_file_line_reason(tmp_path, capsys, name, content, message):
    path = str(tmp_path / name) if content is None else _write(tmp_path, content, name=name)
    args = [path, "--format", "hh"] if name == "h.jsonl" else [path]
    assert inspect_cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"error: {path}{message}" in err and "Traceback" not in err, err


def test_inspect_cli_process_has_no_traceback(tmp_path):
    import subprocess
    import sys
    path = _gz_cut(tmp_path, 10)
    r = subprocess.run([sys.executable, "-m", "warm_jax.data.inspect", path], cwd=REPO,
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO))
    assert r.returncode == 2 and r.stderr.startswith(f"error: {path}:") and \
        "truncated gzip data" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_split_hh_plain_case():
    p, c, r, repaired = split_hh("\n\nHuman: hi\n\nAssistant: yes", "\n\nHuman: hi\n\nAssistant: no",
                                 "x:1")
    assert (p, c, r, repaired) == ("\n\nHuman: hi\n\nAssistant:", "yes", "no", False)


# --- grain pipelines ------------------------------------------------------------------------------
def test_same_seed_same_order_other_seed_other_order_and_exact_resume():
    cols = {"x": np.arange(40)}
    take = lambda it, n: [next(it)["x"].tolist() for _ in range(n)]  # noqa: E731
    a = take(batch_iterator(cols, batch_size=8, seed=1), 6)
    assert a == take(batch_iterator(cols, batch_size=8, seed=1), 6)
    assert a != take(batch_iterator(cols, batch_size=8, seed=2), 6)
    assert sorted(sum(a[:5], [])) == list(range(40)), "an epoch covers every row once"
    assert a[:5] != a[5:] + a[:4], "epochs reshuffle"
    it = batch_iterator(cols, batch_size=8, seed=1)
    take(it, 3)
    state = it.get_state()
    rest = take(it, 3)
    it2 = batch_iterator(cols, batch_size=8, seed=1)
    it2.set_state(state)
    assert take(it2, 3) == rest == a[3:6]


def test_bucket_trimming_keeps_every_real_token():
    prompt = np.zeros((2, 16), np.int32)
    pmask = np.zeros((2, 16), np.int32)
    pmask[0, -5:] = 1
    pmask[1, -3:] = 1
    prompt[pmask.astype(bool)] = 7
    resp = np.zeros((2, 16), np.int32)
    rmask = np.zeros((2, 16), np.int32)
    rmask[0, :9] = 1
    b = trim_to_bucket({"prompt": prompt, "prompt_mask": pmask, "chosen": resp, "chosen_mask": rmask},
                       {"prompt": (4, 8, 16), "chosen": (4, 8, 16)})
    assert b["prompt"].shape == (2, 8) and b["prompt_mask"].sum() == 8 and (b["prompt"][0, -5:] == 7).all()
    assert b["chosen"].shape == (2, 16) and b["chosen_mask"].sum() == 9


# --- the toy task and its oracle -------------------------------------------------------------------
SMALL = ToyTaskConfig(n_pretrain=64, n_sft=64, n_rm_train=4000, n_rm_validation=64, n_rm_test=64,
                      n_rl_prompts=64, n_eval_prompts=64)


def test_toy_task_is_deterministic_by_seed():
    a, b = ToyTask(SMALL).preference_split("validation"), ToyTask(SMALL).preference_split("validation")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = ToyTask(ToyTaskConfig(**{**SMALL.__dict__, "seed": 1})).preference_split("validation")
    assert not np.array_equal(a["chosen"], c["chosen"])


def test_gold_reward_on_hand_made_summaries():
    t = ToyTask(SMALL)
    S = lambda i: 4 + i  # noqa: E731   salient token i
    F = lambda i: 16 + i  # noqa: E731  filler token i
    doc = [2] + [F(0), S(1), F(2), S(5), F(3)] + [F(1)] * 9 + [3]
    resp = [[S(1), S(5), EOS, 0, 0], [S(1), EOS, 0, 0, 0], [S(1), S(5), S(7), S(1), EOS],
            [S(1), F(9), EOS, 0, 0], [S(1), S(5), F(2), F(2), F(2)]]
    mask = [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1] * 5, [1, 1, 1, 0, 0], [1] * 5]
    g = t.gold_reward(np.array([doc] * 5), np.array(resp), np.array(mask))
    # perfect; half coverage; invented S7 + repeated S1; one filler; no EOS + 3 filler + 2 repeats
    np.testing.assert_allclose(g, [2.0, 1.0, 2 - 1 - 0.5, 1 - 0.3, 2 - 0.9 - 1.0 - 1.0], atol=1e-6)


def test_oracle_labels_agree_with_gold_at_the_rate_its_temperature_implies():
    cfg = ToyTaskConfig(**{**SMALL.__dict__, "labeller_temperature": 0.8, "hack_share": 0.0})
    t = ToyTask(cfg)
    rng = np.random.default_rng(0)
    prompts, keys = t._docs(4000, rng)
    a, am = t._responses(keys, ["base"] * 4000, rng)
    b, bm = t._responses(keys, ["base"] * 4000, rng)
    ga, gb = t.gold_reward(prompts, a, am), t.gold_reward(prompts, b, bm)
    out = t.label_pairs(prompts, a, am, b, bm, rng, flip=False)
    d = np.abs(ga - gb)
    informative = d > 0
    expected = np.mean(1 / (1 + np.exp(-d[informative] / 0.8)))
    observed = np.mean(out["gold_margin"][informative] > 0)
    se = np.sqrt(expected * (1 - expected) / informative.sum())
    assert abs(observed - expected) < 4 * se, (observed, expected, se)
    assert 0.6 < observed < 0.85, "labeller noise should resemble humans' 65-75% agreement"


def test_flip_fraction_flips_exactly_that_share_and_records_it():
    t = ToyTask(ToyTaskConfig(**{**SMALL.__dict__, "flip_fraction": 0.25}))
    tr = t.preference_split("train")
    assert tr["flipped"].mean() == 0.25
    assert not t.preference_split("validation")["flipped"].any()
    # a flipped label goes against the oracle's draw: most flipped pairs now disagree with gold
    assert np.mean(tr["gold_margin"][tr["flipped"]] < 0) > 0.6


def test_toy_config_errors():
    with pytest.raises(ValueError, match=r"ToyTaskConfig.flip_fraction=0.7 is out of range: allowed \[0.0, 0.5\]"):
        ToyTaskConfig(flip_fraction=0.7)
    with pytest.raises(ValueError, match=r"ToyTaskConfig.max_salient=13 is out of range"):
        ToyTaskConfig(max_salient=13)


def test_a_preference_file_task_says_what_its_length_limits_cut(tmp_path, capsys):
    import json as _json
    from warm_jax.data.real import PreferenceFileConfig, PreferenceFileTask
    f = tmp_path / "p.jsonl"
    rows = [{"prompt": "p" * n, "chosen": "c" * 5, "rejected": "r" * m}
            for n, m in ((3, 4), (40, 4), (3, 30), (50, 50))]
    f.write_text("".join(_json.dumps(r) + "\n" for r in rows))
    task = PreferenceFileTask(PreferenceFileConfig(path=str(f), max_prompt_len=20,
                                                   max_response_len=10,
                                                   validation_fraction=0.25, test_fraction=0.25))
    err = capsys.readouterr().err
    # bytes + BOS: prompts of 40 and 50 exceed 20; responses of 30 and 50 (+ EOS) exceed 10
    assert task.truncation in err and "of 4 pairs, 2 prompts cut to their last 20 tokens, " \
        "2 responses to their first 10, 0 pairs dropped" in err
    quiet = tmp_path / "q.jsonl"
    quiet.write_text(_json.dumps(rows[0]) + "\n" + _json.dumps(dict(rows[0], chosen="x")) + "\n")
    PreferenceFileTask(PreferenceFileConfig(path=str(quiet), validation_fraction=0.0,
                                            test_fraction=0.0))
    assert capsys.readouterr().err == ""
