#!/usr/bin/env bash
# One prepared GPU check (issue 19): every CUDA path run once, then the speed tables.
#
#   On the CPU machine, once:  bash bench/gpu_check.sh --fetch-wheels   # ignite, albumentations, … as wheels in .whl/
#   On the CUDA machine:       bash bench/gpu_check.sh [OUT_DIR]         # ~8 min on one H200
#
# (a) the CUDA-relevant paths: a tiny training run per --amp mode (off, bf16, fp16) with
#     channels_last and torch.compile, a resume of it, evaluate, embed, ONNX export, align on CUDA,
#     and the host-sync check (torch.cuda.set_sync_debug_mode while the recipe's handlers run);
# (b) bench/bench_gpu.py at 112 and 224 px, batch 256, against the original trainer's fp32 loop,
#     with and without the recipe's handlers;
# (c) bench/bench_input.py: the DataLoader's images/s per worker, to set against the step's demand.
# Every step's output goes to OUT_DIR (default $OUT, else ./gpu_check) as one log per step.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WHEELS="pytorch-ignite albumentations albucore pydantic pydantic-core annotated-types typing-inspection stringzilla simsimd clearml facenet-pytorch==2.5.3 pathlib2 furl orderedmultidict jsonschema referencing rpds-py jsonschema-specifications"
if [ "${1:-}" = "--fetch-wheels" ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
  for w in $WHEELS; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$w" || echo "could not fetch $w" >&2
  done
  ls -la .whl; exit 0
fi

out="${1:-${OUT:-gpu_check}}"; mkdir -p "$out"
py="${PYTHON:-python3}"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 CLEARML_OFFLINE_MODE=1 \
       CLEARML_CACHE_DIR=/tmp/clearml NO_ALBUMENTATIONS_UPDATE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/device.txt" 2>&1
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" >> "$out/device.txt" 2>&1

status=0
step() {  # step NAME TIMEOUT_S COMMAND...: run, log to $out/NAME.log, record pass/fail
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  if timeout "$limit" "$@" > "$out/$name.log" 2>&1; then r=ok; else r="FAILED($?)"; status=1; fi
  printf '%-28s %-10s %4ds\n' "$name" "$r" $((SECONDS - t0)) | tee -a "$out/summary.txt"
}

runs=/tmp/gpu_check_runs; rm -rf "$runs"; mkdir -p "$runs"
tiny="--epochs 2 --image_size 64 --batch_size 64 --log_interval 5 --clearml off --num_workers 4 --device cuda"
# (a) CUDA paths
for amp in off bf16 fp16; do
  step "train_${amp}_cl_compile" 300 "$py" experiments/resnet34_center.py $tiny --amp "$amp" \
       --channels_last --compile --output_dir "$runs/$amp"
done
ckpt_dir=$(ls -d "$runs"/fp16/*/ 2>/dev/null | head -1)
step resume_fp16 240 "$py" experiments/resnet34_center.py $tiny --amp fp16 --channels_last \
     --epochs 3 --resume_path "${ckpt_dir:-missing}"
step evaluate_cuda 120 "$py" -m faceignite.evaluate --checkpoint "${ckpt_dir:-missing}" --device cuda --amp bf16
step embed_cuda 120 "$py" -m faceignite.embed "$HOME/.cache/faceignite" --checkpoint "${ckpt_dir:-missing}" \
     --out "$runs/emb.npy" --device cuda
step onnx_export 180 "$py" -m faceignite.onnx_export --checkpoint "${ckpt_dir:-missing}" --out "$runs/model.onnx"
if [ -d ../shared/data/lfw/raw-sample ]; then
  step align_cuda 180 "$py" -m faceignite.align ../shared/data/lfw/raw-sample "$runs/aligned" --device cuda
  step align_cuda_arcface 180 "$py" -m faceignite.align ../shared/data/lfw/raw-sample "$runs/aligned112" \
       --device cuda --template arcface --image_size 112
fi
step host_sync_check 180 "$py" bench/sync_check.py --device cuda
step pytest_cuda 300 "$py" -m pytest -q -x tests/test_train.py tests/test_control.py tests/test_onnx.py
# (b) speed matrix, (c) loader throughput per worker
step bench_gpu_112_224 600 "$py" bench/bench_gpu.py --sizes 112 224 --batch_size 256
step bench_input_workers 300 "$py" bench/bench_input.py --image_size 112 --workers 8 --batch_size 256
cp "$out"/summary.txt "$out"/summary.log 2>/dev/null
exit $status
