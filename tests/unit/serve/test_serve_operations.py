"""The server under pressure and misuse: a full queue (503 + Retry-After), a client that goes
away (its work dropped before compute), a failing record (500 for it alone, nothing leaked),
loading and failed loads, the bearer token."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from .conftest import ServerThread, start
from protlm.serve import ServeConfig, create_app


@pytest.fixture(scope="module")
def server(serve_model):
    with start(serve_model, max_batch_tokens=1024, max_queue_tokens=5000) as s:
        yield s


def on_loop(server, fn):
    """fn() run on the server's event loop thread; its return value."""
    async def call():
        return fn()
    return asyncio.run_coroutine_threadsafe(call(), server.service.batcher.loop).result(10)


def block_worker(server) -> threading.Event:
    """Occupy the model thread with a job that waits for the returned event."""
    gate = threading.Event()
    on_loop(server, lambda: server.service.batcher.submit([(1, None, lambda: gate.wait(30))]))
    wait_for(lambda: server.service.batcher.running == 1)
    return gate


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def post_in_thread(url, body, timeout=30.0):
    """Start a POST in a thread; returns a list that receives the reply (or the exception)."""
    out = []

    def run():
        try:
            out.append(httpx.post(url, json=body, timeout=timeout))
        except httpx.HTTPError as e:
            out.append(e)
    threading.Thread(target=run, daemon=True).start()
    return out


def one(rid, seq):
    return {"sequences": [{"id": rid, "sequence": seq}]}


def test_a_full_queue_answers_503_with_retry_after(server):
    gate = block_worker(server)
    filler = on_loop(server, lambda: server.service.batcher.submit([(4900, None, lambda: None)]))
    try:
        r = httpx.post(server.url + "/v1/embeddings", json=one("a", "M" * 300))
        assert r.status_code == 503 and 1 <= int(r.headers["retry-after"]) <= 60
        assert "busy" in r.json()["error"]["message"]
        # a request larger than the whole queue can never fit: 413, not 503
        r = httpx.post(server.url + "/v1/variants", json={"sequence": "MKTAYIAKQR" * 8})
        assert r.status_code == 413 and "more than the queue holds" in r.json()["error"]["message"]
    finally:
        on_loop(server, lambda: [f.cancel() for f in filler])
        gate.set()
    metrics = httpx.get(server.url + "/metrics").text
    assert 'protlm_rejected_total{reason="queue_full"} 1' in metrics
    assert 'protlm_rejected_total{reason="too_large"} 1' in metrics  # counted once, not once per layer
    assert httpx.post(server.url + "/v1/embeddings", json=one("a", "M" * 300)).status_code == 200


def test_a_client_that_disconnects_frees_its_slot_before_compute(server):
    gate = block_worker(server)
    seen = []
    backend = server.service.backend
    real = backend.run_records
    backend.run_records = lambda key, items: seen.extend(s for s, _ in items) or real(key, items)
    try:
        reply = post_in_thread(server.url + "/v1/embeddings", one("gone", "MKVLAAGIVA" * 5), timeout=0.5)
        wait_for(lambda: reply)  # the client gave up
        assert isinstance(reply[0], httpx.TimeoutException)
        b = server.service.batcher
        wait_for(lambda: b.depth == 0 and b.queued_cost == 0)  # while the model is still busy
    finally:
        gate.set()
        time.sleep(0.1)
        del backend.run_records
    assert "MKVLAAGIVA" * 5 not in seen
    assert 'protlm_rejected_total{reason="client_gone"} 1' in httpx.get(server.url + "/metrics").text


def test_an_internal_error_is_a_500_for_its_request_only(server):
    backend = server.service.backend
    real = backend.run_records

    def poisoned(key, items):
        if any("WWWWW" in s for s, _ in items):
            raise RuntimeError("secret detail of the failure")
        return real(key, items)

    gate = block_worker(server)
    backend.run_records = poisoned
    try:
        bad = post_in_thread(server.url + "/v1/embeddings", one("bad", "MKWWWWWK"))
        good = post_in_thread(server.url + "/v1/embeddings", one("good", "MKVLAK"))
        wait_for(lambda: server.service.batcher.depth == 2)  # the two share the next batch
        gate.set()
        wait_for(lambda: bad and good)
    finally:
        del backend.run_records
    assert bad[0].status_code == 500 and "secret" not in bad[0].text
    assert bad[0].json()["error"]["message"].startswith("internal server error")
    assert good[0].status_code == 200 and good[0].json()["data"][0]["id"] == "good"


def test_not_ready_answers_503(server):
    server.service.state = "loading"
    try:
        r = httpx.post(server.url + "/v1/embeddings", json=one("a", "MKV"))
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert httpx.get(server.url + "/readyz").status_code == 503
        assert httpx.get(server.url + "/healthz").status_code == 200
    finally:
        server.service.state = "ready"


def test_a_model_that_fails_to_load_is_reported():
    with ServerThread(create_app(ServeConfig(model="/no/such/checkpoint.pt")), ready=False) as s:
        wait_for(lambda: s.service.state == "failed")
        r = httpx.get(s.url + "/readyz")
        assert r.status_code == 503 and r.json() == {"status": "failed"}
        assert "no such checkpoint" in str(s.service.load_error)
        assert httpx.post(s.url + "/v1/embeddings", json=one("a", "MKV")).status_code == 503


def test_bearer_token(serve_model):
    token = "0123456789abcdef-test-token"
    with start(serve_model, token=token) as s:
        models = s.url + "/v1/models"
        r = httpx.get(models)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert httpx.get(models, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(models, headers={"Authorization": f"Basic {token}"}).status_code == 401
        assert httpx.get(models, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert httpx.get(models, headers={"Authorization": f"bearer {token}"}).status_code == 200
        assert httpx.post(s.url + "/v1/embeddings", json=one("a", "MKV")).status_code == 401
        assert httpx.get(s.url + "/metrics").status_code == 401
        for public in ("/healthz", "/readyz", "/", "/page.js"):
            assert httpx.get(s.url + public).status_code == 200, public
