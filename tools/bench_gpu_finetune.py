#!/usr/bin/env python3
"""Fine-tuning step throughput of the full-size HT Demucs on a GPU: fp32 vs bf16 autocast.

The GPU run of ``tools/bench_finetune.py`` (same stand-in model, stem folder and steps, see its
docstring), with GPU defaults: ``--device cuda``, batch 4 (the official recipe's share of one
GPU: batch 32 on 8 GPUs), 3 warm-up steps and the mean of 20; every precision in its own
process, peak GPU memory from ``torch.cuda.max_memory_allocated``::

    python3 tools/bench_gpu_finetune.py           # -> tools/results/bench_finetune_cuda.md
    python3 tools/bench_gpu_finetune.py --batch 8 --lora 8 --freeze 'encoder.*'
    python3 tools/bench_gpu_finetune.py --device cpu --dry-run --batch 1 --precisions fp32
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_finetune import main

GPU_DEFAULTS = {"device": "cuda", "batch": 4, "steps": 20, "warmup": 3}

if __name__ == "__main__":
    sys.exit(main(defaults=GPU_DEFAULTS))
