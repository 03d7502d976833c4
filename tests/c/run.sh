#!/usr/bin/env bash
# The C API from C: builds libcheems.a, compiles the examples and the C test with
# `-Wall -Wextra -Werror`, runs embed on a fixture model, runs it again under AddressSanitizer
# (and LeakSanitizer) and under valgrind's leak checker, and runs tests/c/api_test.c (bad input,
# double free, cancellation, two threads on one model) normally and under AddressSanitizer.
#
#   tests/c/run.sh              # PROFILE=dev by default: the debug library builds fastest
#   PROFILE=release tests/c/run.sh
#
# Needs cc (gcc), make and valgrind (skipped with a note when missing and CHEEMS_NO_VALGRIND=1).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
profile=${PROFILE:-dev}
build="$root/target/c-api"
mkdir -p "$build"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "-- fixture models"
cargo build --quiet --bin cheems
for name in cheems llama; do
    if [ ! -s "$build/$name.gguf" ] || [ "tests/fixtures/models/$name/model.safetensors.index.json" -nt "$build/$name.gguf" ] \
        || [ -n "$(find "tests/fixtures/models/$name" -newer "$build/$name.gguf" -print -quit)" ]; then
        target/debug/cheems quantize "tests/fixtures/models/$name" -o "$build/$name.gguf" --type q8_0 -q
    fi
done

echo "-- libcheems.a ($profile) and the examples, -Wall -Wextra -Werror"
make -s -C examples/c PROFILE="$profile" BUILD="$build/plain" all
make -s -C examples/c PROFILE="$profile" BUILD="$build/asan" SANITIZE=address all
link=$(make -s -C examples/c PROFILE="$profile" BUILD="$build/plain" print-link 2>/dev/null | tail -n 1)
cflags="-std=c11 -O1 -g -Wall -Wextra -Werror -pthread"
# shellcheck disable=SC2086
cc $cflags -o "$build/api_test" tests/c/api_test.c $link
# shellcheck disable=SC2086
cc $cflags -fsanitize=address -fno-omit-frame-pointer -o "$build/api_test_asan" tests/c/api_test.c $link -fsanitize=address

echo "-- embed on the fixture model"
"$build/plain/embed" "$build/cheems.gguf" "Once upon a time" 24 > "$work/embed.out"
cat "$work/embed.out"
grep -q "^Once upon a time" "$work/embed.out"
[ "$(wc -c < "$work/embed.out")" -gt 20 ]

echo "-- embed under AddressSanitizer (leaks included)"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=99 \
    "$build/asan/embed" "$build/cheems.gguf" "Once upon a time" 24 > "$work/embed-asan.out"
cmp "$work/embed.out" "$work/embed-asan.out"

if command -v valgrind > /dev/null; then
    # Definite and indirect leaks fail; "possibly lost" blocks are process-wide statics (hash
    # tables in lazily built globals, pointed at from inside) that live until exit by design.
    echo "-- embed under valgrind --leak-check=full"
    valgrind --quiet --leak-check=full --show-leak-kinds=definite,indirect \
        --errors-for-leak-kinds=definite,indirect --error-exitcode=1 \
        "$build/plain/embed" "$build/cheems.gguf" "Once upon a time" 8 > /dev/null
elif [ -z "${CHEEMS_NO_VALGRIND:-}" ]; then
    echo "valgrind is missing (apt-get install valgrind, or CHEEMS_NO_VALGRIND=1 to skip)" >&2
    exit 1
fi

echo "-- chat, one message per line from a pipe"
printf 'Hello\n/reset\nHi again\n' \
    | "$build/plain/chat" "$build/llama.gguf" -n 8 --seed 1 > "$work/chat.out"
[ "$(grep -c '^> ' "$work/chat.out")" -ge 3 ]
grep -q "(new conversation)" "$work/chat.out"

echo "-- the C API test"
mkdir -p "$work/scratch"
"$build/api_test" "$build/cheems.gguf" "$build/llama.gguf" "$work/scratch"
echo "-- the C API test under AddressSanitizer"
ASAN_OPTIONS=detect_leaks=1:exitcode=99 \
    "$build/api_test_asan" "$build/cheems.gguf" "$build/llama.gguf" "$work/scratch"
echo "-- C API: all passed"
