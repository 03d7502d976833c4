#!/usr/bin/env bash
# End-to-end smoke test of the command line on a GPU: greedy `run` on the CPU and on CUDA (the
# same text expected), `chat` and `logits` on CUDA against the CPU, and the error for a GPU that
# does not exist. Binaries as in device_run.sh.
set -u
OUT=${OUT:-/tmp/cheems-out}
mkdir -p "$OUT"
BIN=.devbin
for d in /usr/local/cuda/lib64 $(python3 -c 'import nvidia, os; [print(os.path.join(p, "cu13", "lib")) for p in nvidia.__path__]' 2>/dev/null); do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH
M=models/cheems-default.gguf
for dev in cpu cuda; do
    echo "== run --device $dev"
    $BIN/cheems run $M -p "Once upon a time" -n 40 --temp 0 --device $dev 2>"$OUT/run-$dev.err" | tee "$OUT/run-$dev.txt"; echo
done
cmp -s "$OUT/run-cpu.txt" "$OUT/run-cuda.txt" && echo "greedy text: CPU == CUDA" || echo "greedy text differs between CPU and CUDA"
echo "== chat --device cuda (two turns)"
printf 'What is the capital of France?\nAnd of Italy?\n' | $BIN/cheems chat $M --device cuda -n 40 --temp 0 --stats
echo "== logits CPU vs CUDA (prefill 20 tokens in one batch, then 12 one by one)"
for dev in cpu cuda; do
    $BIN/cheems logits $M --prompt "The quick brown fox jumps over the lazy dog, and then it runs far away into the woods." --prefill 20 --out /tmp/l-$dev.npy --device $dev 2>&1 | tail -1
done
python3 -c "
import numpy as np
a=np.load('/tmp/l-cpu.npy'); b=np.load('/tmp/l-cuda.npy')
print('rows', a.shape, 'max |cpu-cuda| / max |cpu| =', float(np.abs(a-b).max()/np.abs(a).max()), 'argmax agree', float((a.argmax(1)==b.argmax(1)).mean()))"
echo "== a GPU that does not exist"
$BIN/cheems run $M -p hi -n 2 --device cuda:7; echo "exit $?"
