#!/usr/bin/env bash
# GPU work owed for one H200 (the device tool's nvidia-h200), most wanted first:
#   run: INFERMETER_COMMIT=<commit> STEPS=1 bash scripts/device/h200_owed.sh 590
#   then STEPS=2 and STEPS=3, each in a call of its own (all steps in one call leave step 2
#   about 115 s and step 3 nothing)
# Results (records, the profile's store, each step's output) in $OUT/a.tgz, refreshed after
# each step, so a call cut short keeps what it measured (scripts/device/_steps.sh). Steps:
# 1. benchmarks/flex_prefill.py: the engine's prefill of Gemma-2-9B and gpt-oss-20b (8 layers) with
#    FlexAttention (engine/flex.py, default since c52cd9f) against the explicit path, their logits'
#    agreement, and the peak memory of capturing a prefill of 16,097 tokens. At 41eac75 it never ran
#    (its default sizes passed Gemma-2's context), and the engine's flex self-check failed to
#    compile (dynamic=True, since dropped); at 92d784a it failed to lower a changed float
#    (unbacked_bindings; floats are specialised since c4a20d4). At 7d4d2ae it ran on an H100 (git
#    show 7d4d2ae:docs/benchmarks/flex_prefill.md). Since b25687d it also records one layer's flex-
#    vs-explicit difference at each size (random q, k, v), and then runs gpt-oss-20b in float32
#    (flex_prefill_float32): with both, whether gpt-oss-20b's 39 % logit difference in bf16 is
#    flex's or its routing's.
#    Done at 9c5052d on an H100 (consistent with routing's; flex is the default since c52cd9f);
#    rerun on an H200. Since 2d6fae5 it also takes p = 33-128 (flex's short-prompt kernel):
#    its cap is 450 s (263 s at 9c5052d with fewer sizes).
# 2. `infermeter profile gpt-oss-20b` with its defaults (to 32,768 tokens): at 2c856e4 and
#    41eac75 every p from ~16,100 ran out of memory in the prefill graph's capture (79 GB
#    over the weights capturing 14,305); prompts over 4,096 tokens now prefill eagerly
#    (generate.PREFILL_GRAPH_MAX_TOKENS): at 92d784a every p to 30,689 was measured before the
#    step's limit; STEPS="2" PRIOR=docs/benchmarks/stores/gpt-oss-20b_eager_92d784a resumes
#    that store on an H200 (points added are recorded under its commit, 92d784a). Since then
#    the engine's default prefill attention is flex (engine/flex.py); a profile refuses to
#    resume a run on another path than its points', so where PRIOR brings a store this step
#    sets INFERMETER_PREFILL_ATTENTION and INFERMETER_ONE_TOKEN_GEMV to the paths its run
#    recorded (run.resume_settings: explicit and looped in 92d784a's);
#    without one, the caller's setting or the default (flex where
#    it can run).
#    To finish a run in a second call, unpack the first call's a.tgz
#    into a carried folder F and run with STEPS=2 PRIOR=F/a on the same kind of card
#    (refused otherwise: PRIOR's gpu.txt names the cards). After step 1's 450 s, step 2 has
#    at most about 115 s of a 590 s call: run it in a call of its own (STEPS=2).
# 3. models.md's Gemma-2-9B and gpt-oss-20b rows at this engine (--max-context 4096, as their
#    1cfb365 rows; with flex, the default since c52cd9f), merged into a copy of
#    docs/benchmarks/models.json. Each profile took 160-270 s on an H100 (9c5052d,
#    stores/prefill_attention_9c5052d): after step 1 (263 s at 9c5052d) the 249 s left gave each
#    about 100 s and both were killed, so run it in a call of its own (STEPS=3). Since 2d6fae5
#    flex prefill asks for its attention kernel under 128 tokens, not its decoding one
#    (engine/flex.py PREFILL_KERNEL): on an H100 at 009dd74 Gemma-2-9B's default profile
#    priced p = 33 and 97 at 10.1 and 11.1 ms (36.5 and 43.2 at 9c5052d with flex, 11.7 and
#    12.8 explicit; docs/benchmarks/stores/flex_short_kernel_009dd74); these rows are owed on
#    an H200. Step 1 compares both paths in one process at p = 33-128 (its defaults).
source "$(dirname "$0")/_steps.sh"
cp docs/benchmarks/models.json "$WORK/docs/models_before.json"
# both runs, the worse exit status kept
step 1 450 flex_prefill bash -c 'python3 benchmarks/flex_prefill.py --out "$1"; a=$?
  python3 benchmarks/flex_prefill.py --models gpt-oss-20b --float32 --sizes 1841,4097 \
    --graph-p 0 --out "$1"; b=$?; exit $(( a > b ? a : b ))' _ "$WORK/docs"
path=()
if [ -f "$WORK/gpt-oss-20b.sqlite" ]; then  # carried by PRIOR: resume on its run's path
  settings=$(python3 -c 'import sys; from infermeter.errors import UserError
from infermeter.experiments.run import resume_settings
try: print(*resume_settings(sys.argv[1]))
except UserError as error: sys.exit(str(error))  # its one line, not a traceback
' "$WORK/gpt-oss-20b.sqlite") \
    || { echo "cannot read the engine path of the carried store's run"; exit 2; }
  read -ra path <<< "$settings"
  echo "step 2 resumes the carried store with: ${settings:-the defaults (nothing measured)}"
fi
step 2 600 profile env "${path[@]}" python3 -m infermeter profile gpt-oss-20b \
  --store "$WORK/gpt-oss-20b.sqlite"
# models_bench's record is written after its profiles, whose own limit (--timeout-s) must end
# first: 60 s inside what the step will have
t=$(( $(left) < 600 ? $(left) : 600 ))
step 3 600 models python3 benchmarks/models_bench.py --models gemma-2-9b,gpt-oss-20b \
  --curve none --max-context 4096 --timeout-s $(( t > 180 ? (t - 60) / 2 : 60 )) \
  --out "$WORK/docs" --merge "$WORK/docs/models_before.json"
finish
