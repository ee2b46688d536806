#!/usr/bin/env bash
# The speed and memory table on a GPU in one call: `hiedit speed` on SmolLM2 and on the shaped models
# (random weights in GPT-2 XL's and Llama-3-8B's layer shapes), then the Markdown table of the runs.
#
#   benchmarks/gpu.sh [OUT_DIR]          (default OUT_DIR: benchmarks/results/speed/gpu)
#
# Writes OUT_DIR/LABEL.json per run, OUT_DIR/speed.md and OUT_DIR/device.txt (torch, CUDA, GPU name).
# Each run is capped at HIEDIT_SPEED_LIMIT seconds (default 110), so the five default runs end within
# 10 minutes even if one hangs; a failed run is named and the others still run (exit status 1).
# PYTHON (default .venv/bin/python, else python3) needs a CUDA build of torch and this project.
# Overrides, which the tests use to run the script on a CPU with tiny models: HIEDIT_DEVICE (cuda),
# HIEDIT_SPEED_EDITS (20 edits per episode), HIEDIT_SPEED_DATASET (ZsRE from ../shared/data when
# present, else the shipped edits), HIEDIT_SPEED_RUNS (one run per line: label, model, dtype, and
# the gym.make arguments as a JSON object).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/speed/gpu}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DEVICE=${HIEDIT_DEVICE:-cuda}
EDITS=${HIEDIT_SPEED_EDITS:-20}
LIMIT=${HIEDIT_SPEED_LIMIT:-110}
ZSRE=../shared/data/zsre/zsre_mend_1k.json
if [ -z "${HIEDIT_SPEED_DATASET:-}" ]; then
    if [ -f "$ZSRE" ]; then DATASET=$ZSRE; else DATASET=default; fi
else
    DATASET=$HIEDIT_SPEED_DATASET
fi
# The Llama-3-8B down_proj run measures the full key preconditioner where it does not scale (d_in 14336).
RUNS=${HIEDIT_SPEED_RUNS:-'smollm2-135m smollm2-135m float32 {}
shape-gpt2-xl shape:gpt2-xl float32 {}
shape-gpt2-xl-bfloat16 shape:gpt2-xl bfloat16 {}
shape-llama-3-8b-2layers shape:llama-3-8b-2layers float32 {}
shape-llama-3-8b-2layers-down_proj shape:llama-3-8b-2layers float32 {"modules": ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]}'}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'devices',
[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])" | tee "$OUT/device.txt"
failed=0
while read -r label model dtype kwargs; do
    [ -z "$label" ] && continue
    echo "== $label: $model $dtype $kwargs"
    if ! timeout "$LIMIT" "$PYTHON" -m hiedit_agents.cli speed --model "$model" --dtype "$dtype" --device "$DEVICE" \
            --dataset "$DATASET" --num-edits "$EDITS" --editors full diagonal --env-kwargs "$kwargs" \
            --label "$label" --out "$OUT/$label.json"; then
        echo "== $label failed or ran past ${LIMIT} s"
        failed=1
    fi
done <<< "$RUNS"
"$PYTHON" -m hiedit_agents.cli speed --table "$OUT" || failed=1
exit $failed
