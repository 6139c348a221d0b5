"""One process of a 2-process CPU run (launched by tests/test_distributed.py)."""
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from warm_jax import sharding as shd  # noqa: E402
from warm_jax.main import maybe_initialize_distributed  # noqa: E402
from warm_jax.train import put_batch  # noqa: E402

assert maybe_initialize_distributed(), "coordinator variables not seen"
pid = jax.process_index()
mesh = shd.make_mesh(data=-1)
# each process contributes its own rows; the global batch spans both processes' devices
local = {"x": np.full((2, 3), float(pid + 1), np.float32)}
batch = put_batch(local, mesh)
total = jax.jit(lambda b: jnp.sum(b["x"]), out_shardings=shd.replicated(mesh))(batch)
print(f"RESULT process={pid} of {jax.process_count()} devices={jax.device_count()} "
      f"global_shape={batch['x'].shape} sum={float(total)}", flush=True)
jax.distributed.shutdown()
sys.exit(0)
