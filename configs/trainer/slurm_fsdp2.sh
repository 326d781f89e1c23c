#!/bin/bash
# Multi-node FSDP2 under SLURM: 2 nodes x 8 GPUs, one task per GPU; Lightning reads the SLURM variables
# (world size, ranks, master address), so srun starts every process. NOT RUN by the project (no cluster);
# the single-node sharded code path is tested on CPU with 2 gloo processes (tests/test_fsdp2.py).
#   sbatch configs/trainer/slurm_fsdp2.sh configs/search_r1_qwen3b_fsdp.yaml
#SBATCH --job-name=ragkit-fsdp2
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
set -euo pipefail
CONFIG=${1:?usage: sbatch configs/trainer/slurm_fsdp2.sh configs/<experiment>.yaml [overrides...]}
shift
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
srun .venv/bin/python train.py --config "$CONFIG" --config configs/trainer/fsdp2.yaml \
    --trainer.num_nodes "$SLURM_NNODES" --trainer.devices "$SLURM_NTASKS_PER_NODE" "$@"
