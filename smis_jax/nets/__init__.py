"""The networks: Linen modules, their configs and parameter shapes, and the maths they share.

Pure: nothing here reads or writes files (``smis_jax.io`` does), and nothing imports from above this layer.
"""
