"""Model classes built on NNsight: language models (transformers)."""
