#!/usr/bin/env bash
# Install the self-hosted NDIF server stack (ndif 0.1.2 + Ray + redis + moto S3) for tests/ndif_stack.
#
# Usage: bash .ci/ndif_stack_env.sh            # venv at $SW_NDIF_VENV (default /tmp/sw-ndif-venv)
#
# The stack lives in its own venv, apart from the package's: ndif wants transformers<5.23 (nnsight 0.8.1 cannot
# source a tokenizer under 5.23 on the server side) and Ray, and it declares Python>=3.12 although its py3-none-any
# wheel runs on 3.11. So:
#   1. every dependency in ONE pip command that also names torch==2.13.0 (the CPU wheel; without it in the same
#      command pip resolves torch from PyPI, i.e. the CUDA build);
#   2. ndif itself with --no-deps --ignore-requires-python (given globally, that flag makes pip pick numpy sdists);
#   3. redis-server from Debian when it is not on PATH.
# The tests' client side (sinkwidgets, nnsight) runs in the calling interpreter; only the services use this venv.
# A stamp file with the requirement list makes a second run a no-op.
set -euo pipefail
VENV="${SW_NDIF_VENV:-/tmp/sw-ndif-venv}"
PY="${SW_NDIF_PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
# nnsight on the server must be the client's version (the request pickle carries nnsight objects).
NNSIGHT_VERSION="${SW_NDIF_NNSIGHT:-$(python -c 'import nnsight; print(nnsight.__version__)' 2>/dev/null || echo 0.8.1)}"
REQS=(
  "torch==2.13.0" "nnsight==${NNSIGHT_VERSION}" "transformers>=5.15.0,<5.23"
  pydantic redis click python-dotenv pyyaml boto3
  fastapi "uvicorn[standard]" gunicorn python-multipart
  "ray[default]" accelerate numpy zstandard peft "moto[server]" psutil
)
STAMP="$VENV/.sw-ndif-stack"
WANT="ndif==0.1.2 ${REQS[*]}"
t0=$(date +%s)

if ! command -v redis-server >/dev/null 2>&1; then
  echo "== redis-server (Debian)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
redis-server --version

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$VENV/bin/python" -c "import ndif, ray, moto" 2>/dev/null; then
  echo "== ndif stack venv $VENV is up to date"
else
  echo "== ndif stack venv $VENV (nnsight ${NNSIGHT_VERSION})"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "${REQS[@]}"
  "$VENV/bin/python" -m pip install -q --no-deps --ignore-requires-python "ndif==0.1.2"
  "$VENV/bin/python" -c "import torch, ndif, ray, nnsight, transformers; assert not torch.version.cuda, torch.__version__; \
print('torch', torch.__version__, 'nnsight', nnsight.__version__, 'transformers', transformers.__version__, 'ray', ray.__version__)"
  echo "$WANT" > "$STAMP"
fi
for exe in ray gunicorn moto_server; do
  [ -x "$VENV/bin/$exe" ] || { echo "ndif stack venv $VENV lacks $exe" >&2; exit 1; }
done
echo "ndif stack env ready in $(( $(date +%s) - t0 )) s: $VENV ($(du -sh "$VENV" | cut -f1))"
