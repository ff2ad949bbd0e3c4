"""The server's settings: one frozen dataclass, checked once, built by `protlm serve`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from protlm.serve.backend import ConfigError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeConfig:
    """What `protlm serve` runs: the model, where it listens, and every bound it keeps.

    Costs are counted in model tokens (residues + BOS/EOS per window; a variant scorer's
    forwards each count as one sequence), the unit of `--max-batch-tokens`.
    """

    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    device: str | None = None  # None: cuda if available, as `protlm embed`
    dtype: str = "fp32"
    max_batch_tokens: int = 4096  # per engine batch, as `protlm embed --toks-per-batch`
    max_queue_tokens: int = 1 << 20  # waiting work; past it: 503 + Retry-After
    max_sequences: int = 1000  # per request
    max_residues: int = 1 << 18  # per request, input residues
    max_body_bytes: int = 16 << 20  # per request body
    batch_wait_ms: float = 0.0  # linger for more work before a batch that is not full
    max_connections: int = 1024  # uvicorn's limit_concurrency: past it, 503
    token: str | None = field(default=None, repr=False)  # bearer token; None: no auth
    log_level: str = "info"

    def __post_init__(self):
        for name in ("max_batch_tokens", "max_queue_tokens", "max_sequences", "max_residues",
                     "max_body_bytes", "max_connections"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0..65535, got {self.port}")
        if self.batch_wait_ms < 0:
            raise ConfigError(f"--batch-wait-ms must be >= 0, got {self.batch_wait_ms}")
        if self.max_queue_tokens < self.max_batch_tokens:
            raise ConfigError(f"--max-queue-tokens ({self.max_queue_tokens}) must hold at least one batch "
                              f"(--max-batch-tokens {self.max_batch_tokens})")

    @property
    def public(self) -> bool:
        """True when the server listens beyond this machine."""
        return self.host not in LOOPBACK


def read_token(path: str | Path) -> str:
    """The bearer token in `path` (surrounding whitespace dropped); ConfigError if unusable."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--token-file {path}: cannot read it ({e})") from None
    if len(token) < 16:
        raise ConfigError(f"--token-file {path}: the token must be at least 16 characters "
                          f"(found {len(token)}); e.g. `openssl rand -hex 32 > {path}`")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ConfigError(f"--token-file {path}: the token must be one line of printable characters "
                          "without spaces")
    return token
