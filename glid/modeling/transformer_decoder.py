"""GLID's transformer decoder: Mask2Former's layer order (cross-attn -> self-attn -> FFN) over
three feature scales round-robin, optional masked cross-attention, stochastic depth. Each
layer's normalized output goes once through the task's ``predict`` (head + task predictions),
which also yields the next layer's attention mask; the predictions of every layer are returned
for the auxiliary losses, only the last layer's at inference."""

from __future__ import annotations

from collections.abc import Callable

import torch
from detectron2.config import configurable
from timm.layers import DropPath
from torch import nn

from .position_encoding import PositionEmbeddingSine

__all__ = ["GLIDTransformerDecoder", "DecoderLayer", "Predict"]

# predict(normalized layer output (B, N, D), next layer's (h, w) or None)
#   -> (predictions, (B, N, h*w) bool attention mask or None)
Predict = Callable[[torch.Tensor, "tuple[int, int] | None"], "tuple[dict, torch.Tensor | None]"]


class DecoderLayer(nn.Module):
    """Post-norm decoder layer: masked cross-attention, self-attention, FFN; each residual branch
    goes through drop path."""

    def __init__(
        self, dim: int, num_heads: int, dim_feedforward: int, dropout: float, drop_path: float
    ):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim_feedforward),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(dim_feedforward, dim),
        )
        self.norm_cross = nn.LayerNorm(dim)
        self.norm_self = nn.LayerNorm(dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query/query_pos (B, N, D); memory/memory_pos (B, HW, D); attn_mask (B*heads, N, HW)."""
        attended = self.cross_attn(
            query + query_pos, memory + memory_pos, memory, attn_mask=attn_mask
        )[0]
        query = self.norm_cross(query + self.drop_path(self.dropout(attended)))
        q = query + query_pos
        attended = self.self_attn(q, q, query)[0]
        query = self.norm_self(query + self.drop_path(self.dropout(attended)))
        query = self.norm_ffn(query + self.drop_path(self.dropout(self.ffn(query))))
        return query


class GLIDTransformerDecoder(nn.Module):
    """Queries read the pixel decoder's multi-scale features, one scale per layer in turn.

    Args:
        hidden_dim: D.
        num_layers: L (9 by default: three rounds over the three scales).
        num_heads: attention heads.
        dim_feedforward: FFN width.
        dropout: dropout in attention and FFN.
        drop_path: maximum stochastic-depth rate (linearly increasing over layers).
        num_feature_levels: scales read round-robin.
    """

    @configurable
    def __init__(
        self,
        *,
        hidden_dim: int,
        num_layers: int,
        num_heads: int,
        dim_feedforward: int,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        num_feature_levels: int = 3,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.num_feature_levels = num_feature_levels
        self.pos_embed = PositionEmbeddingSine(hidden_dim // 2)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, hidden_dim))
        nn.init.normal_(self.level_embed, std=0.02)
        rates = [drop_path * i / max(num_layers - 1, 1) for i in range(num_layers)]
        self.layers = nn.ModuleList(
            [DecoderLayer(hidden_dim, num_heads, dim_feedforward, dropout, r) for r in rates]
        )
        self.norm = nn.LayerNorm(hidden_dim)
        for layer in self.layers:
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    @classmethod
    def from_config(cls, cfg) -> dict:
        g = cfg.MODEL.GLID
        return {
            "hidden_dim": g.HIDDEN_DIM,
            "num_layers": g.DECODER.NUM_LAYERS,
            "num_heads": g.DECODER.NUM_HEADS,
            "dim_feedforward": g.DECODER.DIM_FEEDFORWARD,
            "dropout": g.DECODER.DROPOUT,
            "drop_path": g.DECODER.DROP_PATH,
        }

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        features: list[torch.Tensor],
        predict: Predict,
        mask_attention: bool = False,
        all_layers: bool = True,
    ) -> list[dict]:
        """Run all layers; each layer's output is turned into predictions once, by ``predict``.

        Args:
            query, query_pos: (B, N, D) content and position of the queries.
            features: ``num_feature_levels`` maps (B, D, h, w), low resolution first.
            predict: ``predict(output, mask_size)`` maps a layer's normalized output (B, N, D)
                to its predictions and, when ``mask_size`` = (h, w) is given, a (B, N, h*w) bool
                mask, True where a query must not attend in the next layer (else ``None``).
            mask_attention: restrict cross-attention to the previous layer's predicted masks
                (Mask2Former); the first layer attends everywhere.
            all_layers: return every layer's predictions (training, deep supervision); else
                only the last layer's (earlier ones are then computed only when masked
                attention needs them).

        Returns:
            The predictions of every layer (last one last), or ``[last layer's]``.
        """
        if len(features) != self.num_feature_levels:
            raise ValueError(
                f"expected {self.num_feature_levels} feature maps, got {len(features)}"
            )
        memories, memory_pos, sizes = [], [], []
        for i, f in enumerate(features):
            sizes.append(tuple(f.shape[-2:]))
            memory_pos.append(self.pos_embed(f).flatten(2).transpose(1, 2))
            memories.append(f.flatten(2).transpose(1, 2) + self.level_embed[i].to(f.dtype))
        outputs = []
        attn_mask = None  # the first layer sees everything: all queries share one content
        num_layers = len(self.layers)
        for i, layer in enumerate(self.layers):
            level = i % self.num_feature_levels
            query = layer(query, query_pos, memories[level], memory_pos[level], attn_mask)
            last = i + 1 == num_layers
            need_mask = mask_attention and not last
            if not (all_layers or last or need_mask):
                continue
            mask_size = sizes[(i + 1) % self.num_feature_levels] if need_mask else None
            predictions, blocked = predict(self.norm(query), mask_size)
            if all_layers or last:
                outputs.append(predictions)
            attn_mask = self._per_head(blocked) if need_mask else None
        return outputs

    def _per_head(self, blocked: torch.Tensor) -> torch.Tensor:
        """(B, N, S) bool -> (B*heads, N, S) for ``nn.MultiheadAttention``; a query blocked
        everywhere (empty predicted mask) attends everywhere instead."""
        blocked = blocked.detach().clone()
        blocked[blocked.all(dim=-1)] = False
        return blocked.repeat_interleave(self.num_heads, dim=0)
