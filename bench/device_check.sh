#!/usr/bin/env bash
# The project on one GPU in one command (issue #18), about 8 minutes on an H200; everything lands in one folder,
# $OUT when set (the device tool's), else device_check_out/:
#   device_check.json   every part's figures (one row each) and the issue's targets read off them
#   device_check.log    everything every part printed
#   int8_decode_hlo.txt the optimized HLO of the int8 decode step (does the int8 -> bf16 conversion fuse into the GEMM?)
#   metrics_mulm_1gb.jsonl, metrics_6x384.jsonl   train.py's rows of the two training parts
# Parts, in order of importance, each bounded by `timeout` and by what is left of the budget (the tests keep
# TESTS_S seconds at the end; a part that would get under 20 s is skipped and says so): float32 matmul precision
# (TF32 or not); decode of mulm_1gb (bfloat16; 16-token prompts, 128 new tokens) at batch 1 and 64, each beside
# Hugging Face transformers' generate on a Llama of its shape; mulm_1gb training (bfloat16, remat, 50 steps of
# 8 x 2048 tokens of Tiny Shakespeare at character level: a throughput figure, the 32,128-row embedding kept);
# decode again with the compilation cache now filled; the 6x384 character recipe against nanoGPT (300 iterations
# each); gpt2_small decode; int8 decode; the test suite minus slow tests; HF with its static cache (compiled by
# torch.compile) if time is left.
#
#     bash bench/device_wheels.sh     # here, once: wheels the GPU image lacks, the corpus mirror, the command line
#     bash bench/device_check.sh      # there (as the printed command does)
#     bash bench/device_check.sh --smoke   # any machine: every part shrunk to seconds, to prove the script runs
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
OUT="${OUT:-device_check_out}"
mkdir -p "$OUT"
WORK="$(mktemp -d -t mulm_device_check.XXXX)"
LOG="$OUT/device_check.log"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export MULM_DATA_MIRROR="${MULM_DATA_MIRROR:-$PWD/.device_data}" MULM_COMPILATION_CACHE="$WORK/xla"
: > "$LOG"
: > "$WORK/parts.jsonl"
T0=$(date +%s)

if [ $SMOKE = 1 ]; then
  # Parts are shrunk to seconds of work, but compiling them on a small shared CPU takes minutes: limits x 3.
  BUDGET=${BUDGET:-4000} TESTS_S=${TESTS_S:-600} TORCH_DEVICE=cpu PEAK_TFLOPS=1 SCALE=3
  B64=4 STEPS=3 ITERS=3 LOG_EVERY=1 REPEATS=1 NEW=4 MAXLEN=32 SEQ=32 BATCH=2 WORKERS=0
  SHRINK=(model.num_layers=1 model.d_model=64 model.num_heads=4 model.d_ff=128 model.vocab_size=512)
  SHRINK_GPT2=("${SHRINK[@]}" model.max_seq_len=64)
  SHRINK_6x384=(model.num_layers=1 model.d_model=48 model.num_heads=2 model.d_ff=96)
  TESTS=(tests/test_platform.py -k "cpu_tricks")
else
  BUDGET=${BUDGET:-470} TESTS_S=${TESTS_S:-170} TORCH_DEVICE=cuda PEAK_TFLOPS=989 SCALE=1
  B64=64 STEPS=50 ITERS=300 LOG_EVERY=5 REPEATS=3 NEW=128 MAXLEN=512 SEQ=2048 BATCH=8 WORKERS=8
  SHRINK=() SHRINK_GPT2=() SHRINK_6x384=()
  TESTS=(tests)
fi
DATA=(data.out_dir="$WORK/datasets")

say() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$LOG"; }

# part NAME LIMIT_S CMD...: CMD's output appended to the log; its last JSON line becomes NAME's row. It gets
# LIMIT_S x SCALE seconds or what the budget leaves before RESERVE (the tests' share, then the merge's), whichever
# is less; under 20 s it is skipped.
RESERVE=$TESTS_S
part() {
  local name=$1 limit=$(($2 * SCALE))
  shift 2
  local left=$((BUDGET - RESERVE - ($(date +%s) - T0)))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 20 ]; then
    say "$name: skipped, out of time"
    echo "{\"part\": \"$name\", \"rc\": null, \"note\": \"skipped: out of time\"}" >> "$WORK/parts.jsonl"
    return
  fi
  say "$name (up to $limit s): $*"
  local start=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.out" 2>&1
  local rc=$? ms=$((($(date +%s%N) - start) / 1000000))
  cat "$WORK/$name.out" >> "$LOG"
  "$PY" -m bench.device_check record "$name" "$rc" "$((ms / 1000)).$((ms % 1000 / 100))" "$WORK/$name.out" \
    >> "$WORK/parts.jsonl"
  say "$name: exit $rc"
}

decode() {  # decode NAME CONFIG BATCH [more bench decode args]: up to 120 s, 150 for 64 sequences (a bigger step)
  local name=$1 config=$2 batch=$3 limit=120
  shift 3
  [ "$batch" -gt 1 ] && limit=150
  local shrink=("${SHRINK[@]}")
  [ "$config" = gpt2_small ] && shrink=("${SHRINK_GPT2[@]}")
  part "$name" "$limit" "$PY" -m mulm_jax bench decode --config "configs/$config.yaml" --batch "$batch" \
    --new-tokens "$NEW" --max-len "$MAXLEN" --repeats "$REPEATS" --json "$@" ${shrink:+--set "${shrink[@]}"}
}

hf() {  # hf NAME BATCH LIMIT [more reference args]
  local name=$1 batch=$2 limit=$3
  shift 3
  part "$name" "$limit" "$PY" -m bench.reference_hf_generate --config configs/mulm_1gb.yaml --device "$TORCH_DEVICE" \
    --dtype bfloat16 --batch "$batch" --new-tokens "$NEW" --repeats 1 "$@" ${SHRINK:+--set "${SHRINK[@]}"}
}

say "device check (smoke=$SMOKE, budget ${BUDGET} s, tests ${TESTS_S} s), work folder $WORK"
nvidia-smi >> "$LOG" 2>&1
part environment 60 "$PY" -c "import json, sys, jax, flax, optax, torch, transformers; print(json.dumps({
  'python': sys.version.split()[0], 'jax': jax.__version__, 'flax': flax.__version__, 'optax': optax.__version__,
  'torch': torch.__version__, 'transformers': transformers.__version__, 'backend': jax.default_backend(),
  'devices': [d.device_kind for d in jax.devices()], 'torch_cuda': torch.cuda.is_available()}))"
part precision 60 "$PY" -m bench.device_check precision
decode decode_mulm_1gb_b1 mulm_1gb 1
hf hf_mulm_1gb_b1 1 90
decode decode_mulm_1gb_b64 mulm_1gb "$B64"
hf hf_mulm_1gb_b64 "$B64" 90
part train_mulm_1gb 180 "$PY" -m bench.device_check train --peak-tflops "$PEAK_TFLOPS" -- \
  --config configs/mulm_1gb.yaml --workdir "$WORK/mulm_1gb" --quiet --set "${SHRINK[@]}" "${DATA[@]}" \
  "data.sources=[tinyshakespeare]" data.tokenizer=char data.vocab_size=null train.batch_size=$BATCH \
  train.seq_len=$SEQ train.steps=$STEPS train.warmup_steps=10 train.log_every=$LOG_EVERY train.eval_every=$STEPS \
  train.eval_batches=1 train.checkpoint_every=$STEPS
decode decode_mulm_1gb_b1_warm mulm_1gb 1  # the same shapes again: the steps come from the compilation cache
part train_6x384_ours 120 "$PY" -m bench.device_check train -- --config configs/shakespeare_char_6x384.yaml \
  --workdir "$WORK/6x384" --quiet --set "${SHRINK_6x384[@]}" "${DATA[@]}" train.steps=$ITERS \
  train.compute_dtype=bfloat16 train.log_every=$((LOG_EVERY * 2)) train.eval_every=$ITERS train.eval_batches=2 \
  train.checkpoint_every=$ITERS
part train_6x384_nanogpt 90 "$PY" -m bench.reference_nanogpt --config configs/shakespeare_char_6x384.yaml \
  --device "$TORCH_DEVICE" --steps $ITERS --json ${SHRINK_6x384:+--set "${SHRINK_6x384[@]}"}
decode decode_gpt2_small_b1 gpt2_small 1
decode decode_gpt2_small_b64 gpt2_small "$B64"
part decode_mulm_1gb_b1_int8 120 env XLA_FLAGS="--xla_dump_to=$WORK/hlo --xla_dump_hlo_module_re=jit__decode \
--xla_dump_hlo_as_text" "$PY" -m mulm_jax bench decode --config configs/mulm_1gb.yaml --batch 1 --new-tokens "$NEW" \
  --max-len "$MAXLEN" --repeats "$REPEATS" --json --int8 ${SHRINK:+--set "${SHRINK[@]}"}
part int8_hlo 30 "$PY" -m bench.device_check int8-hlo "$WORK/hlo"
RESERVE=20  # from here on, only the merge is left to keep time for
# Where pytest-timeout is installed (the GPU image has it): a limit per test, and one for the session that ends it
# with its report written before the part's own limit would kill it.
TIMEOUT=()
"$PY" -c "import pytest_timeout" 2>/dev/null && TIMEOUT=(--timeout 240)
left=$((BUDGET - RESERVE - ($(date +%s) - T0) - 15))
"$PY" -c "import inspect, sys, pytest_timeout; sys.exit('session_timeout' not in inspect.getsource(pytest_timeout))" \
  2>/dev/null && TIMEOUT+=(--session-timeout "$left")
part tests $BUDGET "$PY" -m pytest -q -m "not slow" -n $WORKERS -p no:cacheprovider "${TIMEOUT[@]}" \
  --junitxml="$WORK/junit.xml" "${TESTS[@]}"
"$PY" -m bench.device_check tests "$WORK/junit.xml" > "$WORK/tests_summary.json" 2>> "$LOG" &&
  "$PY" - "$WORK/parts.jsonl" "$WORK/tests_summary.json" <<'EOF'
import json, sys
parts, summary = sys.argv[1], json.load(open(sys.argv[2]))
rows = [json.loads(line) for line in open(parts)]
for row in rows:
    if row["part"] == "tests":
        row["result"] = summary
open(parts, "w").write("".join(json.dumps(row) + "\n" for row in rows))
EOF
part hf_mulm_1gb_b1_static 120 "$PY" -m bench.reference_hf_generate --config configs/mulm_1gb.yaml \
  --device "$TORCH_DEVICE" --dtype bfloat16 --batch 1 --new-tokens "$NEW" --repeats 2 --cache static \
  ${SHRINK:+--set "${SHRINK[@]}"}

"$PY" -m bench.device_check merge "$WORK/parts.jsonl" > "$OUT/device_check.json" 2>> "$LOG"
cp "$WORK/mulm_1gb/metrics.jsonl" "$OUT/metrics_mulm_1gb.jsonl" 2>/dev/null
cp "$WORK/6x384/metrics.jsonl" "$OUT/metrics_6x384.jsonl" 2>/dev/null
hlo=$(ls -S "$WORK"/hlo/*jit__decode*after_optimizations.txt 2>/dev/null | head -1)
[ -n "$hlo" ] && cp "$hlo" "$OUT/int8_decode_hlo.txt"
rm -rf "$WORK"
say "done: $OUT/device_check.json"
"$PY" -c "import json; d = json.load(open('$OUT/device_check.json')); print(json.dumps(d['targets'], indent=1)); print(json.dumps(d['ratios']))" | tee -a "$LOG"
