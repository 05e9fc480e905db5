#!/usr/bin/env bash
# One prepared GPU check (issues 19 and 32): every CUDA path run once, then the speed tables,
# within one time budget, in order of priority.
#
#   On the CPU machine, once:  bash bench/gpu_check.sh --fetch-wheels   # wheels in .whl/, LFW sample in .gpu_data/
#   On the CUDA machine:       bash bench/gpu_check.sh [OUT_DIR]         # at most $GPU_CHECK_BUDGET s (480)
#
# (a) the CUDA paths: the standard run in bf16 + channels_last + torch.compile and in fp16 +
#     channels_last, a resume of it, evaluate, embed, ONNX export, five-point align on CUDA, the
#     host-sync check (no device read between agreement points), and the face path: iResNet-50
#     on a packed .rec set with Partial FC (sample rate 0.1) in bf16;
# (b) bench/bench_gpu.py at 112 px, batch 256, bf16 + channels_last (eager and torch.compile)
#     against the original trainer's fp32 loop, with FLOPs per image and the peak fraction:
#     iResNet-50 first, then MobileFaceNet and ResNet-34;
# (c) bench/gpu_face.py: Partial FC 0.1 against the full classifier at 100 k identities, the
#     iResNet-50 IJB-style embedding throughput, and the .rec loader's images/s per worker.
# Each step has its own timeout, cut to what is left of the budget; a step with under 15 s
# left is skipped. Steps that passed are recorded in /tmp/gpu_check_done, so a second call on
# the same (still warm) machine runs only the others; GPU_CHECK_SKIP="NAME ..." skips steps by name. One log per step in OUT_DIR (default
# $OUT, else ./gpu_check), and summary.txt.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WHEELS="pytorch-ignite==0.5.5 albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5
annotated-types typing-inspection==0.4.5 typing-extensions==4.16.0 stringzilla==5.3.2 simsimd==6.5.16
clearml==2.1.12 pyjwt facenet-pytorch==2.5.3 pathlib2 furl orderedmultidict jsonschema referencing rpds-py
jsonschema-specifications"
if [ "${1:-}" = "--fetch-wheels" ]; then
  for d in .whl .gpu_data; do grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude; done
  rm -rf .whl; mkdir -p .gpu_data
  for w in $WHEELS; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$w" 2>/dev/null || echo "could not fetch $w" >&2
  done
  [ -d ../shared/data/lfw/raw-sample ] && rm -rf .gpu_data/raw-sample && cp -r ../shared/data/lfw/raw-sample .gpu_data/
  ls .whl .gpu_data; exit 0
fi

out="${1:-${OUT:-gpu_check}}"; mkdir -p "$out"
py="${PYTHON:-python3}"
budget="${GPU_CHECK_BUDGET:-480}"
if ls .whl/*.whl >/dev/null 2>&1 && [ ! -d /tmp/site/ignite ]; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 \
       CLEARML_OFFLINE_MODE=1 CLEARML_CACHE_DIR=/tmp/clearml NO_ALBUMENTATIONS_UPDATE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/device.txt" 2>&1
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" >> "$out/device.txt" 2>&1
nproc >> "$out/device.txt"

status=0
logs=/tmp/gpu_check_logs; mkdir -p "$logs"
trap 'tar -czf "$out/logs.tgz" -C "$logs" . 2>/dev/null' EXIT  # one file back, whatever the count
done_file=/tmp/gpu_check_done; touch "$done_file"
step() {  # step NAME TIMEOUT_S COMMAND...: run within the budget, log to $out/NAME.log
  local name=$1 limit=$2; shift 2
  local left=$((budget - SECONDS))
  if grep -qx "$name" "$done_file" || [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then return; fi
  if [ "$left" -lt 15 ]; then
    printf '%-28s %-10s %4ds\n' "$name" "SKIPPED" 0 | tee -a "$out/summary.txt"; return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  # SIGABRT at the limit: with PYTHONFAULTHANDLER the log ends with every thread's traceback
  if PYTHONFAULTHANDLER=1 timeout -s ABRT -k 5 "$limit" "$@" > "$logs/$name.log" 2>&1; then r=ok; echo "$name" >> "$done_file"
  else r="FAILED($?)"; status=1; fi
  printf '%-28s %-10s %4ds\n' "$name" "$r" $((SECONDS - t0)) | tee -a "$out/summary.txt"
}

runs=/tmp/gpu_check_runs; mkdir -p "$runs"
tiny="--image_size 64 --batch_size 64 --log_interval 5 --clearml off --num_workers 4 --device cuda"
# (a) CUDA paths
step train_fp16_cl 50 "$py" experiments/resnet34_center.py $tiny --num_workers 0 --epochs 1 \
     --amp fp16 --channels_last --output_dir "$runs/fp16"
ckpt_dir=$(ls -d "$runs"/fp16/resnet34_center-*/ 2>/dev/null | head -1)
pairs="$runs/fp16/cache/builtin-v2/pairs"
step resume_fp16 45 "$py" experiments/resnet34_center.py $tiny --num_workers 0 --amp fp16 \
     --channels_last --epochs 2 --resume_path "${ckpt_dir:-missing}"
step evaluate_cuda 30 "$py" -m faceignite.evaluate --checkpoint "${ckpt_dir:-missing}" --lfw "$pairs" \
     --device cuda --amp bf16 --image_size 64
step embed_cuda 30 "$py" -m faceignite.embed "$pairs" --checkpoint "${ckpt_dir:-missing}" \
     --out "$runs/emb.npy" --device cuda
step onnx_export 60 "$py" -m faceignite.onnx_export --checkpoint "${ckpt_dir:-missing}" --out "$runs/model.onnx"
if [ -d .gpu_data/raw-sample ]; then
  step align_cuda_arcface 45 "$py" -m faceignite.align .gpu_data/raw-sample "$runs/aligned112" \
       --device cuda --template arcface --image_size 112
fi
step host_sync_check 60 "$py" bench/sync_check.py --device cuda --amp bf16
step face_rec_partial_fc 90 bash -c "\"$py\" -c 'import sys; sys.path.insert(0, \"bench\");
from common import write_jpeg_tree; write_jpeg_tree(\"$runs/faces\", 64, 12, size=112)' &&
  \"$py\" -m faceignite.data.pack \"$runs/faces\" \"$runs/faces_rec\" &&
  \"$py\" experiments/iresnet50_center.py --dataroot \"$runs/faces_rec\" --image_size 112 --batch_size 128 \
    --epochs 1 --amp bf16 --channels_last --partial_fc --sample_rate 0.1 --valid_split 0 \
    --clearml off --num_workers 4 --device cuda --output_dir \"$runs/face\""
# (b) the face backbones' step against the original trainer's fp32 loop
bench="bench/bench_gpu.py --sizes 112 --batch_size 256 --precisions bf16 --channels_last on --flops --rounds 3"
step bench_iresnet50_bf16 90 "$py" $bench --model iresnet50 --compile off
# with loader workers (4) and torch.compile: the run as a user starts it
step train_bf16_cl_compile 120 "$py" experiments/resnet34_center.py $tiny --epochs 1 --amp bf16 \
     --channels_last --compile --output_dir "$runs/bf16"
step bench_mobilefacenet_bf16 70 "$py" $bench --model mobilefacenet --compile off
step bench_resnet34_bf16 60 "$py" $bench --model resnet34 --compile off
# (c) Partial FC, IJB embedding, the .rec loader
step partial_fc_100k 60 "$py" bench/gpu_face.py partial_fc --classes 100000
step ijb_embed_iresnet50 75 "$py" bench/gpu_face.py ijb_embed --model iresnet50 --images 4000 --num_workers 8
step rec_loader_workers 75 "$py" bench/gpu_face.py rec_loader --images 3000 --workers 1 4 8 12 --rounds 2
# loader workers stopped at the run's end (faceignite/data/workers.py): seconds between the
# run's last log line and the process's exit (30-60 s before that fix)
step workers_exit 60 bash -c "\"$py\" experiments/resnet34_center.py $tiny --epochs 1 --amp bf16 \
  --channels_last --output_dir \"$runs/wexit\" && \"$py\" -c 'import glob, os, time
f = max(glob.glob(\"$runs/wexit/*/run.log\"), key=os.path.getmtime)
print(\"exit delay after the last log line: %.1f s\" % (time.time() - os.path.getmtime(f)))'"
step bench_iresnet50_compile 200 "$py" $bench --model iresnet50 --compile on --no_handlers_row
exit $status
