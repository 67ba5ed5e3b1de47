"""The input embedding table kept in host RAM: 1.08 GiB of GPU memory back on gpt-oss-20b and -120b.

gpt-oss's input embedding is a [201,088, 2,880] bf16 table that LoRA never trains and a forward only gathers a few
rows from (a decode step: one row per sequence). `HostEmbedding` holds the table on the CPU, gathers there and sends
the rows to the device of the ids: at a decode step of 32 sequences that is 184 KB over PCIe, at a training
micro-batch of 1,152 tokens 6.6 MB. The LM head, which does read the whole table-sized matrix at every step, stays
on the GPU (gpt-oss does not tie the two).

The table is a plain tensor attribute, not a parameter or buffer, so that `model.to("cuda")` (accelerate does one),
DDP's start-up broadcast of every parameter and buffer (NCCL takes GPU tensors only) and `model.device` (the first
parameter's) all pass it by. It still appears in `state_dict()` under the usual `...embed_tokens.weight`, which
`oss-grpo export --merged` writes.
"""

import torch
from torch import nn
from transformers import PreTrainedModel

from oss_grpo.rl.errors import ConfigError


class HostEmbedding(nn.Module):
    """An `nn.Embedding` whose frozen table lives in host RAM; outputs land on the ids' device."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self.weight = embedding.weight.detach().to("cpu")
        self.padding_idx = embedding.padding_idx

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = nn.functional.embedding(input_ids.to(self.weight.device), self.weight, self.padding_idx)
        return rows.to(input_ids.device)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.weight


def offload_input_embedding(model: PreTrainedModel) -> PreTrainedModel:
    """Replace `model`'s input embedding by a `HostEmbedding` of the same table, in place (the GPU copy is freed
    with the old module); returns the model."""
    embedding = model.get_input_embeddings()
    if model.get_output_embeddings() is not None and model.get_output_embeddings().weight is embedding.weight:
        raise ConfigError("offload_embedding=true: this model ties its LM head to the input embedding, so the table "
                          "must stay on the GPU for the head; set offload_embedding=false")
    model.set_input_embeddings(HostEmbedding(embedding))
    return model
