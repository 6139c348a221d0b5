"""Plan past this machine: the ~1B preset on a 64-device pod slice, built abstractly from gin."""
import gin
import jax.numpy as jnp

from warm_jax import main as entry  # registers the configurables
from warm_jax.models import LanguageModel
from warm_jax.train import OptimConfig, make_optimizer, plan_state_bytes

GB = 1024 ** 3


def test_1b_on_the_pod64_mesh_fits_16gb_per_device():
    gin.clear_config()
    entry.parse_gin(["model/1b.gin", "mesh/pod64.gin"], [], [entry.GIN_DIR])
    cfg = gin.query_parameter("%MODEL").scoped_configurable_fn()
    sizes = dict({"member": 1, "data": 1, "fsdp": 1, "model": 1}, **gin.query_parameter("%MESH_SHAPE"))
    gin.clear_config()
    assert sizes["fsdp"] * sizes["model"] * sizes["data"] == 64
    assert 1.1e9 < cfg.num_params() < 1.4e9 and cfg.n_layers == 16
    toks = jnp.ones((1, 8), jnp.int32)
    b = plan_state_bytes(lambda r: LanguageModel(cfg).init(r, toks)["params"],
                         make_optimizer(OptimConfig()), sizes)
    assert b["params_total"] == cfg.num_params() * 4
    per_device = b["params"] + b["opt_state"]
    total = b["params_total"] + b["opt_state_total"]
    # every big matrix divides evenly over fsdp x model, so a device holds ~1/64 of the total
    assert per_device < 1.05 * total / 64 + 1024 ** 2
    assert per_device < 16 * GB, f"{per_device / GB:.2f} GB per device does not fit 16 GB"
    print(f"1b on {sizes}: {per_device / GB:.3f} GB/device (params + Adam), total {total / GB:.2f} GB")
