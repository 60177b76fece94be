#!/bin/bash
# a user's first `infermeter profile llama-7b` on a fresh machine, wall clock around it
export PYTHONPATH=src PYTHONUNBUFFERED=1 INFERMETER_COMMIT=${COMMIT:?}
nvidia-smi --query-gpu=name,temperature.gpu,power.limit --format=csv,noheader; date -u
ls ~/.triton/cache 2>/dev/null | wc -l
start=$(date +%s.%N)
timeout 280 python -m infermeter profile llama-7b --store $OUT/cold7b.sqlite > $OUT/cold7b.log 2>&1
echo rc=$? wall_s=$(echo "$(date +%s.%N) - $start" | bc)
grep -v "━" $OUT/cold7b.log | grep -i "validated\|done,\|stored" | cut -c1-160
