"""Converters from published checkpoints to our modules, one module per family.

Each holds a readable table from the reference's state-dict names to ours (gpt2.py:
transformers' GPT2LMHeadModel; clip.py: transformers' CLIPModel and CLIPTextModel) and
the mapping of the reference config to ours; common.py applies a table and fails loudly.
Nothing here imports the model classes, so the models can import their converters.
"""
