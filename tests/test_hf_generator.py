"""TransformersGenerator's sampling: each completion from its own seeded stream, drawn from the processed distribution."""

import warnings

import pytest
import torch
from peft import LoraConfig, get_peft_model

from oss_grpo.rl.errors import GeneratorError
from oss_grpo.rl.generator import Sampling
from oss_grpo.rl.graphed_decode import CHECK_EVERY, GraphedDecoder, GraphRecordingError
from oss_grpo.rl.harmony import harmony_tokenizer, render_prompt_ids, stop_token_ids
from oss_grpo.rl.hf_generator import WIDTH_STEP, TransformersGenerator
from oss_grpo.rl.moe import swap_experts
from oss_grpo.rl.moe_lora import with_expert_lora
from oss_grpo.rl.seeded_sampling import SeededRowSampling, row_uniforms
from oss_grpo.rl.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def generator() -> TransformersGenerator:
    return TransformersGenerator(build_tiny_model(seed=3), stop_token_ids(), harmony_tokenizer().pad_token_id)


def test_a_completion_depends_on_its_seed_not_on_its_batch(generator: TransformersGenerator) -> None:
    """What lets N processes sample what one does: the same prompt and seed give the same completion whichever
    prompts share the batch (here of other lengths, so the left padding differs too) and however it is chunked."""
    prompts = [render_prompt_ids([{"role": "user", "content": text}], reasoning_effort="low")
               for text in ("Your move?", "Board: 2 4 8 16, your move?", "Hi")]
    whole = generator.generate(prompts, Sampling(max_tokens=6, seed=10))
    tail = generator.generate(prompts[1:], Sampling(max_tokens=6, seed=11))
    alone = generator.generate(prompts[2:], Sampling(max_tokens=6, seed=(12,)))
    generator.batch_size = 1
    chunked = generator.generate(prompts, Sampling(max_tokens=6, seed=10))
    generator.batch_size = 64
    for got, expected in ((tail, whole[1:]), (alone, whole[2:]), (chunked, whole)):
        assert [c.completion_ids for c in got] == [c.completion_ids for c in expected]
        for a, b in zip(got, expected):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    again = generator.generate(prompts, Sampling(max_tokens=6, seed=20))
    assert [c.completion_ids for c in again] != [c.completion_ids for c in whole]  # the seed does matter


def test_the_graphed_decoder_samples_what_generate_does(generator: TransformersGenerator, monkeypatch) -> None:
    """`compiled` (config compile_generation) decodes with rl/graphed_decode.py (its own masks, positions and cache
    bookkeeping; a CUDA graph per step on a GPU, the same step run eagerly here) over prompts padded to WIDTH_STEP
    tokens and rows padded to `batch_size`: it must sample exactly what `generate` does, warpers included, with its
    buffers reused by the second call. The prompts' padding reaches into the sliding window (32 tokens) of the
    first steps, for one row to its last slot."""
    prompts = [list(range(100, 105)), list(range(200, 296)), list(range(300, 400))]
    samplings = (Sampling(max_tokens=40, seed=10),
                 Sampling(max_tokens=40, seed=3, temperature=0.7, top_k=50, top_p=0.9))
    plain = [generator.generate(prompts, sampling) for sampling in samplings]
    compiled = TransformersGenerator(generator.model, generator.stop_ids, generator.pad_id, batch_size=5,
                                     compiled=True)
    steps = []
    real_step = compiled.decoder._decode_step
    monkeypatch.setattr(compiled.decoder, "_decode_step", lambda warps: steps.append(1) or real_step(warps))
    monkeypatch.setattr(generator.model, "generate", lambda **kwargs: pytest.fail("generate was called"))
    for sampling, expected in zip(samplings, plain):
        steps.clear()
        got = compiled.generate(prompts, sampling)
        assert len(steps) == 39 and compiled.decoder.shape == (5, WIDTH_STEP, 40)
        assert [c.completion_ids for c in got] == [c.completion_ids for c in expected]
        for a, b in zip(got, expected):
            assert a.prompt_ids == b.prompt_ids and a.finish_reason == b.finish_reason
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_a_decoder_that_cannot_record_falls_back_to_compiled_generate(generator: TransformersGenerator,
                                                                      monkeypatch) -> None:
    """Where the decode step cannot be compiled or recorded (a model or GPU the decoder was not checked on), the
    generator warns once and decodes with transformers' `generate` over a static cache (compiled on a GPU) from then
    on, as do later generators on the model: the same samples, no crash in the middle of a run."""
    prompts = [list(range(100, 105)), list(range(200, 296))]
    plain = generator.generate(prompts, Sampling(max_tokens=8, seed=4))
    compiled = TransformersGenerator(generator.model, generator.stop_ids, generator.pad_id, batch_size=3,
                                     compiled=True)

    def fail(*args):  # what the decoder does when recording its graph fails
        error = GraphRecordingError("recording the decode step as a CUDA graph failed: BackendCompilerFailed: ...")
        monkeypatch.setattr(compiled.decoder, "recording_error", error)  # undone after: the model's shared decoder
        raise error

    monkeypatch.setattr(compiled.decoder, "decode", fail)
    caches = []
    real_generate = generator.model.generate
    monkeypatch.setattr(generator.model, "generate", lambda **kwargs: caches.append(
        kwargs["generation_config"].cache_implementation) or real_generate(**kwargs))
    with pytest.warns(UserWarning, match="CUDA graph failed: BackendCompilerFailed.*compiled `generate` from now on"):
        got = compiled.generate(prompts, Sampling(max_tokens=8, seed=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: a later generator on the model (the next step's) goes straight on
        again = TransformersGenerator(generator.model, generator.stop_ids, generator.pad_id, batch_size=3,
                                      compiled=True).generate(prompts, Sampling(max_tokens=8, seed=4))
    assert caches == ["static", "static"]
    for completions in (got, again):
        assert [c.completion_ids for c in completions] == [c.completion_ids for c in plain]


def test_the_graphed_decoder_stops_once_every_row_has(generator: TransformersGenerator) -> None:
    """Every token a stop token: each row stops at its first, and the decoder reads the stop flags (one wait for the
    GPU each) every CHECK_EVERY steps, so it stops there, not after all 40."""
    decoder = GraphedDecoder(generator.model, stop_ids=list(range(generator.model.config.vocab_size)))
    steps = []
    real_step = decoder._decode_step
    decoder._decode_step = lambda warps: steps.append(1) or real_step(warps)
    prompts = torch.arange(2 * WIDTH_STEP).view(2, WIDTH_STEP)
    tokens, logprobs, broken = decoder.decode(prompts, torch.ones_like(prompts), row_uniforms([1, 2], 40),
                                              Sampling(max_tokens=40))
    assert len(steps) == CHECK_EVERY and bool(decoder.buffers.done.all()) and not broken.any()
    assert tokens.shape == logprobs.shape == (2, 40)


MODES = ["cpu", "cpu-inductor"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("mode", MODES)
def test_the_graphed_decoder_logprobs_are_the_full_forwards(mode: str, monkeypatch) -> None:
    """What the trainer relies on: each sampled token's logprob is the one a plain forward over the whole sequence
    gives it (to float32 rounding). On a GPU the decode steps are an Inductor-compiled CUDA graph over the MXFP4
    experts' Triton kernels, recorded once and replayed: stale masks, positions or cache slots in the graph would
    show here as other logprobs. `cpu-inductor` compiles the step as the GPU does (Dynamo's tracing and graph breaks,
    Inductor's code for the CPU), without the graph, and with transformers' experts: ours run the Triton interpreter
    on a CPU, which Dynamo cannot trace. Left padding reaches into the first steps' sliding window."""
    device = mode.split("-")[0]
    model = build_tiny_model(seed=5)
    model = (model if mode == "cpu-inductor" else swap_experts(model)).to(device).eval()
    decoder = GraphedDecoder(model, stop_ids=[])
    if mode == "cpu-inductor":
        monkeypatch.setattr(decoder, "_decode_step", torch.compile(decoder._decode_step))
    lengths, width, new = [3, 60, 128], WIDTH_STEP, 48
    prompts = torch.stack([torch.cat([torch.zeros(width - n, dtype=torch.long), torch.arange(1000, 1000 + n)])
                           for n in lengths]).to(device)
    mask = (torch.arange(width)[None, :] >= width - torch.tensor(lengths)[:, None]).long().to(device)
    for seeds in ([1, 2, 3], [4, 5, 6]):  # the second call replays the graph recorded in the first
        tokens, logprobs, _ = decoder.decode(prompts, mask, row_uniforms(seeds, new).to(device), Sampling())
        ids, full_mask = torch.cat([prompts, tokens], 1), torch.cat([mask, torch.ones_like(tokens)], 1)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=full_mask,
                           position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits.float()
        expected = logits[:, width - 1 : -1].log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
        torch.testing.assert_close(logprobs, expected, atol=1e-4, rtol=0)


def test_seeded_rows_draw_from_the_processed_distribution() -> None:
    """4,000 rows over the same 5 scores, one seed each: frequencies follow the softmax, a masked token is never
    drawn, and the kept logprob is that of the drawn token; the output leaves one token for generate's argmax."""
    scores = torch.tensor([[1.0, 0.0, float("-inf"), 2.0, -1.0]]).repeat(4000, 1)
    sampler = SeededRowSampling(row_uniforms(list(range(4000)), steps=1), prompt_length=7)
    out = sampler(torch.zeros(4000, 7, dtype=torch.long), scores)
    drawn = out.argmax(-1)
    assert torch.all(out.isfinite().sum(-1) == 1) and torch.all(out.gather(-1, drawn[:, None]) == 0)
    frequencies = torch.bincount(drawn, minlength=5) / 4000
    torch.testing.assert_close(frequencies, scores[0].softmax(-1), atol=0.02, rtol=0)
    assert frequencies[2] == 0
    torch.testing.assert_close(sampler.logprobs[0], scores[0].log_softmax(-1)[drawn])


def test_a_row_without_a_distribution_is_flagged_not_drawn_past_the_vocabulary() -> None:
    """NaN or +inf scores (a broken forward) would make the inverse-CDF draw index past the vocabulary: on a GPU a
    device-side assert that kills the run. Such rows are drawn as token 0 and flagged; -inf (masked) is normal."""
    scores = torch.tensor([[1.0, float("-inf"), 0.0], [float("nan")] * 3, [0.0, float("inf"), 1.0]])
    sampler = SeededRowSampling(row_uniforms([1, 2, 3], steps=1), prompt_length=2)
    out = sampler(torch.zeros(3, 2, dtype=torch.long), scores)
    assert sampler.broken.tolist() == [False, True, True]
    assert out.argmax(-1)[1:].tolist() == [0, 0] and out[0, 1] == float("-inf")


def test_nan_logits_stop_the_generation_with_an_error_naming_the_rows(generator: TransformersGenerator) -> None:
    """A forward that turns one row's logits to NaN mid-completion ends in a GeneratorError (which the trainer turns
    into a saved checkpoint and a resume hint), not in garbage tokens."""
    calls = []

    def poison(module, args, output):
        calls.append(1)
        if len(calls) == 3:  # the second decode step
            output[1] = float("nan")
        return output

    prompts = [render_prompt_ids([{"role": "user", "content": text}], reasoning_effort="low") for text in ("a", "b")]
    handle = generator.model.lm_head.register_forward_hook(poison)
    try:
        with pytest.raises(GeneratorError, match=r"NaN or infinite for 1 of 2 completions \(rows \[1\]\)"):
            generator.generate(prompts, Sampling(max_tokens=5, seed=1))
    finally:
        handle.remove()
    assert len(calls) == 5  # the whole batch was generated, then checked once


def test_lora_samples_in_the_model_dtype_and_trains_in_float32() -> None:
    """A bf16 policy's float32 LoRA factors on attention are bf16 while it samples, so PEFT runs bf16 GEMMs there and
    not float32 ones; each in one buffer kept across calls (a compiled decode's graphs hold its address), refreshed
    from the float32 masters, which come back untouched. The experts' factors stay float32 (our kernels round them as
    they load them)."""
    lora = with_expert_lora(LoraConfig(r=4, target_modules=["q_proj", "v_proj", "experts"], lora_dropout=0.0))
    model = get_peft_model(swap_experts(build_tiny_model(seed=3, dtype=torch.bfloat16)), lora)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    experts = model.base_model.model.model.layers[0].mlp.experts
    expert_factors = [experts.lora_A["default"]["gate_up_proj"], experts.lora_B["default"]["down_proj"]]
    seen_experts = []
    experts.register_forward_pre_hook(lambda m, args: seen_experts.append([f.dtype for f in expert_factors]))
    with torch.no_grad():
        for p in trainable.values():
            assert p.dtype == torch.float32  # what PEFT makes for a bf16 model (and rl/nf4.py for a 4-bit one)
            p.normal_(0.0, 0.05)  # B != 0: the adapters change the samples
    lora_a = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"]
    seen = []
    lora_a.register_forward_pre_hook(lambda m, args: seen.append((m.weight.detach().clone(), m.weight.data_ptr(),
                                                                    args[0].dtype)))
    generator = TransformersGenerator(model, stop_token_ids(), harmony_tokenizer().pad_token_id)
    prompts = [render_prompt_ids([{"role": "user", "content": "Your move?"}], reasoning_effort="low")]
    masters = {name: (p.data_ptr(), p.detach().clone()) for name, p in trainable.items()}
    q_a = trainable[next(n for n in trainable if "layers.0.self_attn.q_proj.lora_A" in n)]

    generator.generate(prompts, Sampling(max_tokens=3, seed=1))
    assert seen and all(w.dtype == torch.bfloat16 and x == torch.bfloat16 for w, _, x in seen)
    assert all(torch.equal(w, q_a.detach().to(torch.bfloat16)) for w, _, _ in seen)
    assert seen_experts and all(dtypes == [torch.float32, torch.float32] for dtypes in seen_experts)
    for name, p in trainable.items():
        assert p.dtype == torch.float32 and p.data_ptr() == masters[name][0] and torch.equal(p, masters[name][1])

    buffers = {ptr for _, ptr, _ in seen}
    with torch.no_grad():
        for p in trainable.values():
            p.add_(0.01)  # an optimizer step: the next rollout samples the new values, from the same buffers
    seen.clear()
    generator.generate(prompts, Sampling(max_tokens=3, seed=1))
    assert {ptr for _, ptr, _ in seen} == buffers
    assert all(torch.equal(w, q_a.detach().to(torch.bfloat16)) for w, _, _ in seen)
    assert all(p.dtype == torch.float32 for p in trainable.values())
