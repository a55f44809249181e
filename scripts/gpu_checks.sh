#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md ("GPU"), for a lent GPU machine where nothing can be built.
#
# Build here, then carry `.gpu/` (the binary) and `.whl/` (diffusers for the PyTorch rows; PyTorch,
# transformers and peft are on the machine):
#   CARGO_TARGET_DIR=~/.cache/consistency-models/target-cuda \
#     cargo build --release --features cuda --example gpu_suite
#   mkdir -p .gpu && strip -o .gpu/gpu_suite $CARGO_TARGET_DIR/release/examples/gpu_suite && xz -f -T2 .gpu/gpu_suite
#   pip download --no-deps --only-binary=:all: -d /tmp/w diffusers==0.42.1 importlib_metadata
#   # unzip both into one folder, drop diffusers/pipelines/* but stable_diffusion and
#   # diffusers/modular_pipelines (the carried tree is limited to 64 MiB), then
#   tar -C that-folder -cJf .whl/site.tar.xz .
# There, from the repository root (so that cubecl.toml is found):
#   scripts/gpu_checks.sh [--deadline SECONDS] STAGE...
#
# Stages run in the order given, each under its own time limit; none starts within 20 s of the
# deadline (default 480 s after the start). Output goes to $OUT/gpu.log (default out/gpu), one
# summary line per stage with its exit code and wall time to $OUT/summary.log.
#
#   setup        unpack the binary, make its links and the Python packages, print the GPU; a kernel
#                cache carried from an earlier machine (.gpu/cubecl-cache.tar.xz, written by the
#                `cache` stage) is unpacked into ~/.config first, so its kernels are not compiled again
#   torch        PyTorch/diffusers rows: bench_reference.py f32 (TF32 on) and f16, all rows; the
#                LoRA CD step reference at 64x64 latents, batch 4
#   torch-strict bench_reference.py in strict f32 (TF32 off), UNet rows
#   cold-tiny    `sample` on the tiny fixture pipeline (DDIM 4, CFG) twice, in fresh processes:
#                the first compiles and autotunes, the second reads the kernel cache
#   warm-tiny    `sample` on the tiny pipeline once more (all kernels cached), and the tiny UNet row
#   cold-sd15    bench_models --rows sample512 twice in fresh processes (the SD1.5-config pipeline)
#   models       bench_models f32, every SD1.5 row
#   models-f16   bench_models --dtype f16, every SD1.5 row
#   train        bench_train: LoRA CD step at 64x64 latents, batch 4, with checkpointing, then without
#   parity       backend_parity --unet (CUDA vs CPU from the same weights)
#   cache        the kernel and autotune caches as $OUT/cubecl-cache.tar.xz
set -u
DEADLINE=480
if [ "${1:-}" = "--deadline" ]; then DEADLINE=$2; shift 2; fi
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
LOG=$OUT/gpu.log
BIN=$PWD/.gpu/bin
START=$(date +%s)
export PATH=$BIN:$PATH PYTHONUNBUFFERED=1

left() { echo $((DEADLINE - ($(date +%s) - START))); }

# run NAME LIMIT COMMAND...: one timed step, cut at LIMIT seconds or at the deadline.
run() {
    local name=$1 limit=$2
    shift 2
    local l
    l=$(left)
    if [ "$l" -lt 20 ]; then
        echo "SKIP $name (deadline)" | tee -a "$LOG" "$OUT/summary.log"
        return
    fi
    [ "$limit" -gt "$l" ] && limit=$l
    echo "=== $name: $* (limit ${limit} s, $(date -u +%T))" | tee -a "$LOG"
    local t0 t1 rc
    t0=$(date +%s.%N)
    timeout -k 5 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    printf '%s\trc=%s\twall=%s s\n' "$name" "$rc" "$(awk "BEGIN{printf \"%.1f\", $t1 - $t0}")" | tee -a "$LOG" "$OUT/summary.log"
}

stage_setup() {
    mkdir -p "$BIN"
    xz -dc .gpu/gpu_suite.xz >"$BIN/gpu_suite" && chmod +x "$BIN/gpu_suite"
    for name in bench_models bench_train backend_parity sample; do ln -sf gpu_suite "$BIN/$name"; done
    mkdir -p /tmp/site && tar -C /tmp/site -xJf .whl/site.tar.xz
    if [ -f .gpu/cubecl-cache.tar.xz ]; then
        mkdir -p "$HOME/.config" && tar -C "$HOME/.config" -xJf .gpu/cubecl-cache.tar.xz && echo "kernel cache restored" >>"$LOG"
    fi
    { nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
      python3 -c "import torch, diffusers, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__)"
      cat cubecl.toml | grep -v '^#'; } >>"$LOG" 2>&1
}

stage_torch() {
    local rows=te,unet32,unet32x2,unet64,unet64x2,vae512,sample512
    run torch-f32-tf32 90 python3 scripts/bench_reference.py --device cuda --runs 5 --rows $rows --tf32
    run torch-f16 75 python3 scripts/bench_reference.py --device cuda --runs 5 --rows $rows --dtype f16
    run torch-train 90 python3 scripts/bench_train_reference.py --device cuda --latent 64 --batch 4 --runs 5
}

stage_torch_strict() {
    run torch-f32-strict 90 python3 scripts/bench_reference.py --device cuda --runs 5 --rows unet64,unet64x2
}

stage_cold_tiny() {
    for process in first second; do
        run "cold-tiny-$process" 300 sample --model tests/fixtures/tiny-sd --prompt "a red circle" \
            --scheduler ddim --steps 4 --guidance 7.5 --out "$OUT/tiny.png"
    done
}

stage_warm_tiny() {
    run warm-tiny 60 sample --model tests/fixtures/tiny-sd --prompt "a red circle" \
        --scheduler ddim --steps 4 --guidance 7.5 --out "$OUT/tiny.png"
    run tiny-unet 60 bench_models --rows tiny --runs 10
}

stage_cold_sd15() {
    for process in first second; do
        run "cold-sd15-$process" 420 bench_models --rows sample512 --runs 3
    done
}

stage_models() {
    run models-f32 300 bench_models --runs 5 --rows te,unet32,unet32x2,unet64,unet64x2,vae512,sample512
}

stage_models_f16() {
    run models-f16 300 bench_models --runs 5 --dtype f16 --rows te,unet32,unet32x2,unet64,unet64x2,vae512,sample512
}

stage_train() {
    run train-ckpt 300 bench_train --latent 64 --batch 4 --runs 5 --rows checkpointing
    run train-plain 240 bench_train --latent 64 --batch 4 --runs 5 --rows plain
}

stage_parity() {
    run parity 120 backend_parity --unet
}

stage_cache() {
    tar -C "$HOME/.config" -cJf "$OUT/cubecl-cache.tar.xz" cuda autotune 2>>"$LOG"
    ls -la "$OUT" >>"$LOG"
}

export PYTHONPATH=/tmp/site
for stage in "$@"; do
    fn=stage_${stage//-/_}
    if ! declare -f "$fn" >/dev/null; then
        echo "unknown stage $stage" | tee -a "$LOG"
        exit 2
    fi
    "$fn"
done
echo "done after $(($(date +%s) - START)) s" | tee -a "$LOG" "$OUT/summary.log"
