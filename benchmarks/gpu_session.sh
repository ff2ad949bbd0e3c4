#!/usr/bin/env bash
# Every GPU check of the open GPU issues in one run, sized for a session's 15 device-minutes
# (one call of at most 10 minutes; each part has its own limit so a slow part cannot starve the
# rest). Writes its logs to $OUT (the device tool brings them back), else benchmarks/results/gpu/.
#
# Prepare here, once (the device machine has PyTorch, transformers, h5py, safetensors,
# huggingface_hub, sentencepiece, pytest, hypothesis, but not fair-esm, and no ../shared):
#   echo /.gpu/ >> .git/info/exclude; mkdir -p .gpu/whl
#   cp ../shared/data/sequences/cath_s40.fasta .gpu/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .gpu/whl fair-esm==2.0.0
# Then, with the device tool: run(command="bash benchmarks/gpu_session.sh", carry=[".gpu"], timeout_s=590)
# On a CPU, GPU_SESSION_SMOKE=1 runs every part on tiny shapes (checks the plumbing only).
set -u
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results/gpu}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
fasta=.gpu/cath_s40.fasta
[ -f "$fasta" ] || fasta=../shared/data/sequences/cath_s40.fasta
if [ -d .gpu/whl ] && ls .gpu/whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # the package without pip (no installs there)
smoke="${GPU_SESSION_SMOKE:-0}"

part() {  # part NAME SECONDS COMMAND...: run with a limit, log to $out/NAME.log, never stop the script
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    echo "   exit $? after $((SECONDS - t0)) s; last lines:"
    tail -n 4 "$out/$name.log" | sed 's/^/   /'
}

{ nvidia-smi 2>&1 || echo "no nvidia-smi"; python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())"; } > "$out/machine.txt"
cat "$out/machine.txt"
if [ "$smoke" = 1 ]; then
    part cuda_tests 120 python3 -m pytest -q -x tests/unit/models/test_packed.py
    part bench_gpu 120 python3 benchmarks/bench_gpu.py --smoke --fasta "$fasta"
    part bench_e2e 120 python3 benchmarks/bench_embed_e2e.py --fasta "$fasta" --layers 2 --dim 64 --heads 4 \
        --records 40 --toks-per-batch 2048 --repeats 1
    part bench_train 120 python3 benchmarks/bench_train.py --preset cpu --fasta "$fasta" --steps 1 --rounds 1 \
        --out "$out/bench_train.json"
else
    # the tests that only run on CUDA (packed varlen kernels), then the two benchmarks.
    # Estimates, not yet measured: if bench_gpu is cut short, the next session runs `--family esm2`.
    part cuda_tests 45 python3 -m pytest -q -x tests/unit/models/test_packed.py
    part bench_gpu 280 python3 benchmarks/bench_gpu.py --fasta "$fasta"            # issue 9
    part bench_e2e 100 python3 benchmarks/bench_embed_e2e.py --fasta "$fasta" --records 2000  # issue 9: command vs engine
    part bench_train 150 python3 benchmarks/bench_train.py --preset gpu --fasta "$fasta" \
        --out "$out/bench_train.json"                                               # issue 10
fi
echo "logs in $out"
