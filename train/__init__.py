"""``python -m train.run``: few-shot encoder training (thin CLI over smis_jax.experiment)."""
