"""Models: the Llama-style decoder (policy and reward heads), its config, and the KV-cache sampler."""
from warm_jax.models.config import ModelConfig, PRESETS, preset
from warm_jax.models.sampling import SamplingConfig, Samples, jitted_sampler, make_sampler
from warm_jax.models.transformer import Decoder, LanguageModel, RewardModel, init_cache, unbox
