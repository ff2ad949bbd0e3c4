"""How a loaded model runs: inference precision (fp32, bf16, int8 and its weight cache, auto),
the options every inference command shares, distributed ranks, and torch.compile."""
