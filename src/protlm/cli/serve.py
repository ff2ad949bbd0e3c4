"""`protlm serve`: one model behind HTTP (embeddings, contacts, variants, perplexity, a page)."""

from __future__ import annotations

import click

from protlm.cli import options


@click.command()
@click.option("--model", "model_name", required=True, help="published name or checkpoint path")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0: every interface; use --token-file then)")
@click.option("--port", type=int, default=8000, show_default=True)
@options.device_option
@options.dtype_option
@click.option("--max-batch-tokens", type=int, default=4096, show_default=True,
              help="model tokens per batch, as `protlm embed --toks-per-batch`")
@click.option("--max-queue-tokens", type=int, default=1 << 20, show_default=True,
              help="model tokens that may wait; past it requests get 503 with Retry-After")
@click.option("--max-sequences", type=int, default=1000, show_default=True, help="sequences per request")
@click.option("--max-residues", type=int, default=1 << 18, show_default=True, help="residues per request")
@click.option("--max-body-mb", type=float, default=16, show_default=True, help="request body size")
@click.option("--batch-wait-ms", type=float, default=0.0, show_default=True,
              help="wait this long for more requests before running a batch that is not full")
@click.option("--max-connections", type=int, default=1024, show_default=True,
              help="concurrent connections; past it, 503")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="file holding a bearer token that every API request must send")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="info", show_default=True)
def command(model_name, host, port, device, dtype, max_batch_tokens, max_queue_tokens, max_sequences,
            max_residues, max_body_mb, batch_wait_ms, max_connections, token_file, log_level):
    """Serve MODEL over HTTP until SIGTERM (docs/serve.md); the page is at http://HOST:PORT/."""
    from protlm.serve import ServeConfig, read_token, serve

    cfg = ServeConfig(model_name, host, port, device, dtype, max_batch_tokens, max_queue_tokens, max_sequences,
                      max_residues, int(max_body_mb * (1 << 20)), batch_wait_ms, max_connections,
                      read_token(token_file) if token_file else None, log_level)
    serve(cfg)
