"""`protlm serve` refusals through the real entry point: settings before listening, a model that
cannot load after (the server stops and the command reports the load error, exit status 1)."""

from __future__ import annotations

import socket

import pytest
import torch

from protlm.cli.main import main


def run(capsys, *args) -> tuple[int, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_model_that_cannot_load_stops_the_server(capsys, tmp_path):
    code, err = run(capsys, "serve", "--model", tmp_path / "missing.pt", "--port", free_port(), "--log-level", "error")
    assert code == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: no such checkpoint") and "missing.pt" in last
    assert "Traceback" not in err


@pytest.mark.parametrize("args, needle", [
    (["--max-batch-tokens", "0"], "--max-batch-tokens must be positive"),
    (["--max-queue-tokens", "100"], "must hold at least one batch"),
    (["--token-file", "{short}"], "at least 16 characters"),
])
def test_settings_are_refused_before_listening(capsys, tmp_path, args, needle):
    (tmp_path / "short").write_text("abc\n")
    args = [a.format(short=tmp_path / "short") for a in args]
    code, err = run(capsys, "serve", "--model", "protlm_small", "--port", free_port(), *args)
    assert code == 2 and err.strip() == f"Error: {err.strip()[7:]}" and needle in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu(capsys):
    code, err = run(capsys, "serve", "--model", "protlm_small", "--device", "cuda", "--port", free_port())
    assert code == 1 and "CUDA is not available" in err and len(err.strip().splitlines()) == 1
