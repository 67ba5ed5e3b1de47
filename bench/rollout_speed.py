"""Rollout tokens per second: VllmGenerator against TransformersGenerator, same tiny policy, same prompts, one run.

    python bench/rollout_speed.py [--prompts 8] [--group 8] [--tokens 64] [--repeats 3]

Both sample `prompts x group` completions of exactly `--tokens` tokens (the random tiny model almost never emits a
stop token; rows report the tokens actually produced) from the policy as the trainer holds it: the default tiny
gpt-oss with MXFP4 experts under PEFT LoRA adapters. transformers samples from that module itself; vLLM from its
merged copy. Each backend gets one warm-up call, then `--repeats` timed calls taking turns; the row reports the
median. vLLM's load time (checkpoint export + engine start) is reported apart. Prints a markdown table.
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
    args = parser.parse_args()

    config = TrainConfig(vllm_max_model_len=512)
    policy = get_peft_model(load_policy(config), lora_config(config)).eval()
    prompts = [render_prompt_ids([{"role": "user", "content": f"Board {i}: your move?"}], reasoning_effort="low")
               for i in range(args.prompts) for _ in range(args.group)]
    sampling = Sampling(max_tokens=args.tokens, seed=0)

    from oss_grpo.rl.vllm_generator import VllmGenerator

    start = time.perf_counter()
    backends = {"vllm": VllmGenerator.from_policy(policy, config)}
    load_seconds = time.perf_counter() - start
    backends["transformers"] = TransformersGenerator(policy, stop_token_ids(), harmony_tokenizer().pad_token_id)
    for generator in backends.values():
        timed(generator, prompts[:2], Sampling(max_tokens=4, seed=0))  # warm-up
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in backends}
    for _ in range(args.repeats):
        for name, generator in backends.items():
            runs[name].append(timed(generator, prompts, sampling))

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"threads; {args.prompts} prompts x {args.group} completions x {args.tokens} tokens; "
          f"vLLM load {load_seconds:.1f} s\n")
    print("| backend | median seconds | tokens | tokens/s |\n|---|---|---|---|")
    for name, samples in runs.items():
        seconds = statistics.median(s for s, _ in samples)
        tokens = samples[0][1]
        print(f"| {name} | {seconds:.2f} | {tokens} | {tokens / seconds:.0f} |")


if __name__ == "__main__":
    main()
