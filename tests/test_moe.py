"""Mxfp4Experts inside the tiny GptOssForCausalLM: same logits and gradients as transformers' own MoE on the
dequantised weights, float32 routing, no fp16 overflow, and PEFT LoRA on the experts. Models run on DEVICE: the GPU
when there is one, so that the compiled kernels are the ones tested (CPU tensors would take the torch reference).

The reference is always transformers' own GptOssExperts (its default experts implementation) holding the exact
dequantised MXFP4 weights, so the only differences measured are ours: kernels, fp32 router, bf16/fp32 compute.
"""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch._subclasses.fake_tensor import FakeTensorMode
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts, GptOssMLP

from oss_grpo.kernels.mxfp4 import dequantize, pack_codes
from oss_grpo.kernels.mxfp4_matmul import pad_scales, scale_words
from oss_grpo.rl.moe import PROJECTIONS, Mxfp4Experts, swap_experts
from oss_grpo.rl.moe_lora import Mxfp4ExpertsLora, with_expert_lora
from oss_grpo.rl.tiny_model import build_tiny_model

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
IDS = torch.randint(0, 5000, (2, 12), generator=torch.Generator().manual_seed(0)).to(DEVICE)


def decisive_tiny_model(dtype: torch.dtype) -> torch.nn.Module:
    """The tiny model with routers 10x sharper: its random routers leave top-k near-ties (logit gaps ~1e-4) that bf16
    rounding of the hidden state legitimately flips; trained gpt-oss routers are far more decided. Sharpened in
    float32, then cast, so that every dtype holds the same model rounded."""
    model = build_tiny_model(seed=0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.router.weight.mul_(10.0)
    return model.to(dtype)


def swapped_and_reference(dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(tiny model with Mxfp4Experts in `dtype`, float32 transformers model with the dequantised expert weights)."""
    model = swap_experts(decisive_tiny_model(dtype)).to(DEVICE)
    reference = decisive_tiny_model(torch.float32).to(DEVICE)
    for ours, theirs in zip(model.model.layers, reference.model.layers):
        for proj in PROJECTIONS:
            w = dequantize(getattr(ours.mlp.experts, f"{proj}_blocks"), getattr(ours.mlp.experts, f"{proj}_scales"))
            getattr(theirs.mlp.experts, proj).data = w.float().transpose(1, 2).contiguous()  # HF keeps [E, in, out]
    return model, reference


def test_swap_installs_mxfp4_buffers_and_fp32_router() -> None:
    model, _ = swapped_and_reference(torch.bfloat16)
    experts = model.model.layers[0].mlp.experts
    assert isinstance(experts, Mxfp4Experts) and not any(isinstance(m, GptOssExperts) for m in model.modules())
    assert experts.gate_up_proj_blocks.dtype == torch.uint8 and experts.gate_up_proj_blocks.shape == (4, 128, 2, 16)
    assert experts.down_proj_scales.shape == (4, 64, 2)
    assert {name for name, _ in experts.named_parameters()} == {"gate_up_proj_bias", "down_proj_bias"}
    captured = {}
    router = model.model.layers[0].mlp.router
    router.register_forward_hook(lambda module, args, out: captured.update(h=args[0], out=out))
    model(IDS)
    logits, scores, indices = captured["out"]
    assert logits.dtype == scores.dtype == torch.float32 and captured["h"].dtype == torch.bfloat16
    exact = torch.nn.functional.linear(captured["h"].double(), router.weight.double(), router.bias.double())
    top = exact.gather(1, indices)
    torch.testing.assert_close(scores.double(), torch.softmax(top, -1), rtol=1e-5, atol=1e-6)


def test_swap_takes_checkpoint_tensors_as_they_are() -> None:
    model = build_tiny_model(seed=0)
    g = torch.Generator().manual_seed(1)
    checkpoint = {}
    for i in range(2):
        for proj, (n, k) in {"gate_up_proj": (128, 64), "down_proj": (64, 64)}.items():
            name = f"model.layers.{i}.mlp.experts.{proj}"
            checkpoint[f"{name}_blocks"] = pack_codes(torch.randint(0, 16, (4, n, k), generator=g))
            checkpoint[f"{name}_scales"] = torch.randint(120, 130, (4, n, k // 32), generator=g).to(torch.uint8)
    swap_experts(model, checkpoint)
    for name, tensor in model.state_dict().items():
        if name in checkpoint:
            assert torch.equal(tensor, checkpoint.pop(name)), name
    assert not checkpoint  # every checkpoint tensor landed, under the same name


def test_expert_scales_stay_readable_as_words_after_moves() -> None:
    """Mxfp4Experts stores its scales padded (the kernels then read them as 32-bit words); `.to` and `to_empty` store
    a view's bytes contiguously, so the module pads them again. The values, shape and state_dict stay the checkpoint's,
    and the check that picks the word loads reads strides only, so a compiled graph (fake tensors) can run it."""
    model = swap_experts(build_tiny_model(seed=0))
    experts = model.model.layers[0].mlp.experts
    before = experts.gate_up_proj_scales.clone()
    for move in (lambda: model.to(torch.float64), lambda: experts.to("cpu", torch.float32), lambda: model.float()):
        move()
        assert scale_words(experts.gate_up_proj_scales) and scale_words(experts.down_proj_scales)
        assert torch.equal(experts.gate_up_proj_scales, before)
    experts.to_empty(device="cpu")
    assert scale_words(experts.gate_up_proj_scales) and experts.gate_up_proj_scales.shape == before.shape
    assert model.state_dict()["model.layers.0.mlp.experts.gate_up_proj_scales"].shape == before.shape
    with FakeTensorMode():
        assert scale_words(pad_scales(torch.empty(2, 4, 90, dtype=torch.uint8)))
        assert not scale_words(torch.empty(2, 4, 90, dtype=torch.uint8))


def test_float32_logits_match_transformers_on_dequantised_experts() -> None:
    model, reference = swapped_and_reference(torch.float32)
    with torch.no_grad():
        logits, expected = model(IDS).logits, reference(IDS).logits
    assert (logits - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_bf16_logits_are_as_close_to_float32_as_transformers_bf16() -> None:
    """bf16 logits differ from float32 by bf16 rounding (and the odd top-k flip it causes, in either model); ours
    must not be worse than transformers' own bf16 model holding the same weights."""
    model, reference = swapped_and_reference(torch.bfloat16)
    with torch.no_grad():
        expected = reference(IDS).logits.double()
        ours = (model(IDS).logits.double() - expected).abs()
        theirs = (copy.deepcopy(reference).to(torch.bfloat16)(IDS).logits.double() - expected).abs()
    assert ours.max() <= 1.25 * theirs.max() and ours.mean() <= 1.25 * theirs.mean()


def test_bf16_moe_layer_matches_float32_on_the_same_input() -> None:
    """Layer by layer, on the bf16 hidden states the model really feeds it, routing included."""
    model, _ = swapped_and_reference(torch.bfloat16)
    inputs = {}
    for i, layer in enumerate(model.model.layers):
        layer.mlp.register_forward_hook(lambda module, args, out, i=i: inputs.update({i: (args[0], out[0])}))
    with torch.no_grad():
        model(IDS)
        for i, layer in enumerate(model.model.layers):
            h, out = inputs[i]
            expected, _ = _dequantised_mlp(layer.mlp)(h.float())
            assert out.dtype == torch.bfloat16
            assert (out.float() - expected).abs().max() <= 1e-2 * expected.abs().max()


def test_gradients_match_transformers_on_dequantised_experts() -> None:
    """Backward through the MXFP4 experts (dX kernel, bias grads, fp32 router) gives transformers' gradients."""
    model, reference = swapped_and_reference(torch.float32)
    for m in (model, reference):
        logits = m(IDS).logits
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), IDS[:, 1:].flatten()).backward()
    theirs = dict(reference.named_parameters())
    compared = 0
    for name, param in model.named_parameters():
        if param.grad is None or param.grad.abs().max() == 0:
            continue  # e.g. embedding rows of absent tokens
        torch.testing.assert_close(param.grad, theirs[name].grad, rtol=1e-4, atol=1e-6, msg=name)
        compared += 1
    names = [n for n, p in model.named_parameters() if p.grad is not None]
    assert compared >= 25 and "model.layers.0.mlp.experts.gate_up_proj_bias" in names
    assert "model.layers.0.mlp.router.weight" in names and "model.layers.0.self_attn.q_proj.weight" in names


def test_fp16_overflows_where_the_mxfp4_path_stays_finite() -> None:
    """A T4 runs gpt-oss in fp16: large activations times large expert weights pass 65504 inside gate_up, a gate
    becomes -inf and the swiglu's -inf * sigmoid(-inf) is NaN, although the layer's true output is small. Our
    experts run an fp16 model's MoE in float32 and return the right, finite fp16 output."""
    model = build_tiny_model(seed=0)
    mlp: GptOssMLP = model.model.layers[0].mlp
    with torch.no_grad():
        mlp.experts.gate_up_proj.mul_(2000.0)  # |w| up to ~200: MXFP4 holds it with scales near 2^5
    h = (64.0 * torch.randn(1, 24, 64, generator=torch.Generator().manual_seed(2))).half()
    out_fp16, _ = copy.deepcopy(mlp).half()(h)
    assert not torch.isfinite(out_fp16).all()

    swap_experts(model)
    ours = copy.deepcopy(mlp).half().to(DEVICE)  # what a T4 holds: fp16 router and biases, uint8 experts
    h = h.to(DEVICE)
    out, _ = ours(h)
    reference = _dequantised_mlp(ours)
    pre_activation = torch.einsum("th,ehn->ten", h.flatten(0, 1).double(), reference.experts.gate_up_proj.double())
    assert pre_activation.abs().max() > 65504  # the overflow is inside gate_up ...
    expected, _ = reference(h.float())
    assert expected.abs().max() < 1000  # ... not in the output
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expected, rtol=2e-3, atol=1e-3)


def _dequantised_mlp(mlp: GptOssMLP) -> GptOssMLP:
    """transformers' float32 MLP holding the dequantised weights of a swapped MLP, on that MLP's device."""
    reference = GptOssMLP(build_tiny_model(seed=0).config).to(mlp.experts.down_proj_blocks.device)
    reference.router.load_state_dict(mlp.router.state_dict())
    for proj in PROJECTIONS:
        w = dequantize(getattr(mlp.experts, f"{proj}_blocks"), getattr(mlp.experts, f"{proj}_scales"), torch.float32)
        getattr(reference.experts, proj).data = w.transpose(1, 2).contiguous()
        getattr(reference.experts, f"{proj}_bias").data = getattr(mlp.experts, f"{proj}_bias").detach().float()
    return reference.float()


def lora_model() -> tuple[torch.nn.Module, torch.nn.Module]:
    model, reference = swapped_and_reference(torch.float32)
    config = with_expert_lora(LoraConfig(r=4, lora_alpha=8, target_modules=["experts"], init_lora_weights=False))
    return get_peft_model(model, config), reference


def test_peft_puts_trainable_lora_on_the_experts_only() -> None:
    peft_model, _ = lora_model()
    layer = peft_model.base_model.model.model.layers[0].mlp.experts
    assert isinstance(layer, Mxfp4ExpertsLora) and isinstance(layer.get_base_layer(), Mxfp4Experts)
    trainable = {n.split("mlp.experts.")[-1] for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == {f"lora_{ab}.default.{proj}" for ab in "AB" for proj in PROJECTIONS}
    assert layer.lora_A["default"]["gate_up_proj"].shape == (4, 4, 64)
    assert layer.lora_B["default"]["down_proj"].shape == (4, 64, 4)
    with pytest.raises(NotImplementedError, match="MXFP4"):
        layer.merge()


def test_expert_lora_equals_merged_weights_forward_and_backward() -> None:
    """LoRA through the kernels == transformers on W + scaling * B A (differentiable in A and B), and disabling the
    adapter (TRL's KL reference) gives the base model back."""
    peft_model, reference = lora_model()
    logits = peft_model(IDS).logits
    logits.pow(2).mean().backward()

    merged, factors = {}, []
    for i, layer in enumerate(peft_model.base_model.model.model.layers):
        lora = layer.mlp.experts
        for proj in PROJECTIONS:
            a = lora.lora_A["default"][proj].detach().clone().requires_grad_()
            b = lora.lora_B["default"][proj].detach().clone().requires_grad_()
            factors.append((a, b, lora.lora_A["default"][proj].grad, lora.lora_B["default"][proj].grad))
            w = getattr(reference.model.layers[i].mlp.experts, proj)  # [E, in, out]
            merged[f"model.layers.{i}.mlp.experts.{proj}"] = w + lora.scaling["default"] * (b @ a).transpose(1, 2)
    expected = torch.func.functional_call(reference, merged, (IDS,)).logits
    expected.pow(2).mean().backward()
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    for a, b, grad_a, grad_b in factors:
        torch.testing.assert_close(grad_a, a.grad, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(grad_b, b.grad, rtol=1e-4, atol=1e-7)

    with torch.no_grad(), peft_model.disable_adapter():
        base = peft_model(IDS).logits
    torch.testing.assert_close(base, reference(IDS).logits, rtol=1e-5, atol=1e-5)
    assert (base - logits).abs().max() > 1e-3


def test_experts_in_passes_equal_one_pass_forward_and_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long input split into passes of TOKENS_PER_PASS (the prefill's memory cap) changes no logit or gradient:
    24 tokens in passes of 5 (five passes of 5, 5, 5, 5, 4) against one pass."""
    import oss_grpo.rl.moe as moe

    def logits_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(0)
        peft_model, _ = lora_model()
        logits = peft_model(IDS).logits
        logits.pow(2).mean().backward()
        return logits.detach(), [p.grad for p in peft_model.parameters() if p.requires_grad]

    one_pass, one_pass_grads = logits_and_grads()
    passes, forward = [], Mxfp4Experts._forward

    def counted(self: Mxfp4Experts, hidden_states: torch.Tensor, *rest: object) -> torch.Tensor:
        passes.append(len(hidden_states))
        return forward(self, hidden_states, *rest)

    monkeypatch.setattr(Mxfp4Experts, "_forward", counted)
    monkeypatch.setattr(moe, "TOKENS_PER_PASS", 5)
    in_passes, in_passes_grads = logits_and_grads()
    assert passes == [5, 5, 5, 5, 4] * 2  # each of the tiny model's 2 layers
    torch.testing.assert_close(in_passes, one_pass, rtol=1e-5, atol=1e-5)  # float32 GEMMs of other shapes
    for got, want in zip(in_passes_grads, one_pass_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_tiny_model_in_bf16_is_the_float32_one_rounded() -> None:
    """The bf16 and float32 tiny models of a seed must be one model: on torch 2.11 (the H100 image) drawing the random
    biases straight into bf16 gave other numbers, and the bf16-vs-float32 logits test compared two different models."""
    low, high = build_tiny_model(seed=0, dtype=torch.bfloat16), build_tiny_model(seed=0)
    for (name, a), b in zip(low.named_parameters(), high.parameters()):
        assert torch.equal(a, b.to(torch.bfloat16)), name
