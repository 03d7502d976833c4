#!/usr/bin/env bash
# The GPU checks and benchmarks of the CUDA engine, as run on the lent H200 (no Rust toolchain
# there): binaries built here with `--features cuda`, stripped, in .devbin/ (cheems, the
# `tests/cuda.rs` test binary as cuda-tests; the default model is read from models/, else from
# .devbin/cheems-default.gguf). Logs and JSON go to $OUT.
#
#   bash tools/cuda/device_run.sh [tests] [bench] [hf] [graph] [fused]   (default: the first three)
#
# `fused`: the fused Mamba-2 decode step (mamba2-130m F16/Q8_0/Q4_0, graph replayed back to back)
# under each of $FUSED_VARIANTS (';'-separated environments, two rounds; $FUSED_TYPES picks the
# types), and the per-block phase marks of each variant at F16 ($OUT/phases-*.txt,
# tools/cuda/phases.py).
set -u
OUT=${OUT:-/tmp/cheems-out}
mkdir -p "$OUT"
BIN=.devbin
what=${*:-tests bench hf}
# NVRTC (libnvrtc.so.13) from CUDA 13: the toolkit's, or the pip wheels next to PyTorch.
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
         $(python3 -c 'import nvidia, os; [print(os.path.join(p, "cu13", "lib")) for p in nvidia.__path__]' 2>/dev/null) \
         /usr/local/nvidia/lib64; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH
{
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
    ls -la $BIN
} 2>&1 | tee "$OUT/env.txt"
# The test binary finds the fixtures through the path it was built in.
mkdir -p /work && [ -e /work/main ] || ln -s "$PWD" /work/main
chmod +x $BIN/cheems $BIN/cuda-tests 2>/dev/null
# ... and the CLI test runs the cheems binary built beside it.
mkdir -p target/release && ln -sf "$PWD/$BIN/cheems" target/release/cheems

if [[ $what == *tests* ]]; then
    echo "== tests/cuda.rs on the GPU"
    (cd /work/main && timeout 240 $BIN/cuda-tests --nocapture --test-threads 4) 2>&1 | tee "$OUT/tests.log" | grep -E "^test |bound|skipped|panicked|error|result" | head -120
fi

if [[ $what == *bench* ]]; then
    echo "== cheems bench --device cuda (-p 512 -n 128 -r 3)"
    : > "$OUT/bench.jsonl"
    for shape in mamba2-130m llama-110m doge-60m cheems-120m; do
        for ty in f16 q8_0 q4_0; do
            f=/tmp/$shape-$ty.gguf
            timeout 60 $BIN/cheems synth --shape $shape --type $ty -o $f >/dev/null 2>&1 || { echo "synth $shape $ty failed"; continue; }
            timeout 45 $BIN/cheems bench $f --device cuda -p 512 -n 128 -r 3 --json 2>>"$OUT/bench.err" | tee -a "$OUT/bench.jsonl" \
                | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(f\"{'$shape':14} {'$ty':5} {d['size_bytes']/2**20:8.1f} MiB  pp512 {d['pp_tok_s']:9.1f} tok/s  tg128 {d['tg_tok_s']:9.1f} tok/s  {d['device']}\")" \
                || echo "bench $shape $ty failed (see bench.err)"
            rm -f $f
        done
    done
    def=models/cheems-default.gguf
    [ -f $def ] || def=$BIN/cheems-default.gguf
    if [ -f $def ]; then
        timeout 45 $BIN/cheems bench $def --device cuda -p 512 -n 128 -r 3 --json 2>>"$OUT/bench.err" | tee -a "$OUT/bench.jsonl" \
            | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(f\"cheems-default q8_0  {d['size_bytes']/2**20:8.1f} MiB  pp512 {d['pp_tok_s']:9.1f} tok/s  tg128 {d['tg_tok_s']:9.1f} tok/s\")" \
            || echo "bench cheems-default failed"
    fi
    tail -5 "$OUT/bench.err" 2>/dev/null
fi

if [[ $what == *graph* ]]; then
    echo "== decode with and without the CUDA graph (llama-110m q4_0, tg128)"
    $BIN/cheems synth --shape llama-110m --type q4_0 -o /tmp/g.gguf >/dev/null 2>&1
    for g in 1 0; do
        echo "CHEEMS_CUDA_GRAPH=$g"
        CHEEMS_CUDA_GRAPH=$g timeout 45 $BIN/cheems bench /tmp/g.gguf --device cuda -p 0 -n 128 -r 3 2>&1 | tail -1
    done
    echo "== device time per decode step (graph replayed back to back) and the SM clock meanwhile"
    nvidia-smi --query-gpu=clocks.sm,clocks.mem,utilization.gpu --format=csv,noheader -lms 200 > "$OUT/clocks.txt" 2>&1 &
    smi=$!
    for shape in mamba2-130m llama-110m doge-60m cheems-120m; do
        $BIN/cheems synth --shape $shape --type f16 -o /tmp/r.gguf >/dev/null 2>&1
        echo -n "$shape f16: "
        CHEEMS_CUDA_REPLAY=2000 timeout 45 $BIN/cheems bench /tmp/r.gguf --device cuda -p 0 -n 512 -r 2 2>&1 | grep -E "replay|tg512" | tr '\n' ' '
        echo
    done
    kill $smi 2>/dev/null
    echo "== decode after a long context (-d 2048: DMA caches full, llama attends over 2048+ keys)"
    for shape in doge-60m llama-110m cheems-120m; do
        $BIN/cheems synth --shape $shape --type q8_0 -o /tmp/d.gguf >/dev/null 2>&1
        echo -n "$shape q8_0: "
        timeout 60 $BIN/cheems bench /tmp/d.gguf --device cuda -p 0 -n 128 -d 2048 -r 2 2>&1 | grep tg128
    done
    sort "$OUT/clocks.txt" | uniq -c | sort -rn | head -5
fi

if [[ $what == *hf* ]]; then
    echo "== transformers bf16 baseline"
    PYTHONUNBUFFERED=1 timeout 180 python3 tools/cuda/hf_baseline.py --n 128 --reps 3 --json "$OUT/hf.json" 2>&1 | grep -v Warning | tail -12
fi

if [[ $what == *fused* ]]; then
    echo "== fused decode step, us (graph replayed 2000 times), two rounds per variant"
    IFS=';' read -ra variants <<< "${FUSED_VARIANTS:-CHEEMS_CUDA_FUSED_PREFETCH=1;CHEEMS_CUDA_DEFINES=-DSKELETON CHEEMS_CUDA_FUSED_PREFETCH=0}"
    types=${FUSED_TYPES:-f16 q8_0 q4_0}
    for ty in $types; do
        $BIN/cheems synth --shape mamba2-130m --type $ty -o /tmp/m-$ty.gguf >/dev/null 2>&1
    done
    for round in 1 2; do
        for v in "${variants[@]}"; do
            for ty in $types; do
                echo -n "round $round [$v] $ty: "
                env $v CHEEMS_CUDA_REPLAY=2000 timeout 60 $BIN/cheems bench /tmp/m-$ty.gguf --device cuda -p 0 -n 16 -r 1 2>&1 | grep -E "replay|error" | tr '\n' ' '
                echo
            done
        done
    done
    for i in "${!variants[@]}"; do
        v=${variants[$i]}
        echo "== phases [$v] f16 ($OUT/phases-$i.txt)"
        env $v CHEEMS_CUDA_FUSED_TIMES=2 CHEEMS_CUDA_REPLAY=200 CHEEMS_CUDA_PHASES_OUT="$OUT/phases-$i.bin" \
            timeout 60 $BIN/cheems bench /tmp/m-f16.gguf --device cuda -p 0 -n 16 -r 1 2>&1 | grep -E "replay|error"
        python3 tools/cuda/phases.py "$OUT/phases-$i.bin" > "$OUT/phases-$i.txt" 2>&1
        grep -E "^==|stage \(" "$OUT/phases-$i.txt" | paste - - | tr -s ' '
    done
fi
