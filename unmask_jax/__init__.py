"""unmask-jax: face-mask-removal systems in JAX/Flax, from one CPU to a TPU pod."""
from unmask_jax import platforms as _platforms

_platforms.skip_absent_tpu()
