"""One full GRPO step of a gpt-oss-shaped model on one GPU: ours (MXFP4 experts) against the bf16 baseline, same run.

Run on a CUDA machine from the repo root (on the lent GPU `source bench/gpu_env.sh` first: it installs TRL there):

    python bench/full_step.py --shape 20b --mode both --json full_step.json
    python bench/full_step.py --shape 120b --mode ours     # load, generate, one short step (or per-part memory + OOM)
    python bench/full_step.py --shape tiny --device cpu    # the CPU smoke run that tests/test_full_step.py makes

The model has the released configuration (`RELEASED` in rl/memory.py: 24 or 36 layers, hidden 2880, 64 query / 8 KV
heads of 64, 32 or 128 experts top-4, vocabulary 201,088, sliding window 128 on alternate layers, sinks) and random
weights made on the device: nothing is downloaded (bench/bench_model.py builds it). Two modes with the same weights,
batch and step, one after the other in one process (each model is freed before the next is built, so each peak is
its own): `ours` (MXFP4 experts, our kernels, LoRA on attention and experts) and `baseline`, what a TRL + PEFT user
runs today (bf16 experts, LoRA on them through PEFT `target_parameters`); bench_model's docstring says more.

Attention, embeddings and LM head are bf16 in both, or with --load-in-4bit the attention projections NF4 in both
(rl/nf4.py, before LoRA is attached); --optim adamw_8bit gives both bitsandbytes' 8-bit AdamW. Attention is
transformers' eager implementation (the one with sinks that is there without the kernel hub): as it is in the baseline,
in query chunks in ours (rl/attention.py: the same values, 0.76 GiB less at the batched prefill). Ours also runs its
experts in passes of at most 1,024 tokens (rl/moe.py), and with --offload-embedding keeps its input embedding table
in host RAM (rl/host_embedding.py; 1.08 GiB), which TRL + PEFT do not offer the baseline.

The step (`grpo_step`). Each phase runs between device synchronisations and records its seconds and its own peak
memory (max_memory_allocated, reset at its start; for micro-batched phases the max over micro-batches):

    generation     transformers `generate`: prompts x group sequences at once, static KV cache, sampling at T=1, exactly
                   --new-tokens tokens (the config has no stop token); torch.compile + CUDA graphs only with --compile
    old_logprobs   the completions' log-probs under the policy, no grad (TRL recomputes them for num_iterations > 1
                   and for vLLM's importance-sampling correction)
    ref_logprobs   the same with the adapters disabled: the KL reference is the policy itself, no second copy
    loss           forward with gradient checkpointing, then the GRPO loss (`grpo_loss`), per micro-batch
    backward       loss.backward(), gradients accumulated over the micro-batches
    optimizer      grad-norm clip at 1.0 and an AdamW step on the LoRA parameters

Log-probs come from TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`, which GRPOTrainer itself installs):
tiles of 4,096 tokens x 32,768 vocabulary columns, recomputed in backward, so [tokens, 201,088] fp32 logits never
exist (tests/test_full_step.py holds it against the full-logits computation, values and gradients). On CUDA a
warm-up step with 2 new tokens runs first, so Triton's compilation stays out of the timings.

Printed: a markdown table (seconds and peak GiB per phase and mode), decode tokens/s per sequence at the step's batch
next to its memory floor (bytes one decode step must read from HBM, over --hbm-tbs), and the bytes by part (experts,
dense, LoRA, optimizer). --json writes all of it, rewritten after each mode so a run cut short keeps what finished.
With --mode both the baseline also scores ours' sampled sequences with its adapters off (untimed): the two modes hold
the same base weights, so those reference log-probs differ by rounding alone, and `router_gaps` sizes that rounding
(a random 24-layer MoE amplifies it: the first H100 run found gaps of ~0.7 nats in both, docs/BENCHMARKS.md).
"""

import argparse
import dataclasses
import gc
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from peft import PeftModel

from bench_model import (DEFAULTS, SHAPES, Settings, as_policy, build_model, bytes_by_part, float_expert_tensors,
                         generate, random_ids, warm_up_settings)
from oss_grpo.rl.memory import GIB, MXFP4_BITS, ModelShape, param_counts
from oss_grpo.rl import moe
from oss_grpo.rl.moe import use_fp32_routers


@dataclass
class Phase:
    seconds: float = 0.0
    peak_bytes: int | None = None
    """max_memory_allocated over the phase (None on CPU)."""


@dataclass
class Phases:
    """Seconds and peak memory per named phase; a phase measured several times (micro-batches) adds up its seconds."""

    device: torch.device
    phases: dict[str, Phase] = field(default_factory=dict)
    current: str | None = None

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.current, start = name, time.perf_counter()
        yield
        if cuda:
            torch.cuda.synchronize()
        phase = self.phases.setdefault(name, Phase())
        phase.seconds += time.perf_counter() - start
        if cuda:
            phase.peak_bytes = max(phase.peak_bytes or 0, torch.cuda.max_memory_allocated())
        self.current = None


def completion_logprobs(model: PeftModel, sequences: torch.Tensor, completion_tokens: int,
                        micro_batch: int) -> torch.Tensor:
    """`[B, L]` -> `[B, completion_tokens]` log-probs of the last tokens, through TRL's fused LM head, as TRL's
    `_get_per_token_logps_and_entropies` does it (labels -100 on the prompt)."""
    pieces = []
    for start in range(0, sequences.shape[0], micro_batch):
        ids = sequences[start : start + micro_batch]
        labels = ids.clone()
        labels[:, :-completion_tokens] = -100
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True)
        pieces.append(out.log_probs[:, -completion_tokens:])
    return torch.cat(pieces)


def group_advantages(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """TRL's default (scale_rewards="group"): reward minus its group's mean, over the group's std + 1e-4."""
    grouped = rewards.view(-1, group)
    advantages = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)
    return advantages.flatten()


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, epsilon: float, beta: float, num_tokens: float) -> torch.Tensor:
    """TRL 1.16 GRPOTrainer._compute_loss for loss_type="dapo", token-level ratios, symmetric clip, k3 KL. It is a
    trainer method, not an importable function, hence these lines; `num_tokens` counts the whole batch's completion
    tokens, so the micro-batches' losses add up to the batch's loss."""
    ratio = torch.exp(logps - old_logps)  # (B, T)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    adv = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * adv, clipped * adv)
    if beta:
        per_token = per_token + beta * (torch.exp(ref_logps - logps) - (ref_logps - logps) - 1)
    return (per_token * mask).sum() / num_tokens


def grpo_step(model: PeftModel, optimizer: torch.optim.Optimizer, settings: Settings, vocab: int,
              phases: Phases) -> dict:
    """One GRPO step on random prompts and random rewards; returns the loss, the grad norm, and (as tensors on the
    CPU) the sampled sequences with their reference log-probs, for the other mode to score."""
    device = phases.device
    cpu = torch.Generator().manual_seed(settings.seed)
    prompts = random_ids(vocab, (settings.prompts, settings.prompt_tokens), cpu)
    prompt_ids = prompts.repeat_interleave(settings.group, dim=0).to(device)  # (B, P): a group per prompt
    model.eval()
    torch.manual_seed(settings.seed)
    with torch.no_grad(), phases.measure("generation"):
        sequences = generate(model, prompt_ids, settings)
    new = sequences.shape[1] - settings.prompt_tokens
    mask = torch.ones(settings.batch, new, device=device)  # no stop token: every position is a completion token
    with torch.no_grad(), phases.measure("old_logprobs"):
        old = completion_logprobs(model, sequences, new, settings.micro_batch)
    with torch.no_grad(), model.disable_adapter(), phases.measure("ref_logprobs"):
        ref = completion_logprobs(model, sequences, new, settings.micro_batch)
    advantages = group_advantages(torch.randn(settings.batch, generator=cpu), settings.group).to(device)
    model.train()
    loss_sum = 0.0
    for start in range(0, settings.batch, settings.micro_batch):
        rows = slice(start, start + settings.micro_batch)
        with phases.measure("loss"):
            logps = completion_logprobs(model, sequences[rows], new, settings.micro_batch)
            loss = grpo_loss(logps, old[rows], ref[rows], advantages[rows], mask[rows], settings.epsilon,
                             settings.beta, float(mask.sum()))
        with phases.measure("backward"):
            loss.backward()
        loss_sum += loss.item()
    params = [p for p in model.parameters() if p.requires_grad]
    with phases.measure("optimizer"):
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return dict(loss=loss_sum, grad_norm=float(grad_norm), new_tokens=new, sequences=sequences.cpu(),
                ref_logprobs=ref.float().cpu())


def weights_estimate(shape: ModelShape, mode: str) -> float:
    """Bytes of the model's weights before LoRA: experts at 4.25 bits (ours) or bf16 (baseline), the rest bf16."""
    counts = param_counts(shape)
    return counts.experts * (MXFP4_BITS / 8 if mode == "ours" else 2) + counts.dense * 2


def decode_floor(shape: ModelShape, parts: dict[str, int], settings: Settings, hbm_bytes_per_s: float) -> dict:
    """Decode tokens/s per sequence that the bytes one decode step must read allow, at the mean context length.

    `experts_kv`: every expert's weights (at batch 32 x top-4 nearly all experts are routed to) plus the KV cache the
    batch attends to (sliding layers at most the window). `all_weights_kv` adds everything else read per step:
    attention, router, norms, LM head and LoRA factors (not the embedding table, of which one row per token is read).
    """
    context = settings.prompt_tokens + settings.new_tokens / 2
    kv_position = 2 * shape.num_key_value_heads * shape.head_dim * 2  # bf16 K and V of one layer
    full_layers = shape.num_hidden_layers - shape.sliding_layers
    kv = settings.batch * kv_position * (full_layers * context + shape.sliding_layers * min(context, shape.sliding_window))
    dense_read = parts["dense"] + parts["lora"]
    step = {"experts_kv": parts["experts"] + kv, "all_weights_kv": parts["experts"] + kv + dense_read}
    return {name: hbm_bytes_per_s / nbytes for name, nbytes in step.items()} | {"kv_bytes": kv}


def make_optimizer(params: list[torch.nn.Parameter], settings: Settings) -> torch.optim.Optimizer:
    if settings.optim == "adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=settings.learning_rate)
    return torch.optim.AdamW(params, lr=settings.learning_rate)


def router_gaps(policy: PeftModel, ours: dict, bf16_router_ref: torch.Tensor, new_tokens: int,
                micro_batch: int, device: torch.device) -> dict:
    """Score ours' sequences again with the baseline's routers in float32 (as ours), adapters off.

    The two numbers size the log-prob gap between the modes: `ref_logprob_diff_vs_ours_fp32_router` leaves only the
    expert arithmetic different (our kernels against transformers' bf16 matmuls); `router_bf16_vs_fp32_gap` is the
    gap between two roundings of the baseline's own router, the same model computed two legitimate ways. A random
    24-layer MoE amplifies rounding (a different top-4 in one layer changes the rest), so the first gap is judged
    against the second, not against zero.
    """
    use_fp32_routers(policy.get_base_model())
    with torch.no_grad(), policy.disable_adapter():
        ref = completion_logprobs(policy, ours["sequences"].to(device), new_tokens, micro_batch).float().cpu()
    gaps = {"ref_logprob_diff_vs_ours_fp32_router": ref - ours["ref_logprobs"],
            "router_bf16_vs_fp32_gap": ref - bf16_router_ref}
    return {name: {"mean": g.abs().mean().item(), "max": g.abs().max().item()} for name, g in gaps.items()}


def lora_b_sums(model: torch.nn.Module) -> dict[str, float]:
    """A float64 sum per LoRA B factor: enough to tell which factors a step moved, without copying them."""
    return {name: torch.sum(p.detach(), dtype=torch.float64).item()
            for name, p in model.named_parameters() if "lora_B" in name}


def run_mode(shape: ModelShape, mode: str, settings: Settings, device: torch.device, hbm_tbs: float,
             earlier: dict | None = None) -> dict:
    """Build `mode`'s model, a warm-up step on CUDA (2 new tokens: Triton compiles there; on the CPU nothing is
    compiled), the timed step; a dict of everything measured.

    With `earlier` (the other mode's result), its sequences are scored here too with the adapters off: both modes
    hold the same base weights, so the reference log-probs must agree to bf16 noise (untimed; a correctness check of
    the MXFP4 path at full size).
    """
    result: dict = {"mode": mode, "weights_estimate_gib": weights_estimate(shape, mode) / GIB}
    # The baseline samples as TRL + PEFT do, with its float32 LoRA factors; ours as our generator does, with bf16
    # copies of attention's (rl/sampling_adapters.py).
    settings = dataclasses.replace(settings, fp32_sampling_adapters=mode == "baseline")
    if device.type == "cuda" and weights_estimate(shape, mode) > torch.cuda.get_device_properties(device).total_memory:
        result["skipped"] = f"weights alone need {result['weights_estimate_gib']:.1f} GiB: more than this GPU holds"
        return result
    phases = Phases(device)
    try:
        with phases.measure("build"):
            policy = as_policy(build_model(shape, mode, device, settings.seed), mode, settings)
        result["parts"] = bytes_by_part(policy)
        result["float_expert_tensors"] = len(float_expert_tensors(policy, shape))
        trainable = [p for p in policy.parameters() if p.requires_grad]
        result["lora_params"] = sum(p.numel() for p in trainable)
        result["lora_dtypes"] = sorted({str(p.dtype) for p in trainable})
        optimizer = make_optimizer(trainable, settings)
        if device.type == "cuda":
            with phases.measure("warm-up"):
                grpo_step(policy, optimizer, warm_up_settings(settings), shape.vocab_size, Phases(device))
        before = lora_b_sums(policy)
        result.update(grpo_step(policy, optimizer, settings, shape.vocab_size, phases))
        if earlier and "sequences" in earlier:
            policy.eval()
            with torch.no_grad(), policy.disable_adapter():
                ref = completion_logprobs(policy, earlier["sequences"].to(device), result["new_tokens"],
                                          settings.micro_batch).float().cpu()
            diff = (ref - earlier["ref_logprobs"]).abs()
            result[f"ref_logprob_diff_vs_{earlier['mode']}"] = {"mean": diff.mean().item(), "max": diff.max().item()}
            if mode == "baseline":
                result.update(router_gaps(policy, earlier, ref, result["new_tokens"], settings.micro_batch, device))
        after = lora_b_sums(policy)
        result["lora_b_factors"] = len(before)
        result["expert_lora_b_factors"] = sum(".experts." in name for name in before)
        result["lora_b_unchanged_by_step"] = [name for name in before if before[name] == after[name]]
        result["optimizer_state_bytes"] = sum(t.numel() * t.element_size() for state in optimizer.state.values()
                                              for t in state.values() if torch.is_tensor(t))
    except torch.OutOfMemoryError as err:
        result["oom"] = f"in {phases.current}: {str(err).splitlines()[0]}"
        if device.type == "cuda":
            result["allocated_at_oom_gib"] = torch.cuda.memory_allocated() / GIB
    result["phases"] = {name: dataclasses.asdict(p) for name, p in phases.phases.items()}
    if "generation" in phases.phases and "parts" in result:
        result["decode_tokens_per_s_per_sequence"] = settings.new_tokens / phases.phases["generation"].seconds
        result["decode_floor"] = decode_floor(shape, result["parts"], settings, hbm_tbs * 1e12)
    return result


STEP = ("generation", "old_logprobs", "ref_logprobs", "loss", "backward", "optimizer")


def markdown(report: dict) -> str:
    """The report as a markdown table (phases x modes) and a few lines per mode."""
    modes = report["modes"]
    s = report["settings"]
    lines = [f"{report['device']}; torch {report['versions']['torch']}, transformers {report['versions']['transformers']},"
             f" trl {report['versions']['trl']}; gpt-oss-{report['shape']} shape, random weights; {s['prompts']} prompts"
             f" x {s['group']} completions, {s['prompt_tokens']} prompt + {s['new_tokens']} new tokens, micro-batch"
             f" {s['micro_batch']}, LoRA r{s['rank']} (experts: {s['lora_experts']}), beta {s['beta']}"
             f", compile {s['compile']}, optimizer {s['optim']}, NF4 attention {s['load_in_4bit']}, ours' input"
             f" embedding in host RAM {s['offload_embedding']}", "",
             "| phase | " + " | ".join(f"{m} s | {m} peak GiB" for m in modes) + " |",
             "|---|" + "---:|---:|" * len(modes)]
    for name in ("build", "warm-up", *STEP, "step"):
        cells = []
        for result in modes.values():
            phases = result.get("phases", {})
            if name == "step" and all(p in phases for p in STEP):
                seconds = sum(phases[p]["seconds"] for p in STEP)
                peaks = [phases[p]["peak_bytes"] for p in STEP]
                peak = max(peaks) if None not in peaks else None
            elif name in phases:
                seconds, peak = phases[name]["seconds"], phases[name]["peak_bytes"]
            else:
                cells.append("- | -")
                continue
            cells.append(f"{seconds:.2f} | " + ("-" if peak is None else f"{peak / GIB:.2f}"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    for mode, r in modes.items():
        if "skipped" in r or "oom" in r:
            lines.append(f"- {mode}: {r.get('skipped') or 'OUT OF MEMORY ' + r['oom']}")
        if "parts" in r:
            parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in r["parts"].items())
            lines.append(f"- {mode}: weights GiB: {parts}; {r['lora_params'] / 1e6:.1f}M LoRA params"
                         f" {'/'.join(r['lora_dtypes'])}; float expert stacks: {r['float_expert_tensors']}")
        if "lora_b_factors" in r:
            moved = r["lora_b_factors"] - len(r["lora_b_unchanged_by_step"])
            lines.append(f"- {mode}: LoRA B factors the step moved: {moved} of {r['lora_b_factors']}"
                         f" ({r['expert_lora_b_factors']} on experts)")
        for key in [k for k in r if k.startswith("ref_logprob_diff_vs_") or k == "router_bf16_vs_fp32_gap"]:
            lines.append(f"- {mode}: reference log-probs {key}: |difference| mean {r[key]['mean']:.2g},"
                         f" max {r[key]['max']:.2g} (same base weights)")
        if "loss" in r:
            lines.append(f"- {mode}: loss {r['loss']:.4g}, grad norm {r['grad_norm']:.4g}, optimizer state"
                         f" {r['optimizer_state_bytes'] / GIB:.2f} GiB")
        if "decode_floor" in r:
            floor = r["decode_floor"]
            lines.append(f"- {mode}: decode {r['decode_tokens_per_s_per_sequence']:.1f} tokens/s per sequence at batch"
                         f" {s['prompts'] * s['group']} (generation phase incl. prefill); memory floor at"
                         f" {report['hbm_tbs']} TB/s: {floor['experts_kv']:.0f} (experts + KV),"
                         f" {floor['all_weights_kv']:.0f} (all weights + KV)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="20b")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", choices=["ours", "baseline", "both"], default="both")
    for name in DEFAULTS["20b"]:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help="default: per shape, see DEFAULTS")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--no-lora-experts", dest="lora_experts", action="store_false", help="LoRA on attention only")
    parser.add_argument("--compile", action="store_true", help="let generate torch.compile the decode (CUDA graphs)")
    parser.add_argument("--optim", choices=["adamw", "adamw_8bit"], default="adamw")
    parser.add_argument("--load-in-4bit", action="store_true", help="NF4 attention projections (bitsandbytes)")
    parser.add_argument("--offload-embedding", action="store_true", help="ours: input embedding table in host RAM")
    parser.add_argument("--moe-pass-tokens", type=int, default=moe.TOKENS_PER_PASS,
                        help="ours: most tokens the experts take in one pass (rl/moe.py)")
    parser.add_argument("--hbm-tbs", type=float, default=3.35, help="HBM bandwidth for the floor (H100 SXM: 3.35)")
    parser.add_argument("--json", type=Path, help="write the report here (rewritten after each mode)")
    args = parser.parse_args(argv)
    moe.TOKENS_PER_PASS = args.moe_pass_tokens
    given = {name: getattr(args, name) for name in DEFAULTS[args.shape] if getattr(args, name) is not None}
    settings = Settings(**(DEFAULTS[args.shape] | given), rank=args.rank, lora_experts=args.lora_experts,
                        compile=args.compile, optim=args.optim, load_in_4bit=args.load_in_4bit,
                        offload_embedding=args.offload_embedding)
    device = torch.device(args.device)
    import trl

    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "shape": args.shape, "settings": dataclasses.asdict(settings), "hbm_tbs": args.hbm_tbs, "modes": {},
    }
    earlier = None
    for mode in ["ours", "baseline"] if args.mode == "both" else [args.mode]:
        result = run_mode(SHAPES[args.shape], mode, settings, device, args.hbm_tbs, earlier)
        earlier = result.copy()
        for tensors in ("sequences", "ref_logprobs"):
            result.pop(tensors, None)
        report["modes"][mode] = result
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
        print(markdown(report), flush=True)
    return report


if __name__ == "__main__":
    main()
