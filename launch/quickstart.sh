#!/usr/bin/env bash
# Quickstart: install into .venv (if needed), build a small 8-rank example, reshard it to 4 ranks under
# mpirun with mpitrans, and check the result against mindspore.transform_checkpoints byte for byte.
#   bash launch/quickstart.sh [WORKDIR]      (default WORKDIR: ./quickstart_out)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$ROOT/quickstart_out}"
bash "$ROOT/launch/setup_venv.sh"
source "$ROOT/launch/local_env.sh"
PY="$ROOT/.venv/bin/python"
MPIRUN="$ROOT/.venv/bin/mpirun"
export GLOG_v=3  # keep MindSpore quiet during the check

rm -rf "$WORK" && mkdir -p "$WORK"
echo "== 1. build the example model under $WORK"
"$PY" -m mpitrans.example build "$WORK"

run() { echo "+ $*"; "$@"; }
echo
echo "== 2. shard the full model into the 8 training ranks (dp2 x mp4)"
run "$MPIRUN" -n 8 --oversubscribe "$PY" -m mpitrans \
    --src-checkpoint "$WORK/full/model.ckpt" \
    --dst-checkpoint "$WORK/src" --dst-strategy "$WORK/src_strategy.ckpt"

echo
echo "== 3. reshard 8 ranks -> 4 ranks (dp2 x mp2), one process per target rank"
run "$MPIRUN" -n 4 --oversubscribe "$PY" -m mpitrans \
    --src-checkpoint "$WORK/src" --src-strategy "$WORK/src_strategy.ckpt" \
    --dst-checkpoint "$WORK/dst" --dst-strategy "$WORK/dst_strategy.ckpt"

echo
echo "== 4. what was written"
(cd "$WORK/dst" && find . -name '*.ckpt' -printf '%p  %s bytes\n' | sort)

echo
echo "== 5. compare with mindspore.transform_checkpoints on the same input"
"$PY" -m mpitrans.example check "$WORK"
