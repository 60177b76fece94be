# Sourced by the device scripts: a time budget and steps that keep their results.
#   $1 LIMIT_S: the call's limit in seconds; OUT: the device tool's result folder;
#   STEPS: which steps to run ("2 3"; default all); PRIOR: a folder (an earlier call's a/,
#   unpacked and carried) copied into the results first, to resume a profile's store there;
#   WORK: where results gather (default /tmp/a), sent as $OUT/a.tgz; emptied first, so a warm
#   machine's earlier call leaves nothing in it (only PRIOR brings a store to resume): a
#   WORK that is not a folder or holds files no device script made, and a PRIOR inside WORK
#   or around it, are refused before anything is deleted.
set -u -o pipefail
LIMIT=${1:-}
[[ $LIMIT =~ ^[0-9]+$ ]] || { echo "usage: $0 LIMIT_S (seconds, the call's limit)"; exit 2; }
LIMIT=$((10#$LIMIT))
[[ ${STEPS:-1} =~ ^[0-9\ ]+$ ]] || { echo "STEPS must be step numbers and spaces, as \"2 3\""; exit 2; }
: "${OUT:?OUT must name the result folder (the device tool sets it)}"
: "${INFERMETER_COMMIT:?set INFERMETER_COMMIT to the commit of this checkout: the device has no git}"
export PYTHONPATH=src PYTHONUNBUFFERED=1 INFERMETER_COMMIT
WORK=${WORK:-/tmp/a}
# WORK is emptied below: refuse whatever that would lose (checked before anything is deleted)
if [ -e "$WORK" ] || [ -L "$WORK" ]; then
  [ -d "$WORK" ] || { echo "WORK $WORK is not a folder: name a folder for the results"; exit 2; }
  if [ -n "$(ls -A "$WORK")" ] && [ ! -f "$WORK/gpu.txt" ]; then
    echo "WORK $WORK holds files a device script did not make (no gpu.txt): name another WORK"
    exit 2
  fi
fi
W=$(mkdir -p "$WORK" && cd "$WORK" && pwd -P) || { echo "cannot make WORK $WORK"; exit 2; }
if [ -n "${PRIOR:-}" ]; then
  [ -d "$PRIOR" ] || { echo "PRIOR $PRIOR is not a folder: carry the earlier call's a/"; exit 2; }
  P=$(cd "$PRIOR" && pwd -P)
  case "$P/" in "$W/"*)
    echo "PRIOR $PRIOR is inside WORK $WORK, which each call empties: copy it elsewhere first"
    exit 2 ;;
  esac
  case "$W/" in "$P/"*)
    echo "WORK $WORK is inside PRIOR $PRIOR: emptying it would delete part of PRIOR"; exit 2 ;;
  esac
fi
rm -rf "$WORK"
mkdir -p "$WORK/docs" "$OUT"
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | xargs)
if [ -n "${PRIOR:-}" ]; then
  if [ -f "$PRIOR/gpu.txt" ] && [ "$(cat "$PRIOR/gpu.txt")" != "$GPU" ]; then
    echo "PRIOR was measured on $(cat "$PRIOR/gpu.txt"), this machine has $GPU: a store resumed"
    echo "on other cards would mix them in one run; run on the same kind, or without PRIOR"
    exit 2
  fi
  cp -r "$PRIOR"/. "$WORK"/ || { echo "copying PRIOR $PRIOR into WORK $WORK failed"; exit 2; }
fi
echo "$GPU" > "$WORK/gpu.txt"
start=$(date +%s)
FAILED=0
left() { echo $((LIMIT - 20 - $(date +%s) + start)); }
keep() { tar -czf "$OUT/a.tgz" -C "$(dirname "$WORK")" "$(basename "$WORK")"; }
# step N CAP NAME COMMAND...: run step N (if in STEPS) for at most CAP s and what is left
# (STEP_S, exported: a program's own limit can follow it), skipped below 30 s; TERM at the
# limit, KILL 15 s later. Its output (warnings left out) is kept in $WORK/step_N.log and its
# exit status printed; $WORK goes to $OUT/a.tgz after it.
step() {
  local n=$1 cap=$2 name=$3 t rc began
  shift 3
  case " ${STEPS:-$n} " in *" $n "*) ;; *) echo "step $n ($name): not in STEPS"; return ;; esac
  t=$(left)
  if (( t < 30 )); then echo "step $n ($name): skipped, ${t} s left"; FAILED=1; return; fi
  export STEP_S=$(( t < cap ? t : cap ))
  began=$(date +%s)
  timeout -k 15 "$STEP_S" "$@" 2>&1 | grep -v Warn | tee "$WORK/step_$n.log" | tail -30
  rc=${PIPESTATUS[0]}
  keep
  echo "step $n ($name): exit $rc after $(( $(date +%s) - began )) s, at $(( $(date +%s) - start )) s"
  (( rc == 0 )) || FAILED=1
}
# finish: $WORK to $OUT/a.tgz, and exit 1 if a step failed or was skipped for time
finish() { keep; exit "$FAILED"; }
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm,temperature.gpu --format=csv
