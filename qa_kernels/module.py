"""``QAHead``: a drop-in for a QA model's ``qa_outputs = nn.Linear(H, 2)`` plus its loss."""

from __future__ import annotations

import math
from typing import Any, Optional, Union, cast

import torch
from torch import Tensor, nn

from .ops.qa_head import qa_head
from .outputs import QAHeadOutput


class QAHead(nn.Module):
    """The fused QA head as a module, with ``nn.Linear(hidden_size, 2)``'s parameters.

    Parameters are named ``weight`` ``(2, H)`` and ``bias`` ``(2,)`` exactly like ``nn.Linear``,
    so a model's ``qa_outputs.*`` state_dict entries load into it and back unchanged.
    """

    in_features: int
    out_features: int = 2

    def __init__(
        self,
        hidden_size: int,
        bias: bool = True,
        device: Union[torch.device, str, None] = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        if not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size must be a positive int; got {hidden_size!r}")
        self.in_features = hidden_size
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty((2, hidden_size), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(2, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialization, so a fresh QAHead starts where a fresh Linear would."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> QAHead:
        """A QAHead that shares ``linear``'s parameters (the same Parameter objects, not copies),
        so optimizers and checkpoints that hold them keep working."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"from_linear expects an nn.Linear; got {type(linear).__name__}")
        if linear.out_features != 2:
            raise ValueError(f"from_linear expects an nn.Linear(H, 2) QA head; got out_features={linear.out_features}")
        head = cls.__new__(cls)
        nn.Module.__init__(head)
        head.in_features = linear.in_features
        head.weight = cast(nn.Parameter, linear.weight)  # nn.Linear types it as Tensor
        head.bias = linear.bias  # a Parameter, or None (registered as such by nn.Module)
        return head

    def forward(
        self,
        hidden: Tensor,  # (B, S, H)
        start_positions: Optional[Tensor] = None,  # (B,) or (B, 1)
        end_positions: Optional[Tensor] = None,  # (B,) or (B, 1)
        num_items_in_batch: Union[int, float, Tensor, None] = None,
    ) -> QAHeadOutput:
        """See :func:`qa_kernels.qa_head`: returns ``(start_logits (B, S), end_logits (B, S), loss)``."""
        return qa_head(
            hidden, self.weight, self.bias, start_positions, end_positions,
            num_items_in_batch=num_items_in_batch,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"hidden_size={self.in_features}, bias={self.bias is not None}"
