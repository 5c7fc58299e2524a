#!/usr/bin/env bash
# The paper's generation setting (examples/paper_generation_gpu.toml) cut to fit 10 minutes on
# one large GPU (an H100/H200): the same model, quantization, LoRA, sequence lengths, batch and
# 8 clients, but 2 rounds (1 warm-up) of 32 training and 8 test examples per client. Prints the
# time per round (training vs evaluation), ROUGE-L and the peak GPU memory nvidia-smi saw.
# GPU only: it stops at once without nvidia-smi.
#
#   MODEL=/models/Llama-2-7b-hf bash benchmarks/gpu_paper_generation.sh [OUT_DIR]
#
# MODEL: a local model folder or a hub id already in the local Hugging Face cache (default: the
# config's meta-llama/Llama-2-7b-hf); QUANT: none | 8bit | 4bit (default: the config's 4bit).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu_paper_generation}
command -v nvidia-smi >/dev/null || { echo "error: nvidia-smi not found: this benchmark needs an NVIDIA GPU" >&2; exit 2; }
mkdir -p "$(dirname "$OUT")"
config="$OUT.toml"
sed -E -e 's/^train_per_client = .*/train_per_client = 32/' \
       -e 's/^test_per_client = .*/test_per_client = 8/' \
       -e 's/^warmup_rounds = .*/warmup_rounds = 1/' \
       ${MODEL:+-e "s#^path = .*#path = \"$MODEL\"#"} \
       ${QUANT:+-e "s#^quantization = .*#quantization = \"$QUANT\"#"} \
       examples/paper_generation_gpu.toml > "$config"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT.gpu_mib.log" &
monitor=$!
trap 'kill $monitor 2>/dev/null || true' EXIT
rm -rf "$OUT"
python benchmarks/bench_generation.py --config "$config" --rounds 2 --out "$OUT"
echo "peak GPU memory used (nvidia-smi, whole device): $(sort -n "$OUT.gpu_mib.log" | tail -1) MiB"
