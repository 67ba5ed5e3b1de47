"""Write a gpt-oss-shaped checkpoint with random weights in the released on-disk layout, so that `oss-grpo train`
runs end to end at full size where no weights can be downloaded (issue #7: the 20b configs on the lent H100).

    python bench/random_checkpoint.py --shape 20b /tmp/gpt-oss-20b-random   # ~13 GB: MXFP4 experts, bf16 rest
    oss-grpo train configs/kernelgen.yaml --set model=/tmp/gpt-oss-20b-random --set max_steps=2

The weights are bench_model's (experts drawn as MXFP4 codes and scales on the device, no float expert ever made),
saved by rl/gpt_oss_loader.py's `save_mxfp4_gpt_oss`, so the trainer loads them through the same path as the
released checkpoints. A random model writes random tokens: the rewards are zero and nothing is learnt; what such a
run shows is whether the configured step fits and how long it takes.
"""

import argparse
import time

import torch

from bench_model import SHAPES, build_model
from oss_grpo.rl.gpt_oss_loader import save_mxfp4_gpt_oss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder to write (config.json, sharded safetensors and their index)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="20b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the random weights are drawn (a GPU draws 21B in seconds)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model = build_model(SHAPES[args.shape], "ours", torch.device(args.device), seed=args.seed)
    shards = save_mxfp4_gpt_oss(model, args.out)
    size = sum(f.stat().st_size for f in shards) / 2**30
    print(f"{args.out}: {len(shards)} shards, {size:.2f} GiB, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
