#!/usr/bin/env bash
# GPU work owed since the 34th session, for one H200 (the device tool's nvidia-h200), one call:
#   run: INFERMETER_COMMIT=<commit> bash scripts/device/h200_owed.sh 590
# Results (records, the profile's store, each step's output) in $OUT/a.tgz, refreshed after
# each step, so a call cut short keeps what it measured (scripts/device/_steps.sh). Steps, most wanted first:
# 1. benchmarks/prefill_alignment.py: prefill at every p of 480-512 and 1800-1870 (Gemma-2-9B,
#    gpt-oss-20b, LLaMA-7B as the control), keys padded, unpadded and always copied: do aligned
#    p prefill faster, and is the key padding why (Gemma-2's validation priced p = 496, 1840
#    high)?
# 2. benchmarks/explicit_attention.py: the explicit attention path against compiled
#    FlexAttention at Gemma-2's and gpt-oss's shapes (never yet run on a GPU).
# 3. `infermeter profile gpt-oss-20b` with its defaults (to 32,768 tokens), not run since the
#    global layers with sinks moved to blocks (67b5632). To finish it in a second call, unpack
#    the first call's a.tgz into a carried folder F and run with STEPS=3 PRIOR=F/a on the same
#    kind of card (refused otherwise).
source "$(dirname "$0")/_steps.sh"
step 1 270 alignment python3 benchmarks/prefill_alignment.py --out "$WORK/docs"
step 2 150 explicit_attention python3 benchmarks/explicit_attention.py --trials 10 \
  --out "$WORK/docs"
step 3 600 profile python3 -m infermeter profile gpt-oss-20b \
  --store "$WORK/gpt-oss-20b.sqlite"
finish
