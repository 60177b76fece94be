# Sourced by the device scripts: a time budget and steps that keep their results.
#   LIMIT_S: the call's limit; OUT: the device tool's result folder; STEPS: which steps to run
#   (default all); PRIOR: a carried folder whose files go into /tmp/a first (a store to resume).
set -u -o pipefail
LIMIT=${1:-}
[[ $LIMIT =~ ^[0-9]+$ ]] || { echo "usage: $0 LIMIT_S (seconds, the call's limit)"; exit 2; }
: "${OUT:?OUT must name the result folder (the device tool sets it)}"
: "${INFERMETER_COMMIT:?set INFERMETER_COMMIT to the commit of this checkout: the device has no git}"
export PYTHONPATH=src PYTHONUNBUFFERED=1 INFERMETER_COMMIT
mkdir -p /tmp/a/docs "$OUT"
if [ -n "${PRIOR:-}" ]; then cp -r "$PRIOR"/. /tmp/a/; fi
start=$(date +%s)
left() { echo $((LIMIT - 20 - $(date +%s) + start)); }
# step N CAP NAME COMMAND...: run step N (if in STEPS) for at most CAP s and what is left,
# skipped below 30 s; its output (warnings left out) is kept in /tmp/a/step_N.log and its exit
# status printed; /tmp/a goes to $OUT/a.tgz after it.
step() {
  local n=$1 cap=$2 name=$3 t rc
  shift 3
  case " ${STEPS:-$n} " in *" $n "*) ;; *) echo "step $n ($name): not in STEPS"; return ;; esac
  t=$(left)
  if (( t < 30 )); then echo "step $n ($name): skipped, ${t} s left"; return; fi
  STEP_S=$(( t < cap ? t : cap ))
  timeout "$STEP_S" "$@" 2>&1 | grep -v Warn | tee "/tmp/a/step_$n.log" | tail -30
  rc=${PIPESTATUS[0]}
  tar -czf "$OUT/a.tgz" -C /tmp a
  echo "step $n ($name): exit $rc at $(( $(date +%s) - start )) s"
}
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm,temperature.gpu --format=csv
