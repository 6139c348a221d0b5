"""warm_jax: Weight Averaged Reward Models (Ramé et al., ICML 2024) in JAX/Flax."""
import setuptools

setuptools.setup(
    name="warm_jax",
    version="0.1.0",
    description="WARM: weight averaged reward models, RM population training and RLHF in JAX/Flax",
    packages=setuptools.find_packages(include=["warm_jax", "warm_jax.*"]),
    python_requires=">=3.11",
    license="Apache-2.0",
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
        # pytest 9.2 keeps node ids in Item._id, where pytest-xdist 3.8's loadgroup cannot tag
        # them: tests sharing a pipeline-run fixture would each rebuild it on every worker
        "test": ["pytest>=8,<9.2", "pytest-xdist>=3.5", "nbclient", "nbformat", "ipykernel", "gguf", "tokenizers",
                 "safetensors", "jinja2", "import-linter"],
        "import": ["tokenizers", "gguf", "safetensors", "jinja2", "import-linter"],
        # `tensorboard --logdir runs/demo`: every training loop also writes TensorBoard events
        "tensorboard": ["tensorboard"],
        "xm": ["xmanager"],
    },
)
