"""Rollout tokens per second: VllmGenerator against TransformersGenerator, same tiny policy, same prompts, one run.

    python bench/rollout_speed.py [--prompts 8] [--group 8] [--tokens 64] [--repeats 3]
    python bench/rollout_speed.py --backends transformers,transformers-compiled     # a GPU without vLLM

Both sample `prompts x group` completions of exactly `--tokens` tokens (the random tiny model almost never emits a
stop token; rows report the tokens actually produced) from the policy as the trainer holds it: the default tiny
gpt-oss with MXFP4 experts under PEFT LoRA adapters. transformers samples from that module itself; vLLM from its
merged copy; `transformers-compiled` is TransformersGenerator with `compiled` (config `compile_generation`: a static
cache, compiled by transformers on a GPU). Each backend gets one warm-up call (the compiled one at the timed calls'
shapes, which it compiles for), then `--repeats` timed calls taking turns; the row reports the median. vLLM's load
time (checkpoint export + engine start) is reported apart. Prints a markdown table.
"""

import argparse
import platform
import statistics
import time

import torch
from peft import get_peft_model

from oss_grpo.rl.config import TrainConfig
from oss_grpo.rl.generator import Generator, Sampling
from oss_grpo.rl.harmony import harmony_tokenizer, render_prompt_ids, stop_token_ids
from oss_grpo.rl.hf_generator import TransformersGenerator
from oss_grpo.rl.policy import load_policy, lora_config


def timed(generator: Generator, prompts: list[list[int]], sampling: Sampling) -> tuple[float, int]:
    start = time.perf_counter()
    completions = generator.generate(prompts, sampling)
    return time.perf_counter() - start, sum(len(c.completion_ids) for c in completions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", default="vllm,transformers",
                        help="comma-separated: vllm, transformers, transformers-compiled")
    args = parser.parse_args()
    names = args.backends.split(",")

    config = TrainConfig(vllm_max_model_len=512)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where the trainer would hold it
    policy = get_peft_model(load_policy(config), lora_config(config)).to(device).eval()
    prompts = [render_prompt_ids([{"role": "user", "content": f"Board {i}: your move?"}], reasoning_effort="low")
               for i in range(args.prompts) for _ in range(args.group)]
    sampling = Sampling(max_tokens=args.tokens, seed=0)

    backends: dict[str, Generator] = {}
    load_seconds = 0.0
    if "vllm" in names:
        from oss_grpo.rl.vllm_generator import VllmGenerator

        start = time.perf_counter()
        backends["vllm"] = VllmGenerator.from_policy(policy, config)
        load_seconds = time.perf_counter() - start
    pad_id = harmony_tokenizer().pad_token_id
    if "transformers" in names:
        backends["transformers"] = TransformersGenerator(policy, stop_token_ids(), pad_id)
    if "transformers-compiled" in names:
        backends["transformers-compiled"] = TransformersGenerator(policy, stop_token_ids(), pad_id,
                                                                  batch_size=len(prompts), compiled=True)
    for name, generator in backends.items():  # warm-up; the compiled decode is made for the timed shapes
        compiled = name == "transformers-compiled"
        timed(generator, prompts if compiled else prompts[:2], sampling if compiled else Sampling(max_tokens=4, seed=0))
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in backends}
    for _ in range(args.repeats):
        for name, generator in backends.items():
            runs[name].append(timed(generator, prompts, sampling))

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"threads; {args.prompts} prompts x {args.group} completions x {args.tokens} tokens; "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; vLLM load {load_seconds:.1f} s\n")
    print("| backend | median seconds | tokens | tokens/s |\n|---|---|---|---|")
    for name, samples in runs.items():
        seconds = statistics.median(s for s, _ in samples)
        tokens = samples[0][1]
        print(f"| {name} | {seconds:.2f} | {tokens} | {tokens / seconds:.0f} |")


if __name__ == "__main__":
    main()
