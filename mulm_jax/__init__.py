"""mulm_jax: build, train and serve small transformer language models (µLMs) with JAX and Flax."""

__version__ = "0.1.0"
