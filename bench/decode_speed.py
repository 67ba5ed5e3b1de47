"""Where the rollout time of a gpt-oss-20b-shaped policy goes on one GPU, and whether torch.compile pays (issue #7).

    python bench/decode_speed.py --shape 20b --batch 32 --new-tokens 256 --json decode.json   # on the lent H100
    python bench/decode_speed.py --shape tiny --device cpu --new-tokens 4                     # what the test runs

bench/full_step.py's first H100 run decoded at 7 tokens/s per sequence (batch 32), 40x under the floor that HBM
bandwidth allows. This script says why and measures the fix, on the same model (`bench_model.build_model`, ours: MXFP4
experts, PEFT LoRA r16 on attention and experts, as the step trains it):

    eager     transformers `generate`, static KV cache, no compilation (what the step ran)
    compile   the same with transformers' own compilation of the decode step (torch.compile, mode
              "reduce-overhead": CUDA graphs); warmed up once at the same length, so compiling is not timed
    compile-deferred-stop  the same with transformers' DeferredStopCheck, which reads the stop flag a step late
              instead of synchronising after every token (transformers enables it on mps only)
    graphed   the trainer's compiled decoder (rl/graphed_decode.py, config `compile_generation`): each decode step, the
              seeded draw included, one CUDA graph of Inductor's code, replayed without Python in between; its
              graph recorded at the same length first. Against `compile` in the same process: the same forward
              and cache, the loop around it ours (on a CPU the same loop, eager)
    profile-graphed  `profile` over 64 tokens of the graphed decoder: how much of its wall time the GPU still idles
    profile-graphed-kernels  the same with the compiled step run as it is, not recorded, so that the profiler lists
              each of its kernels (inside a CUDA graph it sees one launch); with `kernel_groups`, GPU ms and launches
              per token by kind of kernel: where a decode token's time goes, what a fusion would save
    compile-fp32-lora  the same with the LoRA factors in float32 while sampling (every part but this one samples
              with them in the model's dtype, as the trainer's generator does: rl/sampling_adapters.py)
    forced    whether the compiled decode computes what eager does: both generate the same random tokens, forced
              by a logits processor, and the model's next-token distributions are compared step by step (sampled
              tokens cannot tell: a random model's distribution is nearly uniform over 201k tokens, so noise of
              bf16 size moves an inverse-CDF draw to another token)
    profile   torch.profiler over a short eager generation: the ops with the most GPU time and the most host time,
              and the GPU's busy fraction (kernel time over wall time): far under 1 means the host is the bottleneck;
              `gpu_idle_fraction` is the share of wall time in which no kernel ran (the union of their intervals)
    profile-compiled  the same over 64 tokens of the compiled decode: which kernels its time goes to
    profile-kernels   the same compiled without CUDA graphs (mode "default"), which the profiler sees as one
              launch: here each of the graph's kernels is listed (Inductor names them after the ops they fuse)
    syncs     host synchronisations per decode step (torch.cuda.set_sync_debug_mode), each with its Python line
    syncs-compiled  the same for the compiled decode (its graphs recorded first): what stalls it between steps
    parity    ours against the bf16 baseline model (same weights) on one random batch, with transformers' bf16 router
              and with our float32 router put into the baseline, and those two baselines against each other: the
              model's own sensitivity to rounding, which the gap between ours and the baseline is judged against

The parity's growth with depth, on the CPU (docs/BENCHMARKS.md):

    python bench/decode_speed.py --device cpu --shape 20b-narrow --layers 6 --parts parity --parity-tokens 256
"""

import argparse
import dataclasses
import json
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.autograd import DeviceType
from transformers import CompileConfig, LogitsProcessor, LogitsProcessorList
from transformers.generation.utils import DeferredStopCheck

from bench_model import SHAPES, Settings, as_policy, build_model, generate, random_ids, warm_up_settings
from oss_grpo.rl.generator import Sampling
from oss_grpo.rl.graphed_decode import decoder_for
from oss_grpo.rl.moe import use_fp32_routers
from oss_grpo.rl.sampling_adapters import adapters_in_model_dtype
from oss_grpo.rl.seeded_sampling import row_uniforms


def graphed_generate(model, prompt_ids: torch.Tensor, settings: Settings) -> torch.Tensor:
    """What `generate` returns, sampled by the model's rl/graphed_decode.py decoder as the generator samples (the
    LoRA factors in the model's dtype), with no stop token: every row runs `new_tokens`."""
    uniforms = row_uniforms(list(range(prompt_ids.shape[0])), settings.new_tokens).to(prompt_ids.device)
    with adapters_in_model_dtype(model):
        tokens, _, _ = decoder_for(model, stop_ids=[]).decode(prompt_ids, torch.ones_like(prompt_ids), uniforms,
                                                              Sampling(max_tokens=settings.new_tokens))
    return torch.cat([prompt_ids, tokens], 1)


def timed_generate(model, prompt_ids: torch.Tensor, settings: Settings, graphed: bool = False,
                   **kwargs) -> tuple[torch.Tensor, float]:
    """`generate` (`kwargs` passed on), or `graphed_generate`, between two device synchronisations: (sequences,
    seconds)."""
    if prompt_ids.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = graphed_generate(model, prompt_ids, settings) if graphed else generate(model, prompt_ids, settings, **kwargs)
    if prompt_ids.is_cuda:
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def speed(model, prompt_ids: torch.Tensor, settings: Settings, graphed: bool = False) -> dict:
    """Tokens/s per sequence of one generation (prefill included) after a warm-up (`warm_up_settings`), seeded, and
    its first 8 tokens."""
    timed_generate(model, prompt_ids, warm_up_settings(settings), graphed)
    torch.manual_seed(settings.seed)
    sequences, seconds = timed_generate(model, prompt_ids, settings, graphed)
    return {"seconds": seconds, "tokens_per_s_per_sequence": settings.new_tokens / seconds,
            "ms_per_token": 1e3 * seconds / settings.new_tokens,
            "first_tokens": sequences[:, prompt_ids.shape[1] : prompt_ids.shape[1] + 8].tolist()}


KERNEL_GROUPS = (
    ("_mxfp4_", "MXFP4 expert GEMMs (ours)"), ("_grouped_", "expert LoRA factors (ours)"), ("_swiglu", "swiglu (ours)"),
    ("triton_", "Inductor's fused kernels"), ("sort", "top-k and sorting"), ("topk", "top-k and sorting"),
    ("radix", "top-k and sorting"), ("nvjet", "cuBLAS"), ("gemm", "cuBLAS"), ("gemv", "cuBLAS"),
    ("splitK", "cuBLAS"), ("cutlass", "cuBLAS"), ("Memcpy", "copies"), ("Memset", "copies"),
)
"""Kernel name fragments (any case: ATen's top-k is `gatherTopK`) and the group each names, first match wins; any
other kernel counts as "other"."""


def kernel_groups(events, tokens: int) -> dict[str, dict[str, float]]:
    """GPU ms and launches per token of each `KERNEL_GROUPS` group, from `key_averages` events, largest first."""
    groups: dict[str, dict[str, float]] = {}
    for e in events:
        if e.device_type != DeviceType.CUDA or e.self_device_time_total <= 0:
            continue
        group = next((g for fragment, g in KERNEL_GROUPS if fragment.lower() in e.key.lower()), "other")
        totals = groups.setdefault(group, {"ms_per_token": 0.0, "launches_per_token": 0.0})
        totals["ms_per_token"] += e.self_device_time_total / 1e3 / tokens
        totals["launches_per_token"] += e.count / tokens
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]["ms_per_token"]))


@contextmanager
def graphs_off(model) -> Iterator[None]:
    """The model's graphed decoder runs its Inductor-compiled step as it is instead of recording it: each kernel is a
    launch of its own, which the profiler lists (a replayed CUDA graph shows as one). Same kernels, other gaps."""
    decoder = decoder_for(model, stop_ids=[])
    decoder._record, decoder.graphs = lambda step: SimpleNamespace(replay=step), {}
    try:
        yield
    finally:
        del decoder._record  # the class's method again
        decoder.graphs = {}


def gpu_busy_seconds(events) -> float:
    """Seconds in which at least one GPU kernel or copy ran: the union of their intervals. Summing the ops' GPU times
    instead counts a CUDA graph's kernels twice (under the graph's entry and on their own), and cannot show the gaps in
    which the GPU waits for the host."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if e.device_type == DeviceType.CUDA and not e.is_user_annotation)
    busy, reached = 0.0, float("-inf")
    for start, end in spans:
        if end > reached:
            busy += end - max(start, reached)
            reached = end
    return busy / 1e6


@contextmanager
def deferred_stop_check() -> Iterator[None]:
    """transformers' `DeferredStopCheck` on any device: `generate` then reads whether every row has stopped one step
    late, from a copy made without blocking, instead of reading `unfinished_sequences.max() == 0` after each token,
    a synchronisation that leaves the GPU idle while the host prepares the next step. transformers enables it on
    Apple's mps devices only ("we should enable it for cuda if we observe perf gains"); this measures that gain."""
    original = DeferredStopCheck.__dict__["is_supported"]
    DeferredStopCheck.is_supported = staticmethod(
        lambda device, cache, cache_is_returned, is_assistant: not is_assistant
        and (cache is None or cache.is_croppable or not cache_is_returned))
    try:
        yield
    finally:
        DeferredStopCheck.is_supported = original


def profile(model, prompt_ids: torch.Tensor, settings: Settings, tokens: int = 8, rows: int = 12, graphed: bool = False,
            **kwargs) -> dict:
    """Top ops by GPU time and by host time over a short generation of `tokens` (eager, or compiled with
    `settings.compile`: compiled and its CUDA graphs recorded at that length first; `graphed`: by `graphed_generate`,
    which `settings.compile` must then be), and the GPU's busy fraction; `kwargs` go to `generate` (a
    `compile_config`)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    short = dataclasses.replace(settings, new_tokens=tokens)
    if short.compile:
        timed_generate(model, prompt_ids, short, graphed, **kwargs)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if prompt_ids.is_cuda else [])
    with torch_profile(activities=activities) as prof:
        _, seconds = timed_generate(model, prompt_ids, short, graphed, **kwargs)
    busy_union = gpu_busy_seconds(prof.events())
    events = prof.key_averages()
    busy = sum(e.self_device_time_total for e in events) / 1e6
    table = {key: [{"op": e.key[:100], "calls": e.count, "self_gpu_ms": e.self_device_time_total / 1e3,
                    "self_cpu_ms": e.self_cpu_time_total / 1e3}
                   for e in sorted(events, key=lambda e: -getattr(e, key))[:rows]]
             for key in ("self_device_time_total", "self_cpu_time_total")}
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    return {"wall_s": seconds, "gpu_busy_s": busy, "busy_fraction": busy / seconds, "gpu_busy_union_s": busy_union,
            "gpu_idle_fraction": 1 - busy_union / seconds, "tokens": short.new_tokens,
            "aten_calls_per_token": ops / short.new_tokens, "kernel_groups": kernel_groups(events, short.new_tokens),
            "by_gpu": table["self_device_time_total"], "by_cpu": table["self_cpu_time_total"]}


def syncs(model, prompt_ids: torch.Tensor, settings: Settings, tokens: int = 3) -> dict:
    """Host synchronisations of a `tokens`-token generation (eager, or compiled with `settings.compile`: compiled and
    its CUDA graphs recorded at that length first), counted by Python line. Each one drains the GPU's queue: the GPU
    then idles while the host prepares and launches the next step."""
    short = dataclasses.replace(settings, new_tokens=tokens)
    if short.compile:
        generate(model, prompt_ids, short)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            generate(model, prompt_ids, short)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    lines: dict[str, int] = {}
    for w in caught:
        if "synchroniz" in str(w.message):
            where = f"{w.filename.split('site-packages/')[-1]}:{w.lineno}"
            lines[where] = lines.get(where, 0) + 1
    return {"tokens": tokens, "syncs": sum(lines.values()),
            "by_line": dict(sorted(lines.items(), key=lambda kv: -kv[1]))}


class ForcedTokens(LogitsProcessor):
    """Makes `generate` emit `tokens[:, t]` at step t whatever the model says, and keeps the model's own
    log-probs for the first `keep` steps: two runs then decode identical inputs, so their distributions compare."""

    def __init__(self, tokens: torch.Tensor, prompt_length: int, keep: int) -> None:
        self.tokens, self.prompt_length, self.keep = tokens, prompt_length, keep
        self.logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        if step < self.keep:
            self.logprobs.append(scores.float().log_softmax(-1))
        return torch.full_like(scores, float("-inf")).scatter_(-1, self.tokens[:, step : step + 1], 0.0)


def forced_logprobs(model, prompt_ids: torch.Tensor, settings: Settings, tokens: torch.Tensor,
                    keep: int) -> torch.Tensor:
    """`[B, keep, V]` next-token log-probs while generating `tokens` `[B, new_tokens]` (eager or compiled)."""
    forced = ForcedTokens(tokens, prompt_ids.shape[1], keep)  # leaves one finite logit: sampling picks that token
    generate(model, prompt_ids, settings, logits_processor=LogitsProcessorList([forced]))
    return torch.stack(forced.logprobs, 1)


def logprob_gap(a: torch.Tensor, b: torch.Tensor, tokens: torch.Tensor) -> dict:
    """Two `[B, T, V]` log-prob sets of the same decoding: the forced tokens' |difference|, KL(a || b) per step
    (mean over the steps, and each of the first 4: step 0 is the prefill), and how often the two argmaxes agree."""
    picked = (a.gather(-1, tokens[..., None]) - b.gather(-1, tokens[..., None])).abs()
    kl = (a.exp() * (a - b)).sum(-1)
    return {"forced_token_gap_mean": picked.mean().item(), "forced_token_gap_max": picked.max().item(),
            "kl_mean": kl.mean().item(), "kl_max": kl.max().item(), "kl_first_steps": kl[:, :4].mean(0).tolist(),
            "argmax_agreement": (a.argmax(-1) == b.argmax(-1)).float().mean().item()}


def compiled_vs_eager(model, prompt_ids: torch.Tensor, settings: Settings, keep: int = 64) -> dict:
    """`logprob_gap` of eager against compiled decoding on the same random tokens (step 0 is the eager prefill in
    both; compilation serves the steps after it), and the yardstick it is judged by: eager against eager decoding of
    the first half of the batch alone, which changes nothing but the GEMM shapes and so the kernels' rounding. A
    random deep MoE turns rounding into visible gaps (docs/BENCHMARKS.md): compiled decoding computes what eager
    does when its gap is the yardstick's size, and is broken when it is far larger."""
    vocab = model.config.vocab_size
    tokens = random_ids(vocab, (prompt_ids.shape[0], settings.new_tokens), torch.Generator().manual_seed(1))
    tokens = tokens.to(prompt_ids.device)
    eager_settings = dataclasses.replace(settings, compile=False)
    eager = forced_logprobs(model, prompt_ids, eager_settings, tokens, keep)
    compiled = forced_logprobs(model, prompt_ids, dataclasses.replace(settings, compile=True), tokens, keep)
    half = max(1, prompt_ids.shape[0] // 2)
    halved = forced_logprobs(model, prompt_ids[:half], eager_settings, tokens[:half], keep)
    return {"steps": eager.shape[1]} | logprob_gap(eager, compiled, tokens[:, :keep]) | {
        "yardstick_eager_half_batch": logprob_gap(eager[:half], halved, tokens[:half, :keep])}


def next_token_logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    """Log-prob of every next token of `ids` [B, L] under `model` (plain logits: one small batch)."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    return torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]


def parity(shape, device: torch.device, tokens: int, seed: int = 0) -> dict:
    """Ours against the baseline on one random batch: log-prob gaps, and how often the routers pick different
    experts for the same (layer-0) input."""
    ids = random_ids(shape.vocab_size, (4, tokens), torch.Generator().manual_seed(seed)).to(device)
    ours = build_model(shape, "ours", device, seed)
    ours_logps = next_token_logprobs(ours, ids)
    hidden = ours.model.layers[0].post_attention_layernorm(ours.model.embed_tokens(ids).view(-1, shape.hidden_size))
    fp32_picks = ours.model.layers[0].mlp.router(hidden)[2]
    del ours
    base = build_model(shape, "baseline", device, seed)
    bf16_picks = base.model.layers[0].mlp.router(hidden)[2]
    gaps = {"bf16_router": next_token_logprobs(base, ids) - ours_logps}
    use_fp32_routers(base)
    gaps["fp32_router"] = next_token_logprobs(base, ids) - ours_logps
    gaps["baseline_bf16_vs_fp32_router"] = gaps["bf16_router"] - gaps["fp32_router"]  # the model's own rounding gap
    same = (fp32_picks.sort(-1).values == bf16_picks.sort(-1).values).all(-1)
    return {"tokens": ids.numel(), "logprob_mean": ours_logps.mean().item(), "logprob_std": ours_logps.std().item(),
            "layer0_expert_sets_differ": 1 - same.float().mean().item()} | {
        f"gap_{name}": {"mean": g.abs().mean().item(), "max": g.abs().max().item()} for name, g in gaps.items()}


def measure_generation(shape, device: torch.device, settings: Settings, parts: list[str], save) -> None:
    """The generation parts on the policy as the step trains it (ours, LoRA on attention and experts)."""
    model = as_policy(build_model(shape, "ours", device), "ours", settings).eval()
    prompt_ids = random_ids(shape.vocab_size, (settings.batch, settings.prompt_tokens),
                            torch.Generator().manual_seed(0)).to(device)
    results = {}
    for part in parts:
        try:
            if part == "eager":
                results[part] = speed(model, prompt_ids, settings)
            elif part == "compile":
                results[part] = speed(model, prompt_ids, dataclasses.replace(settings, compile=True))
            elif part == "compile-deferred-stop" and device.type == "cuda":  # CPU tensors have no events
                with deferred_stop_check():
                    results[part] = speed(model, prompt_ids, dataclasses.replace(settings, compile=True))
            elif part == "graphed":  # warmed up at the full length: the decoder records a graph per shape
                results[part] = speed(model, prompt_ids, dataclasses.replace(settings, compile=True), graphed=True)
            elif part == "profile-graphed":
                results[part] = profile(model, prompt_ids, dataclasses.replace(settings, compile=True), tokens=64,
                                        graphed=True)
            elif part == "profile-graphed-kernels":
                with graphs_off(model):
                    results[part] = profile(model, prompt_ids, dataclasses.replace(settings, compile=True),
                                            tokens=min(64, settings.new_tokens), rows=60, graphed=True)
            elif part == "compile-fp32-lora":  # the baseline of rl/sampling_adapters.py
                # Dynamo does not guard the parameters' dtype (it assumes a module's parameters stay as they are), so
                # a decode compiled with the factors in one dtype is dropped before and after this part.
                torch._dynamo.reset()
                results[part] = speed(model, prompt_ids, dataclasses.replace(settings, compile=True,
                                                                             fp32_sampling_adapters=True))
                torch._dynamo.reset()
            elif part == "forced":
                results[part] = compiled_vs_eager(model, prompt_ids, settings)
            elif part == "profile":
                results[part] = profile(model, prompt_ids, settings)
            elif part == "profile-compiled":  # 64 tokens: the decode steps' kernels outweigh the prefill's
                results[part] = profile(model, prompt_ids, dataclasses.replace(settings, compile=True), tokens=64)
            elif part == "profile-kernels":  # the same compiled without CUDA graphs: the profiler sees each kernel
                results[part] = profile(model, prompt_ids, dataclasses.replace(settings, compile=True), tokens=64,
                                        rows=200, compile_config=CompileConfig(mode="default"))
            elif part == "syncs" and device.type == "cuda":
                results[part] = syncs(model, prompt_ids, dataclasses.replace(settings, compile=False))
            elif part == "syncs-compiled" and device.type == "cuda":
                results[part] = syncs(model, prompt_ids, dataclasses.replace(settings, compile=True), tokens=16)
        except Exception as err:  # a bench part that fails is reported, and the others still run
            results[part] = {"error": f"{type(err).__name__}: {err}"[:2000]}
        if part in results:
            save(part, results[part])
    if "first_tokens" in results.get("eager", {}) and "first_tokens" in results.get("compile", {}):
        rows = zip(results["eager"]["first_tokens"], results["compile"]["first_tokens"])
        save("compile_rows_matching_eager_first_8_tokens", sum(a == b for a, b in rows) / settings.batch)
    if "first_tokens" in results.get("compile-deferred-stop", {}) and "first_tokens" in results.get("compile", {}):
        save("deferred_stop_samples_the_same_tokens",  # same seed, same draws: the check's timing changes nothing else
             results["compile-deferred-stop"]["first_tokens"] == results["compile"]["first_tokens"])
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="20b")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--parity-tokens", type=int, default=512)
    parser.add_argument("--layers", type=int, help="keep the shape but with this many layers (half sliding)")
    parser.add_argument("--parts", default="eager,profile,syncs,compile,forced,parity")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device, shape, parts = torch.device(args.device), SHAPES[args.shape], args.parts.split(",")
    if args.layers:
        shape = dataclasses.replace(shape, num_hidden_layers=args.layers, sliding_layers=args.layers // 2)
    settings = Settings(prompts=args.batch, group=1, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                        micro_batch=args.batch)
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
                    "torch": torch.__version__, "shape": dataclasses.asdict(shape),
                    "settings": dataclasses.asdict(settings)}

    def save(part: str, value: object) -> None:
        report[part] = value
        print(part, json.dumps(value, indent=1)[:3000], flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))

    speed_parts = [p for p in parts if p != "parity"]
    if speed_parts:
        measure_generation(shape, device, settings, speed_parts, save)
    if "parity" in parts:  # after the policy is gone: it builds both full models
        save("parity", parity(shape, device, args.parity_tokens))
    return report


if __name__ == "__main__":
    main()
