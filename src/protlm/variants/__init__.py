"""Zero-shot variant effects from a masked language model (Meier et al. 2021)."""
