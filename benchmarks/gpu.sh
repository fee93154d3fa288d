#!/usr/bin/env bash
# The GPU rows of the README's "Performance" table, on a machine with one GPU.
#
#   benchmarks/gpu.sh [CIFAR-10 archive or folder] [log folder] [step ...]
#
# Steps (default: `lent`, the checks for a short loan of a GPU, at most 11.5 minutes by
# their limits): cuda_tests (the tests that need CUDA), mfu_graph, time_to_accuracy,
# streaming (data.on_device: streamed vs on-device batches on the GPU), run_5m (a 4-minute
# `resnet-search run spaces/cifar_5m.yaml` through Ray, trials packed on the GPU).
# `all` adds trainer, trainer_compiled, trainer_small_compiled, trainer_graph, packing and
# packing_graph (about 8 more minutes on an H100). Each step runs under its own time limit
# (a hang costs that step, not the rest) and writes its log to the log folder (default
# benchmarks/out/gpu).
set -u
data=$(realpath -m "${1:-$(dirname "$0")/../../shared/data/cifar10-jpeg.tar.gz}")
logs=$(realpath -m "${2:-$(dirname "$0")/out/gpu}")
shift $(($# < 2 ? $# : 2))
lent="cuda_tests mfu_graph time_to_accuracy streaming run_5m"
steps=${*:-lent}
steps=${steps/#lent/$lent}
steps=${steps/#all/$lent trainer trainer_compiled trainer_small_compiled trainer_graph packing packing_graph}
cd "$(dirname "$0")/.."
mkdir -p "$logs"
export PYTHONUNBUFFERED=1

run() {  # run NAME SECONDS SCRIPT ARGS...
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date +%T)): $*"
    timeout "$limit" python "$@" --data-dir "$data" 2>&1 | tee "$logs/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$logs/gpu.txt"
for step in $steps; do
    case $step in
        # The tests that skip without CUDA: CUDA-graph steps, pinned streaming.
        cuda_tests) echo "== cuda_tests ($(date +%T))"
            timeout 150 python -m pytest -q -p no:cacheprovider tests/test_recipe.py tests/test_streaming.py \
                -k "cuda or graphed" 2>&1 | tee "$logs/cuda_tests.log"
            echo "== cuda_tests: exit ${PIPESTATUS[0]}" ;;
        # Streamed vs on-device training batches (gather, augment, normalize) on the GPU.
        streaming) echo "== streaming ($(date +%T))"
            timeout 60 python benchmarks/data_pipeline.py --part stream --device cuda 2>&1 | tee "$logs/streaming.log"
            echo "== streaming: exit ${PIPESTATUS[0]}" ;;
        # The main search for 4 minutes through Ray, trials packed on the one GPU.
        run_5m) echo "== run_5m ($(date +%T))"
            study=$(mktemp -d)
            timeout 330 python -m search.cli run spaces/cifar_5m.yaml --data-dir "$data" --timeout 4m \
                --storage "sqlite:///$study/cifar_5m.db" 2>&1 | tee "$logs/run_5m.log"
            echo "== run_5m: exit ${PIPESTATUS[0]}" ;;
        # Images/s and MFU, ours vs the plain loop, at each model's own batch size (eager),
        # and a profile of ours (how busy the GPU is).
        trainer) run trainer 180 benchmarks/trainer.py --device cuda --steps 50 --rounds 2 --workers 8 --profile ;;
        # Seed 003's model at batch 512, compiled: MFU on a batch that fills the GPU.
        trainer_compiled) run trainer_compiled 150 benchmarks/trainer.py --device cuda --models paper_se_443 \
            --batch-size 512 --steps 36 --rounds 1 --workers 8 --compile ;;
        # The small models compiled: does compilation remove their per-step launch overhead?
        trainer_small_compiled) run trainer_small_compiled 150 benchmarks/trainer.py --device cuda \
            --models quickstart,resnet20 --steps 50 --rounds 1 --workers 8 --compile ;;
        # The small models with their step replayed as one CUDA graph (train.cuda_graph):
        # images/s against the eager step of the `trainer` step's log.
        trainer_graph) run trainer_graph 100 benchmarks/trainer.py --device cuda --models quickstart,resnet20 \
            --steps 50 --rounds 1 --workers 8 --cuda-graph ;;
        # Seed 003's model at batch 512 with the CUDA-graph step: MFU (goal 30%).
        mfu_graph) run mfu_graph 100 benchmarks/trainer.py --device cuda --models paper_se_443 \
            --batch-size 512 --steps 36 --rounds 1 --workers 8 --cuda-graph ;;
        # Four small trials sharing the GPU vs one at a time.
        packing) run packing 200 benchmarks/gpu_packing.py --trials 4 --epochs 3 ;;
        # The same with every trial's step a CUDA graph.
        packing_graph) run packing_graph 200 benchmarks/gpu_packing.py --trials 4 --epochs 3 --cuda-graph ;;
        # Time to 94% of cifar_fast.yaml, seed 003's to 94% and 95% before and with the
        # recipe, and a small model's images/s with and without the CUDA-graph step.
        time_to_accuracy) run time_to_accuracy 220 benchmarks/time_to_accuracy.py --device cuda ;;
        *) echo "unknown step $step" >&2; exit 2 ;;
    esac
done
