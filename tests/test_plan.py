"""Plan past this machine: the ~1B preset on a 64-device pod slice, built abstractly."""
import os

import gin
import jax.numpy as jnp

from warm_jax.models import LanguageModel, preset
from warm_jax.train import OptimConfig, make_optimizer, plan_state_bytes
from conftest import REPO

GB = 1024 ** 3


def test_1b_on_64_devices_fits_16gb_per_device():
    cfg = preset("1b")
    assert 1.1e9 < cfg.num_params() < 1.4e9
    toks = jnp.ones((1, 8), jnp.int32)
    init = lambda r: LanguageModel(cfg).init(r, toks)["params"]  # noqa: E731
    sizes = {"member": 1, "data": 1, "fsdp": 16, "model": 4}
    b = plan_state_bytes(init, make_optimizer(OptimConfig()), sizes)
    assert b["params_total"] == cfg.num_params() * 4
    per_device = b["params"] + b["opt_state"]
    # fsdp x model = 64 shards: every big matrix divides evenly, so ~1/64 of the total
    total = b["params_total"] + b["opt_state_total"]
    assert per_device < 1.1 * total / 64 + 64 * 1024 ** 2
    assert per_device < 16 * GB, f"{per_device / GB:.2f} GB per device does not fit 16 GB"
    print(f"1b preset on fsdp=16 x model=4: {per_device / GB:.3f} GB/device "
          f"(params+Adam), total {total / GB:.2f} GB")


def test_pod_gin_file_names_a_64_device_mesh():
    gin.clear_config()
    path = os.path.join(REPO, "gin", "mesh", "pod64.gin")
    text = open(path).read()
    assert "fsdp = 16" in text and "model = 4" in text
