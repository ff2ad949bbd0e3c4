"""`protlm evaluate`: compare models on parameters, masked perplexity and contact precision,
beside the published figures (see protlm.evaluate.run)."""
