"""The `oss-grpo` command (also `python -m oss_grpo`).

    oss-grpo train CONFIG.yaml [--set key=value ...] [--resume DIR]
    oss-grpo eval CONFIG.yaml --checkpoint DIR [--set key=value ...]
    oss-grpo check-plugin NAME [--config CONFIG.yaml] [--set key=value ...] [--max-seconds S]
    oss-grpo export RUN_DIR [--merged OUT] [--adapter OUT] [--dtype bfloat16|float32]
    oss-grpo serve CONFIG.yaml [--set key=value ...] [--host H] [--model-dir DIR] [--print-only] [-- VLLM FLAGS]

A config error, unknown plugin or missing file prints one line naming the key or file and exits with code 2,
before any model is built. `check-plugin` exits 0 when the reward passes every check and 1 with its findings.
"""

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from oss_grpo.rl.errors import OssGrpoError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="oss-grpo", description="GRPO fine-tuning for gpt-oss models.")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a policy with GRPO")
    train.add_argument("config", help="YAML file of options (see docs/CONFIG.md)")
    train.add_argument("--resume", metavar="DIR",
                       help="continue the run in DIR from its newest complete checkpoint (sets output_dir=DIR)")
    evaluate = commands.add_parser("eval", help="evaluate a checkpoint on its environment's held-out tasks")
    evaluate.add_argument("config", help="the run's YAML config (its env, model and eval_* options)")
    evaluate.add_argument("--checkpoint", required=True, metavar="DIR",
                          help="a run's final/ or checkpoint-N/ folder (LoRA adapter)")
    check = commands.add_parser("check-plugin", help="validate a reward plugin (docs/PLUGINS.md)")
    check.add_argument("name", help="registered reward name, pkg.module:fn, path/to/file.py:fn or entry-point name")
    check.add_argument("--config", help="YAML file whose env (and its options) provides the sample tasks")
    check.add_argument("--max-seconds", type=float, default=1.0, help="slowest acceptable time per completion")
    serve = commands.add_parser("serve", help="start the vLLM server a `generator: vllm-server` run samples from",
                                epilog="flags after -- go to vLLM as they are, e.g. -- --tensor-parallel-size 2")
    serve.add_argument("config", help="the run's YAML config (model, dtype, vllm_* options, vllm_server_url's port)")
    serve.add_argument("--host", help="interface to bind (default: the URL's loopback host, else 0.0.0.0)")
    serve.add_argument("--model-dir", help="where the tiny model is written (default: under ~/.cache/oss_grpo)")
    serve.add_argument("--print-only", action="store_true", help="print the vLLM command instead of running it")
    for command in (train, evaluate, check, serve):
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                             help="override one option, e.g. --set max_steps=2 (repeatable)")
    export = commands.add_parser("export", help="write a trained run as a merged checkpoint and/or its adapter")
    export.add_argument("run_dir", help="folder of a finished `oss-grpo train` run (holds config.yaml and final/)")
    export.add_argument("--merged", metavar="OUT",
                        help="Hugging Face checkpoint, every LoRA (attention, experts) merged, experts dequantised")
    export.add_argument("--adapter", metavar="OUT", help="the PEFT adapter alone (attention and expert factors)")
    export.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="dtype of --merged")
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)  # argparse would take vLLM's flags for its own
    args = parser.parse_args(argv[:cut])
    args.vllm_args = argv[cut + 1 :]
    if args.vllm_args and args.command != "serve":
        parser.error("flags after -- are passed to vLLM by `serve` only")
    if args.command == "export" and not (args.merged or args.adapter):
        parser.error("export: give --merged OUT, --adapter OUT or both")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Our progress at INFO, other libraries' only from WARNING (vLLM, once imported, logs its Triton probing at INFO).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("oss_grpo").setLevel(logging.INFO)
    # bitsandbytes (imported by peft under transformers) warns on CPUs with AVX512-BF16 that the optional NF4 GEMM of
    # its AVX512-BF16 path (from the `kernels` package) is missing; rl/nf4.py turns that path off for our layers, and
    # the line would come before our one-line errors on every command.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        if args.command == "check-plugin":
            return check_plugin(args.name, args.config, args.overrides, args.max_seconds)
        if args.command == "eval":
            return evaluate(args.config, args.overrides, args.checkpoint)
        if args.command == "export":
            return export(args.run_dir, args.merged, args.adapter, args.dtype)
        if args.command == "serve":
            return serve(args)
        return train(args.config, args.overrides, args.resume)
    except OssGrpoError as err:
        print(f"oss-grpo: error: {err}", file=sys.stderr)
        return 2


def train(config_path: str, overrides: list[str], resume: str | None) -> int:
    from oss_grpo.rl.config import load_config

    config = load_config(config_path, overrides + ([f"output_dir={resume}"] if resume else []))
    from oss_grpo.rl.data_parallel import process_layout
    from oss_grpo.rl.train import train as run  # heavy imports (torch, trl) only after the config is valid

    run_dir = run(config, resume=resume is not None)
    if process_layout()[0] == 0:  # under accelerate launch, once
        print(f"run folder: {run_dir} (metrics.jsonl, reward_curve.png, samples.md, final/)")
    return 0


def evaluate(config_path: str, overrides: list[str], checkpoint: str) -> int:
    from oss_grpo.rl.config import load_config

    config = load_config(config_path, overrides)
    from oss_grpo.rl.evaluation import evaluate as run, metrics_table  # heavy imports once the config is valid

    metrics, path = run(config, checkpoint)
    print(f"eval of {checkpoint} on {config.env}\n{metrics_table(metrics)}\nwritten to {path}")
    return 0


def export(run_dir: str, merged: str | None, adapter: str | None, dtype: str) -> int:
    import torch

    from oss_grpo.rl.export import export as run

    run(Path(run_dir), merged and Path(merged), adapter and Path(adapter), getattr(torch, dtype))
    print(f"exported {run_dir}: " + ", ".join(f"{kind} -> {out}" for kind, out in
                                              (("merged", merged), ("adapter", adapter)) if out))
    return 0


def serve(args: argparse.Namespace) -> int:
    from oss_grpo.rl.config import load_config

    config = load_config(args.config, args.overrides)
    from oss_grpo.rl.serve import serve as run  # torch only once the config is valid

    run(config, args.model_dir, args.host, args.vllm_args, args.print_only)  # execs vLLM unless --print-only
    return 0


def check_plugin(name: str, config_path: str | None, overrides: list[str], max_seconds: float) -> int:
    """Call the reward on a few tasks of the config's env, print each check's verdict; 0 if all pass, else 1."""
    from oss_grpo.rewards import get
    from oss_grpo.rl.config import load_config

    config = load_config(config_path, overrides)
    fn = get(name)  # an unknown name exits here, before the heavy imports below
    from transformers import TrainerState

    from oss_grpo.rewards.check import CHECKS, check_reward
    from oss_grpo.rl.tasks import task_builder

    dataset, answers = task_builder(config.env)(dataclasses.replace(config, num_tasks=min(config.num_tasks, 4)))
    columns = {key: dataset[key] for key in dataset.column_names if key != "prompt"}
    extras = {"trainer_state": TrainerState(), "log_metric": lambda key, value: None}  # what TRL adds
    findings = check_reward(fn, answers, columns, extras, max_seconds)
    print(f"check-plugin {name} ({fn.__module__}:{getattr(fn, '__qualname__', fn)}) on {config.env} tasks, "
          f"declared range {getattr(fn, 'reward_range', 'none')}")
    failed = {f.check for f in findings}
    for check in CHECKS:
        short = check.__name__.removeprefix("check_")
        skipped = "signature" in failed and short != "signature"  # check_reward stops after a bad signature
        print(f"  {'FAIL' if short in failed else 'skip' if skipped else 'ok':4}  {short}")
        for finding in (f for f in findings if f.check == short):
            print(f"        {finding.message}")
    print(f"{len(findings)} finding(s)" if findings else "all checks passed")
    return 1 if findings else 0
