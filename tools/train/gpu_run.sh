#!/usr/bin/env bash
# The whole pipeline on one GPU machine (see README.md here). Inputs: $T/teacher.gguf (or its split
# parts), $T/tok (the teacher's tokenizer folder), the gguf wheel in .dev/whl when gguf is missing.
#   T=/root/t TEACHER_MIN=4 TRAIN_MIN=4 OUT=/some/dir bash tools/train/gpu_run.sh          # data + train
#   T=/root/t DATA_XZ=conv.jsonl.xz TRAIN_MIN=7 OUT=/some/dir bash tools/train/gpu_run.sh    # train only
#   T=/root/t RESUME=1 TRAIN_MIN=8 OUT=/some/dir bash tools/train/gpu_run.sh               # train more
set -euo pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
T=${T:-/root/t}
OUT=${OUT:?set OUT}
here=$(cd "$(dirname "$0")" && pwd)
if ! python3 -c "import gguf" 2>/dev/null && ls .dev/whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .dev/whl/*.whl
    export PYTHONPATH=/tmp/site
fi
if [ -n "${DATA_XZ:-}" ]; then
    # training only, from conversations made earlier
    xz -dc "$DATA_XZ" > "$T/conv.jsonl"
    python3 "$here/train.py" --data "$T/conv.jsonl" --tokenizer "$T/tok" --out "$T/run" --minutes "${TRAIN_MIN:-4}" \
        2>&1 | grep -v -i warn
elif [ -z "${RESUME:-}" ]; then
    if [ ! -f "$T/teacher.gguf" ]; then
        cat "$T"/teacher.part.* > "$T/teacher.gguf"
    fi
    sha256sum "$T/teacher.gguf"
    python3 "$here/prompts.py" --out "$T/prompts.jsonl"
    python3 "$here/teacher.py" --gguf "$T/teacher.gguf" --tokenizer "$T/tok" --prompts "$T/prompts.jsonl" \
        --out "$T/conv.jsonl" --minutes "${TEACHER_MIN:-4}" --batch "${BATCH:-512}" 2>&1 | grep -v -i warn
    python3 "$here/train.py" --data "$T/conv.jsonl" --tokenizer "$T/tok" --out "$T/run" --minutes "${TRAIN_MIN:-4}" \
        2>&1 | grep -v -i warn
else
    python3 "$here/train.py" --data "$T/conv.jsonl" --tokenizer "$T/tok" --out "$T/run" --minutes "${TRAIN_MIN:-4}" \
        --resume 2>&1 | grep -v -i warn
fi
rm -rf "$T/model"
python3 "$here/train.py" --export "$T/run/best.pt" --tokenizer "$T/tok" --out "$T/model" 2>&1 | grep -v -i warn
# what comes back: the checkpoint (minus tokenizer.json, which is the teacher's) in <16 MB pieces, the
# data compressed, the training log
tar -C "$T" --exclude model/tokenizer.json -cf - model | split -b 15000000 - "$OUT/model.tar."
xz -T0 -6 -c "$T/conv.jsonl" > "$OUT/conv.jsonl.xz"
cp "$T/run/train_log.jsonl" "$OUT/"
ls -la "$OUT"
