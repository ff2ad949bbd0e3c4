"""Pure pieces of protlm.serve: settings, the token file, reply negotiation, Prometheus text,
the landscape's mutants and chunks."""

from __future__ import annotations

import pytest

from protlm.errors import ConfigError
from protlm.serve import ServeConfig, read_token
from protlm.serve.encode import JSON, NPY, SAFETENSORS, negotiate
from protlm.serve.metrics import Histogram, Metrics
from protlm.serve.routes import landscape_mutants, position_chunks
from protlm.variants.mutations import parse_mutant


def test_config_checks_its_bounds():
    assert ServeConfig("m").host == "127.0.0.1" and not ServeConfig("m").public
    assert ServeConfig("m", host="0.0.0.0").public
    with pytest.raises(ConfigError, match="--max-batch-tokens must be positive"):
        ServeConfig("m", max_batch_tokens=0)
    with pytest.raises(ConfigError, match="must hold at least one batch"):
        ServeConfig("m", max_batch_tokens=4096, max_queue_tokens=100)
    assert "secret" not in repr(ServeConfig("m", token="secret" * 4))  # never in a log line


def test_token_file(tmp_path):
    f = tmp_path / "token"
    f.write_text("  abcdefghijklmnop0123\n")
    assert read_token(f) == "abcdefghijklmnop0123"
    f.write_text("short\n")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        read_token(f)
    f.write_text("abcdefghijklmnop 0123\n")
    with pytest.raises(ConfigError, match="without spaces"):
        read_token(f)
    with pytest.raises(ConfigError, match="cannot read"):
        read_token(tmp_path / "missing")


@pytest.mark.parametrize("accept, media", [
    (None, JSON), ("*/*", JSON), ("application/json", JSON), ("application/x-npy", NPY),
    ("application/x-safetensors;q=0.9, application/json", SAFETENSORS), ("text/html, application/npy", NPY),
])
def test_negotiate(accept, media):
    assert negotiate(accept) == media


def test_histogram_is_cumulative():
    h = Histogram((1, 10))
    for v in (0.5, 2, 3, 50):
        h.observe(v)
    assert h.lines("x", 'a="b"') == ['x_bucket{a="b",le="1"} 1', 'x_bucket{a="b",le="10"} 3',
                                     'x_bucket{a="b",le="+Inf"} 4', 'x_sum{a="b"} 55.5', 'x_count{a="b"} 4']


def test_metrics_labels_are_bounded():
    m = Metrics(["/v1/embeddings"])
    m.request("/v1/embeddings", 200, 0.1)
    m.request("/random/path/123", 404, 0.1)  # a scanner's paths must not each make a series
    text = m.render({"queue_depth": ("help", 3)})
    assert 'endpoint="other",status="404"' in text and "random" not in text
    assert "# TYPE protlm_queue_depth gauge\nprotlm_queue_depth 3" in text


def test_landscape_mutants_and_chunks():
    muts = landscape_mutants("p", "MKW", offset=1)
    assert len(muts) == 3 * 19 and muts[0] == "M1A" and "M1M" not in muts and muts[-1] == "W3Y"
    parsed = [parse_mutant(m, "MKW") for m in ["M1A", "K2R", "M1C", "M1A:K2R", "W3Y"]]
    # sets {0}, {1}, {0,1}, {2}: two per chunk, mutants of one set kept together
    assert position_chunks(parsed, 2) == [[0, 2, 1], [3, 4]]
