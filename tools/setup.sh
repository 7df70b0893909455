#!/usr/bin/env bash
# One-command install of the whole stack into ./.venv (idempotent: a second run only re-checks).
#   bash tools/setup.sh          runtime (pretraining, fine-tuning, detectron2, mmseg)
#   bash tools/setup.sh --test   + the test-only dependencies (pytest, HF transformers)
# Works offline except for the package registries (PyPI, Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
REQ=requirements.txt; [ "${1:-}" = "--test" ] && REQ=requirements-test.txt
PY=${PYTHON:-python3.11}; command -v "$PY" >/dev/null || PY=python3
# Upstream detectron2 commit (2024-04) that the registry fallback below also carries.
D2_COMMIT=a59f05630a8f205756064244bf5beb8661f96180

stamp=.venv/.setup-$(cat "$REQ" requirements.txt pyproject.toml tools/setup.sh | sha1sum | cut -c1-12)
if [ -f "$stamp" ]; then echo "setup: .venv is up to date ($REQ)"; exit 0; fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
pip install -r "$REQ"
# detectron2's ViT imports fairscale for activation checkpointing (use_act_checkpoint=True). Its registry
# copy is a source archive whose isolated build would fetch a second torch: build it against ours instead.
pip install --no-deps --no-build-isolation "fairscale==0.4.13"
pip install --no-deps --no-build-isolation -e .

if ! .venv/bin/python -c "import detectron2" 2>/dev/null; then
  echo "setup: installing detectron2 @ ${D2_COMMIT:0:8} from GitHub (compiles its C++ ops, ~11 min on 2 cores)"
  if ! .venv/bin/python -m pip install -q --no-build-isolation --no-deps \
       "git+https://github.com/facebookresearch/detectron2.git@$D2_COMMIT" 2>/tmp/d2-git.log; then
    # GitHub unreachable: the only registry copy of upstream detectron2 that works here is the
    # pure-Python part of sal-detectron2 0.7.2 (= upstream a59f0563 + two trivial fixes). Its wheel is
    # tagged cp310; its _C does not load on 3.11, so detectron2 runs without compiled ops (we use
    # pycocotools evaluation and nothing that needs rotated boxes or deformable conv).
    echo "setup: GitHub unreachable ($(grep -m1 -o 'Could not resolve host[^)]*' /tmp/d2-git.log || echo 'see /tmp/d2-git.log')); using sal-detectron2==0.7.2"
    rm -rf .venv/detectron2-wheel
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.10 --target .venv/detectron2-wheel sal-detectron2==0.7.2 2>&1 | grep -v "is ignored" || true
    site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "$PWD/.venv/detectron2-wheel" > "$site/detectron2-wheel.pth"
  fi
fi
.venv/bin/python -c "import detectron2.modeling, mmseg, timm, torch" 2>/dev/null \
  || { echo "setup: import check failed; run: .venv/bin/python -m mae_transfer.env"; exit 1; }
rm -f .venv/.setup-*; touch "$stamp"
echo "setup: done. Environment: .venv/bin/python -m mae_transfer.env"
