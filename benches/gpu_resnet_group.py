"""ResNet-50 224x224 on one GPU: a certified group of 4 replicas against unreplicated serving.

The weights are seeded random (ImageNet ResNet-50 cannot be trained here): only speed is
measured. Four owners get four seeds, so the replicas hold different weights, as in a real
group. Three targets, each loaded the same way (closed loop, ``--outstanding`` requests
per client key, ``--clients`` keys), in one run:

- ``plain x1``: one unreplicated ResNet-50 server (the state-of-the-art-serving baseline);
- ``plain x4``: four unreplicated servers on the GPU, each request to all four (the same
  inference work as the group, without agreement);
- ``dropbear n=4``: the certified group, each answer a verified certificate.

Run on a GPU machine (each process takes a share of GPU memory)::

    python benches/gpu_resnet_group.py --duration 20
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.18")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from dropbear.inference import ModelConfig, ModelRepository, seeded  # noqa: E402
from loadgen import GroupTarget, PlainTarget  # noqa: E402

OWNERS = ("resnet50-owner-a", "resnet50-owner-b", "resnet50-owner-c", "resnet50-owner-d")


def resnet50_config(name: str) -> ModelConfig:
    return ModelConfig(
        name=name,
        architecture="resnet50",
        input_shape=(224, 224, 3),
        labels=tuple(f"class-{i}" for i in range(1000)),
        top_k=5,
        description="ResNet-50, ImageNet configuration, seeded random weights (speed only)",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--outstanding", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=64)
    args = parser.parse_args()
    import jax

    print(f"devices: {jax.devices()}", flush=True)
    models_dir = Path(tempfile.mkdtemp(prefix="dropbear-resnet-"))
    repository = ModelRepository(models_dir)
    t = time.perf_counter()
    for seed, name in enumerate(OWNERS):
        repository.save(seeded(resnet50_config(name), seed=seed))
    print(f"wrote 4 seeded ResNet-50 models in {time.perf_counter() - t:.0f} s", flush=True)
    rng = np.random.default_rng(0)
    inputs = rng.uniform(0, 1, (64, 224, 224, 3)).astype(np.float32)
    batch = ["--max-batch-size", str(args.max_batch_size)]
    targets = [
        lambda: PlainTarget(OWNERS[:1], clients=args.clients, server_args=batch,
                            models_dir=models_dir, name="plain x1 (unreplicated)"),
        lambda: PlainTarget(OWNERS, clients=args.clients, server_args=batch,
                            models_dir=models_dir, name="plain x4 (same work, no agreement)"),
        lambda: GroupTarget(nodes=4, clients=args.clients, models_dir=models_dir,
                            node_args=batch, name="dropbear n=4 (certified)"),
    ]
    results = []
    for make in targets:
        t = time.perf_counter()
        with make() as target:
            print(f"{target.name}: ready in {time.perf_counter() - t:.0f} s", flush=True)
            result = target.run(inputs, closed=args.outstanding * args.clients,
                                per_key=args.outstanding, duration=args.duration,
                                warmup=args.warmup, progress=False)
            print(result.line(), flush=True)
            results.append(result)
    plain1, plain4, group = results
    print(f"\ncertified group / unreplicated x1: {group.throughput / plain1.throughput:.2f}; "
          f"certified group / plain x4 (same inference work): "
          f"{group.throughput / plain4.throughput:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
