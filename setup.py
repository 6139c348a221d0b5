"""warm_jax: Weight Averaged Reward Models (Ramé et al., ICML 2024) in JAX/Flax."""
import setuptools

setuptools.setup(
    name="warm_jax",
    version="0.1.0",
    description="WARM: weight averaged reward models, RM population training and RLHF in JAX/Flax",
    packages=setuptools.find_packages(include=["warm_jax", "warm_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10",
        "flax>=0.10",
        "optax",
        "orbax-checkpoint",
        "grain",
        "gin-config",
        "absl-py",
        "numpy",
        "tensorboardX",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "nbclient", "nbformat", "ipykernel", "gguf", "tokenizers",
                 "safetensors"],
        "import": ["tokenizers", "gguf", "safetensors"],
        "xm": ["xmanager"],
    },
)
