"""Data pipelines for unmask-jax: face sources, landmarks, mask synthesis, Grain batches.

Knows nothing of models. Data flows one way:
source -> sample (image, landmarks, identity) -> align/augment -> mask synthesis -> batch.
"""
