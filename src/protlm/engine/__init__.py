"""One inference engine for every command that runs a model over many sequences.

`Engine` (core): packed token-budget batches, windows, pooling, contacts on the padded path,
optional torch.compile with bucketed token counts. `prefetch` / `BackgroundWriter` (writer):
reading ahead of the device and writing behind it.
"""

from protlm.engine.core import COMPILE_BUCKET, OUTPUTS, Engine, HostBatch, Job
from protlm.engine.writer import BackgroundWriter, prefetch

__all__ = ["COMPILE_BUCKET", "OUTPUTS", "Engine", "HostBatch", "Job", "BackgroundWriter", "prefetch"]
