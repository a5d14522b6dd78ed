#!/usr/bin/env bash
# The GPU checks, in one script for a short lease on a GPU machine (run from the repository root):
#   1. the engine's tests on a machine where accelerate picks the GPU (training, packed pairs, IS weight 1, compile);
#   2. the harness in bf16 on the GPU at 40m and 200m against TRL, both reference modes;
#   3. packed pairs on the GPU, A/B: the default (`pack_pairs: true`) against `+alt` = the same tree with it off;
#   4. distributed: one short run per configs/accelerate/*.yaml (ddp, fsdp, DeepSpeed ZeRO-2/3) against one process
#      (benchmarks/dist_check.py; its own section at the end, DIST_S time limit).
#   5. issue 22's rows (benchmarks/gpu_check_issue22.sh; ISSUE22=0 skips them; run that script alone on a short lease).
# Usage: bash benchmarks/gpu_check.sh OUT_DIR   (env: DEVICE=cuda SIZES=40m,200m PACK_SIZES=200m BATCH=32 ROUNDS=1,
# TEST_S/HARNESS_S/PACK_S time limits). On an H200: ~100 s per harness size, ~15 s per process of the A/B.
set -u
out=${1:-gpu-check-out}
mkdir -p "$out"
device=${DEVICE:-cuda}; sizes=${SIZES:-40m,200m}; pack_sizes=${PACK_SIZES:-200m}; batch=${BATCH:-32}; rounds=${ROUNDS:-1}
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

{ nvidia-smi -L 2>/dev/null; $py -c "import torch, transformers, accelerate, trl
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')
print('transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'trl', trl.__version__)"; } \
  2>&1 | tee "$out/env.txt"

echo "== tests"
timeout "${TEST_S:-150}" $py -m pytest -q -p no:cacheprovider -p no:benchmark --tb=short -rf ${PYTEST_ARGS:-} tests/test_train.py tests/test_is_weight_one.py \
  tests/test_pair_logps.py tests/test_logprobs.py tests/test_compile.py tests/test_bf16_cpu.py > "$out/tests.log" 2>&1
echo "tests exit $?"; tail -15 "$out/tests.log"

for size in ${sizes//,/ }; do  # one run per size: a size that runs out of time leaves the others' tables
  echo "== harness $size"
  timeout "${HARNESS_S:-150}" $py benchmarks/bench_train.py --device "$device" --dtype bfloat16 --sizes "$size" \
    --contenders isdaa-dpo,isdaa-is-dpo,trl-dpo --ref-modes pre,mem --rounds "$rounds" --warmup-steps 3 --steps 5 \
    --batch-size "$batch" --workdir "/tmp/gpu-harness-$size" > "$out/harness-$size.log" 2>&1
  echo "harness $size exit $?"; sed -n '/^Measured/,$p' "$out/harness-$size.log"
  cp "/tmp/gpu-harness-$size/results.json" "$out/harness-$size.json" 2>/dev/null
done

echo "== packed pairs A/B (+alt = pack_pairs off)"
rm -rf /tmp/alt-pack && cp -r src /tmp/alt-pack
sed -i 's/^    pack_pairs: bool = True  #/    pack_pairs: bool = False  #/' /tmp/alt-pack/isdaa/config/pref.py
grep -q "pack_pairs: bool = False" /tmp/alt-pack/isdaa/config/pref.py || { echo "pack_pairs patch failed"; exit 1; }
timeout "${PACK_S:-200}" $py benchmarks/bench_train.py --device "$device" --dtype bfloat16 --sizes "$pack_sizes" \
  --contenders isdaa-dpo,isdaa-is-dpo --ref-modes pre,mem --rounds "$rounds" --warmup-steps 3 --steps 5 --batch-size "$batch" \
  --alt-src /tmp/alt-pack --workdir /tmp/gpu-pack > "$out/pack.log" 2>&1
echo "pack exit $?"; sed -n '/^Measured/,$p' "$out/pack.log"
cp /tmp/gpu-pack/results.json "$out/pack.json" 2>/dev/null

# ---- 4. distributed launches (dist helper's section) ---------------------------------------------------------
# Each config in configs/accelerate/ (ddp, fsdp = FSDP2, deepspeed-zero2, deepspeed-zero3) launched with
# min(GPUs, 4) processes against the same run in one process: loss / grad_norm / margins / ESS at every step,
# final weights, the live eval's KL, accelerate_state/ in sharded checkpoints, and a half-way kill/resume of
# the sharded configs; a PASS/FAIL table. DeepSpeed is not in the GPU image and the machine has no network:
# wheels carried in .whl/ (benchmarks/README.md, "DeepSpeed for gpu_check.sh") are installed into /tmp/ds-site;
# without them the DeepSpeed rows print SKIP with the reason. With one GPU every launch runs one process.
echo "== distributed launches (ddp, fsdp, deepspeed-zero2/3) vs one process"
if ! $py -c "import deepspeed" >/dev/null 2>&1; then
  if ls .whl/deepspeed-*.whl >/dev/null 2>&1; then
    $py -m pip install -q --no-index --no-deps --no-compile --target /tmp/ds-site .whl/*.whl \
      && export PYTHONPATH=/tmp/ds-site${PYTHONPATH:+:$PYTHONPATH} && echo "deepspeed installed from .whl/" \
      || echo "deepspeed wheels in .whl/ did not install: DeepSpeed rows will be skipped"
  else
    echo "deepspeed is not installed and no wheels were carried (.whl/): DeepSpeed rows will be skipped"
  fi
fi
timeout "${DIST_S:-420}" $py benchmarks/dist_check.py --out "$out/dist" > "$out/dist.log" 2>&1
echo "dist exit $?"; sed -n '/^Distributed check/,$p' "$out/dist.log"
# issue 22 (real vocabularies, long rows, the chunked head): its own script, runnable alone on a short lease
if [ "${ISSUE22:-1}" = 1 ]; then
  echo "== issue 22: chunked head, 800m at vocabulary 128256, long rows"
  bash benchmarks/gpu_check_issue22.sh "$out/issue22"
fi
exit 0
