#!/usr/bin/env bash
# The GPU speed measurements in one device call (~6.5 minutes of parts on an H100, plus set-up).
#
#   run tool:  command "bash benchmarks/gpu_session.sh", carry [".whl"], timeout_s 540
#   CPU check: QUICK=1 OUT=/tmp/out bash benchmarks/gpu_session.sh        (about 3 minutes on 2 cores)
#
# Every part runs under its own `timeout` and writes its JSON/markdown under $OUT as it goes, so a part
# that runs long loses only its own remaining rows. Files that come back (at most 8): session.log,
# tables.md and cold.json, cold256.json, warm.json, train.json. Not measured here, for time: N=50,000 cold runs (an eager
# run alone takes about 5 minutes) and fp16 cold runs.
set -u
: "${OUT:?set OUT to the folder for results}"
QUICK=${QUICK:-0}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WORK=${WORK:-/tmp/ddimkit-gpu-session}
export DDIMKIT_CACHE="$WORK/cache"
mkdir -p "$WORK"
LOG="$OUT/session.log"

log() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }

part() {  # part NAME SECONDS ARGS... : speed.py under a hard timeout a little above its own part limit
  local name=$1 limit=$2; shift 2
  log "part $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 $((limit + 15)) "$PY" benchmarks/speed.py --work "$WORK" --part-timeout "$limit" \
    --out "$OUT/$name" "$@" >>"$LOG" 2>&1
  log "part $name: exit $? after $((SECONDS - t0))s"
}

if ls .whl/*.whl >/dev/null 2>&1 && ! "$PY" -c "import diffusers" 2>/dev/null; then
  "$PY" -m pip install -q --no-deps .whl/*.whl >>"$LOG" 2>&1 && log "installed $(ls .whl)"
fi
"$PY" - >>"$LOG" 2>&1 <<'PYEOF'
import importlib.util, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "", "diffusers",
      importlib.util.find_spec("diffusers") is not None)
PYEOF

# PARTS picks parts, COLD_MODES the modes of the N=4096 part and L_COLD … L_TRAIN their limits (seconds), so
# that a call with less device time left runs a subset, e.g. PARTS=cold,cold256 COLD_MODES=default.
PARTS=${PARTS:-cold,cold256,warm,train}
if [ "$QUICK" = 1 ]; then
  Q=(--quick); NS4096=(--cold-n 8); NS256=(--cold-n 4 --cold-modes default,no-compile)
  D=(60 30 60 60); TRAIN_MODES=default,no-compile  # a CPU compile takes minutes
else
  Q=(); NS4096=(--cold-n 4096); NS256=(--cold-n 256 --cold-modes default,no-compile)
  D=(130 20 70 70); TRAIN_MODES=compile,default
fi
L_COLD=${L_COLD:-${D[0]}}; L_SMALL=${L_SMALL:-${D[1]}}; L_WARM=${L_WARM:-${D[2]}}; L_TRAIN=${L_TRAIN:-${D[3]}}
NS4096+=(--cold-modes "${COLD_MODES:-default,compile,no-compile}")
want() { [[ ",$PARTS," == *",$1,"* ]]; }

# 1. Cold sampling, the headline figure: N=4096 with the cache empty and filled, default/--compile/--no-compile.
want cold && part cold "$L_COLD" "${Q[@]}" --parts cold "${NS4096[@]}"
# 2. Cold sampling of a small job, where compiling cannot pay: the default must match --no-compile.
want cold256 && part cold256 "$L_SMALL" "${Q[@]}" --parts cold "${NS256[@]}"
# 3. Warm sampling (steady state), fp16 beside bf16, CUDA graphs on and off, diffusers beside. The cache the
#    cold --compile run filled holds the default compiled graph (bf16, batch 256, CUDA graphs).
want warm && TORCHINDUCTOR_CACHE_DIR="$WORK/cache-filled-${NS4096[1]}" part warm "$L_WARM" "${Q[@]}" --parts warm --iters 2
# 4. Cold training, the first 200 steps: --compile (compile before the first step) then the default.
want train && part train "$L_TRAIN" "${Q[@]}" --parts train --train-modes "$TRAIN_MODES"
# At most 8 files come back: one markdown file with every part's table, beside the JSON files.
for f in cold cold256 warm train; do
  [ -f "$OUT/$f.md" ] && { echo "## $f"; echo; cat "$OUT/$f.md"; echo; } >>"$OUT/tables.md" && rm "$OUT/$f.md"
done
log "done; files: $(ls "$OUT" | tr '\n' ' ')"
