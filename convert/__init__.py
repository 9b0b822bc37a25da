"""``python -m convert``: PyTorch checkpoints to smis-jax (Flax/orbax) directories. See ``python -m convert -h``."""
