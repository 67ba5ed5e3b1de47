import torch


def layernorm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> None:
    h = x.float()
    centered = h - h.mean(dim=-1, keepdim=True)
    var = centered.pow(2).mean(dim=-1, keepdim=True)
    out.copy_(centered * torch.rsqrt(var + 1e-5) * weight.float() + bias.float())
