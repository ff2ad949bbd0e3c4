"""Function prediction: whole-protein embeddings -> cross-validated heads -> predictions."""
