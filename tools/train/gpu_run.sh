#!/usr/bin/env bash
# The whole pipeline on one GPU machine (see README.md here): prompts, the teacher's conversations,
# training, export. Inputs: $T/teacher.gguf (or its split parts $T/teacher.part.*), $T/tok (the
# teacher's tokenizer folder), the gguf wheel in .dev/whl when gguf is missing.
#   T=/root/t TEACHER_MIN=4.6 TOTAL_S=570 OUT=/some/dir bash tools/train/gpu_run.sh        # data + train (v2)
#   T=/root/t DATA_XZ=conv.jsonl.xz TRAIN_MIN=7 OUT=/some/dir bash tools/train/gpu_run.sh    # train only
#   T=/root/t DATA_ONLY=1 TEACHER_MIN=8.9 OUT=/some/dir bash tools/train/gpu_run.sh          # data only (v3)
#   T=/root/t RESUME=1 TRAIN_MIN=8 OUT=/some/dir bash tools/train/gpu_run.sh               # train more
# TOTAL_S bounds the whole script: training stops in time for the export to finish within it.
# DATA_XZ may name several files (an xz stream split in pieces): they are joined in order.
# DATA_ONLY=1 stops after the teacher and sends the conversations back as conv.jsonl.xz.* (<16 MB pieces).
set -euo pipefail
START=$(date +%s)
export PYTHONUNBUFFERED=1
T=${T:-/root/t}
OUT=${OUT:?set OUT}
here=$(cd "$(dirname "$0")" && pwd)
if [ -n "${TOTAL_S:-}" ]; then
    until=$((START + TOTAL_S - 25))
else
    until=0
fi
if ! python3 -c "import gguf" 2>/dev/null && ls .dev/whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .dev/whl/*.whl
    export PYTHONPATH=/tmp/site
fi
train() {
    TOKENIZERS_PARALLELISM=true python3 "$here/train.py" --data "$T/conv.jsonl" --tokenizer "$T/tok" \
        --out "$T/run" --minutes "${TRAIN_MIN:-60}" --until "$until" "$@" 2>&1 | grep -v -i warn
}
if [ -n "${DATA_XZ:-}" ]; then
    # shellcheck disable=SC2086  # DATA_XZ may be a glob of pieces
    cat $DATA_XZ | xz -dc > "$T/conv.jsonl"
    train
elif [ -z "${RESUME:-}" ]; then
    if [ ! -f "$T/teacher.gguf" ]; then
        cat "$T"/teacher.part.* > "$T/teacher.gguf"
    fi
    sha256sum "$T/teacher.gguf"
    python3 "$here/prompts.py" --out "$T/prompts.jsonl"
    TOKENIZERS_PARALLELISM=false python3 "$here/teacher.py" --gguf "$T/teacher.gguf" --tokenizer "$T/tok" \
        --prompts "$T/prompts.jsonl" --out "$T/conv.jsonl" --minutes "${TEACHER_MIN:-4}" \
        --slots "${SLOTS:-2048}" --samples "${SAMPLES:-6}" --check 2>&1 | grep -v -i warn
    if [ -n "${DATA_ONLY:-}" ]; then
        xz -T0 -6 -c "$T/conv.jsonl" | split -b 15000000 - "$OUT/conv.jsonl.xz."
        wc -l "$T/conv.jsonl"
        ls -la "$OUT"
        echo "gpu_run.sh (data only) done in $(( $(date +%s) - START ))s"
        exit 0
    fi
    train
else
    train --resume
fi
rm -rf "$T/model"
python3 "$here/train.py" --export "$T/run/best.pt" --tokenizer "$T/tok" --out "$T/model" 2>&1 | grep -v -i warn
# what comes back: the checkpoint (minus tokenizer.json, which is the teacher's) in <16 MB pieces and
# the training log; the conversations too when there is room (at most 64 MB come back)
tar -C "$T" --exclude model/tokenizer.json -cf - model | split -b 15000000 - "$OUT/model.tar."
cp "$T/run/train_log.jsonl" "$OUT/"
wc -l "$T/conv.jsonl"
ls -la "$OUT"
echo "gpu_run.sh done in $(( $(date +%s) - START ))s"
