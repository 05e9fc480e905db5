#!/usr/bin/env bash
# Set up the environment and run the main job: ResNet-34 + center loss (built-in data by default).
# Any option is passed on: bash run.sh --dataroot /data/vggface2 --lfw /data/lfw-mtcnn-160
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
python="$(bash scripts/setup_env.sh)"
exec "$python" experiments/resnet34_center.py "$@"
