#!/usr/bin/env bash
# Issue 22's GPU rows, for a short lease (run from the repository root; also the last section of gpu_check.sh):
#   1. the chunked LM head against the model's whole head on the GPU, bf16 autocast, vocabulary 128,256
#      (values, gradients, peak GPU memory, time: benchmarks/head_check.py);
#   2. the harness at 800m (0.80B random-init Llama, tied embeddings) with vocabulary 128,256 (llama3),
#      8 pairs x (512+512) tokens, bf16, isdaa DPO against TRL (TRL 1.16's DPOTrainer runs its own chunked
#      fused LM head), both reference modes: tokens/s, MFU and peak GPU memory columns, the memory breakdown;
#   3. long rows: 4 pairs x (1,024+1,024) at 800m, gradient checkpointing on, reference precomputed.
# Usage: bash benchmarks/gpu_check_issue22.sh OUT_DIR   (env: SIZE=800m BATCH=8 HEAD_S/HARNESS_S/LONG_S time limits)
# Expected on an H100: ~1 min for 1, ~3-4 min for 2 (model build + 4 processes), ~2 min for 3.
set -u
out=${1:-gpu-check-issue22}
mkdir -p "$out"
size=${SIZE:-800m}; batch=${BATCH:-8}
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

echo "== chunked head vs whole head (GPU, bf16, vocabulary 128256)"
timeout "${HEAD_S:-150}" $py benchmarks/head_check.py --device cuda --dtype bfloat16 --vocab-size llama3 \
  --hidden 1536 --layers 2 --pairs "$batch" --prompt-len 512 --response-len 512 > "$out/head.log" 2>&1
echo "head check exit $?"; cat "$out/head.log" | tail -12

echo "== harness $size, llama3 vocabulary, ${batch} x (512+512), bf16"
timeout "${HARNESS_S:-330}" $py benchmarks/bench_train.py --device cuda --dtype bfloat16 --sizes "$size" \
  --vocab-size llama3 --prompt-len 512 --response-len 512 --batch-size "$batch" \
  --contenders isdaa-dpo,trl-dpo --ref-modes pre,mem --rounds 1 --warmup-steps 2 --steps 4 \
  --workdir "/tmp/gpu-issue22-$size" > "$out/harness.log" 2>&1
echo "harness exit $?"; sed -n '/^Measured/,$p' "$out/harness.log"
cp "/tmp/gpu-issue22-$size/results.json" "$out/harness.json" 2>/dev/null

echo "== long rows: $size, 4 x (1024+1024), gradient checkpointing"
timeout "${LONG_S:-200}" $py benchmarks/bench_train.py --device cuda --dtype bfloat16 --sizes "$size" \
  --vocab-size llama3 --prompt-len 1024 --response-len 1024 --batch-size 4 --gradient-checkpointing \
  --contenders isdaa-dpo,trl-dpo --ref-modes pre --rounds 1 --warmup-steps 2 --steps 3 \
  --workdir "/tmp/gpu-issue22-long" > "$out/long.log" 2>&1
echo "long exit $?"; sed -n '/^Measured/,$p' "$out/long.log"
cp /tmp/gpu-issue22-long/results.json "$out/long.json" 2>/dev/null
exit 0
