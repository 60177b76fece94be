#!/usr/bin/env bash
# Device: a user's commands at this checkout: profile --output writes m.json, m.energy.json and
# m.sustained.json; estimate prices with all three. Wall clock around each.
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1 INFERMETER_COMMIT=$(cat devrun/COMMIT)
W=/tmp/user; mkdir -p $W
nvidia-smi --query-gpu=name,power.limit,temperature.gpu,clocks.sm --format=csv | tee $W/gpu.txt
s=$(date +%s.%N)
python3 -m infermeter profile llama-7b --store $W/store.sqlite --output $W/m.json 2>&1 | tee $W/profile.log
echo "profile exit ${PIPESTATUS[0]} wall $(awk -v a="$s" -v b="$(date +%s.%N)" "BEGIN{printf \"%.1f\", b-a}") s" | tee -a $W/profile.log
ls -la $W | tee $W/ls.txt
printf 'prompt_tokens,output_tokens\n1,1\n150,1\n700,3\n1300,5\n1900,2\n1000,200\n300,450\n' > $W/q.csv
s=$(date +%s.%N)
python3 -m infermeter estimate --profile $W/m.json --energy-profile $W/m.energy.json --sustained-profile $W/m.sustained.json --queries $W/q.csv --output $W/e.csv 2>&1 | tee $W/estimate.log
echo "estimate exit ${PIPESTATUS[0]} wall $(awk -v a="$s" -v b="$(date +%s.%N)" "BEGIN{printf \"%.1f\", b-a}") s" | tee -a $W/estimate.log
cat $W/e.csv
rm -f $W/store.sqlite.lock
tar -czf $OUT/user.tgz -C /tmp user
