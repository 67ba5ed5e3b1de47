"""The `oss-grpo` command (also `python -m oss_grpo`).

    oss-grpo train CONFIG.yaml [--set key=value ...] [--resume DIR]
    oss-grpo export RUN_DIR [--merged OUT] [--adapter OUT] [--dtype bfloat16|float32]

A config error, unknown plugin or missing file prints one line naming the key or file and exits with code 2,
before any model is built.
"""

import argparse
import logging
import sys
from pathlib import Path

from oss_grpo.rl.errors import OssGrpoError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="oss-grpo", description="GRPO fine-tuning for gpt-oss models.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a policy with GRPO")
    train.add_argument("config", help="YAML file of options (see docs/CONFIG.md)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one option, e.g. --set max_steps=2 (repeatable)")
    train.add_argument("--resume", metavar="DIR",
                       help="continue the run in DIR from its newest complete checkpoint (sets output_dir=DIR)")
    export = commands.add_parser("export", help="write a trained run as a merged checkpoint and/or its adapter")
    export.add_argument("run_dir", help="folder of a finished `oss-grpo train` run (holds config.yaml and final/)")
    export.add_argument("--merged", metavar="OUT",
                        help="Hugging Face checkpoint, every LoRA (attention, experts) merged, experts dequantised")
    export.add_argument("--adapter", metavar="OUT", help="the PEFT adapter alone (attention and expert factors)")
    export.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="dtype of --merged")
    args = parser.parse_args(argv)
    if args.command == "export" and not (args.merged or args.adapter):
        parser.error("export: give --merged OUT, --adapter OUT or both")
    return args


def run_export(args: argparse.Namespace) -> int:
    import torch

    from oss_grpo.rl.export import export

    export(Path(args.run_dir), args.merged and Path(args.merged), args.adapter and Path(args.adapter),
           getattr(torch, args.dtype))
    print(f"exported {args.run_dir}: " + ", ".join(f"{kind} -> {out}" for kind, out in
                                                   (("merged", args.merged), ("adapter", args.adapter)) if out))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from oss_grpo.rl.config import load_config

    overrides = args.overrides + ([f"output_dir={args.resume}"] if args.resume else [])
    config = load_config(args.config, overrides)
    from oss_grpo.rl.train import train  # heavy imports (torch, trl) only after the config is valid

    run_dir = train(config, resume=args.resume is not None)
    print(f"run folder: {run_dir} (metrics.jsonl, reward_curve.png, final/)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        return run_export(args) if args.command == "export" else run_train(args)
    except OssGrpoError as err:
        print(f"oss-grpo: error: {err}", file=sys.stderr)
        return 2
