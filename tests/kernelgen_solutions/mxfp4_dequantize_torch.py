import torch

E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def mxfp4_dequantize(blocks: torch.Tensor, scales: torch.Tensor, out: torch.Tensor) -> None:
    codes = torch.stack((blocks & 15, blocks >> 4), dim=-1).flatten(-2).long()  # [N, K/32, 32]
    values = torch.tensor(E2M1, device=blocks.device)[codes] * torch.exp2(scales.float() - 127)[..., None]
    out.copy_(values.flatten(-2))
