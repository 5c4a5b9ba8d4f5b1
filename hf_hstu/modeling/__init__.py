"""The models: configurations, attention backends, layers and the HSTU / SASRec `PreTrainedModel`s.

This folder is flat and self-contained (only relative imports within it): `save_pretrained` copies these files next
to the weights, so that a checkpoint loads with `trust_remote_code=True` where hf_hstu is not installed.
"""
