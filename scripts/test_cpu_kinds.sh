#!/usr/bin/env bash
# The test suite again on other CPU kernels and thread counts, as CI runs it after scripts/test.sh
# (the machine's own kernels, all cores): tests must hold on every CPU, AVX2, AVX-512 or AMX.
# ATEN_CPU_CAPABILITY picks ATen's vector kernels (and torch.compile's), ONEDNN_MAX_CPU_ISA caps
# oneDNN's (the int8 matmuls), OMP_NUM_THREADS the split of every parallel kernel.
# Run scripts/test.sh first (it installs what the tests need). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
kinds=(
    "OMP_NUM_THREADS=1"
    "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=2"
    "ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 OMP_NUM_THREADS=1"
)
for kind in "${kinds[@]}"; do
    echo "== test suite with $kind"
    env $kind python3 -m pytest -q -m "not slow" tests "$@"
done
