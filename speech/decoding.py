"""Batched greedy decoding with a KV cache, written for speech prompts.

Why not `generate`: for ASR every sequence is short and the batch is ragged (different audio
lengths, different answer lengths). This does only what greedy speech decoding needs:

* one prefill over the left-padded prompt embeddings through the model's own forward;
* then one token per step through a lean loop over the same decoder layers, with a
  preallocated (static) KV cache written in place: no per-step mask building, no
  `torch.cat` growing the cache, no generic keyword plumbing;
* rows that finish are dropped from the batch *and* the cache, so late steps cost only the
  sequences still talking.

The lean step is for transformers' Phi-3-family decoder (Phi-4-Mini, the built-in LM). Any
other LM (or one wrapped by peft for training) takes the generic path: the model's forward
with a DynamicCache. Both give the same tokens as `generate` (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel
from transformers.models.phi3.modeling_phi3 import Phi3ForCausalLM, apply_rotary_pos_emb


class _StaticKV:
    """Per-layer K/V buffers [B, kv_heads, capacity, head_dim], filled from a prefill cache."""

    def __init__(self, cache: DynamicCache, capacity: int) -> None:
        self.keys, self.values = [], []
        for layer in cache.layers:
            k, v = layer.keys, layer.values
            b, h, n, d = k.shape
            kb = k.new_empty(b, h, capacity, d)
            vb = v.new_empty(b, h, capacity, d)
            kb[:, :, :n] = k
            vb[:, :, :n] = v
            self.keys.append(kb)
            self.values.append(vb)

    def select(self, rows: torch.Tensor) -> None:
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]


def _lean_step(lm: Phi3ForCausalLM, tokens: torch.Tensor, positions: torch.Tensor, kv: _StaticKV, t: int,
               key_bias: torch.Tensor) -> torch.Tensor:
    """One decoding step for every active row: write K/V at slot `t`, attend over slots [0, t]."""
    model = lm.model
    hidden = model.embed_tokens(tokens[:, None])
    cos, sin = model.rotary_emb(hidden, positions)
    batch = hidden.shape[0]
    bias = key_bias[:, None, None, : t + 1]
    for i, layer in enumerate(model.layers):
        attn = layer.self_attn
        heads, kv_heads, head_dim = attn.config.num_attention_heads, attn.num_key_value_heads, attn.head_dim
        qkv = attn.qkv_proj(layer.input_layernorm(hidden))
        q = qkv[..., : heads * head_dim].view(batch, 1, heads, head_dim).transpose(1, 2)
        k = qkv[..., heads * head_dim: (heads + kv_heads) * head_dim].view(batch, 1, kv_heads, head_dim).transpose(1, 2)
        v = qkv[..., (heads + kv_heads) * head_dim:].view(batch, 1, kv_heads, head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        kv.keys[i][:, :, t] = k[:, :, 0]
        kv.values[i][:, :, t] = v[:, :, 0]
        out = F.scaled_dot_product_attention(q, kv.keys[i][:, :, : t + 1], kv.values[i][:, :, : t + 1],
                                             attn_mask=bias, scale=attn.scaling, enable_gqa=kv_heads != heads)
        hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(batch, 1, heads * head_dim))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return lm.lm_head(model.norm(hidden))[:, -1]


def _lean_ok(lm: PreTrainedModel) -> bool:
    config = lm.config
    sliding = getattr(config, "sliding_window", None)
    return type(lm) is Phi3ForCausalLM and not lm.training and (sliding is None or sliding >= config.max_position_embeddings)


@torch.inference_mode()
def greedy_decode(
    lm: PreTrainedModel,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    stop_token_ids: list[int],
    max_new_tokens: list[int],
    suppress_token_ids: list[int] = (),
) -> list[list[int]]:
    """Decode each row of a left-padded batch until a stop token or its own token budget.

    `suppress_token_ids` can never be chosen (the audio/image placeholders: emitting one means
    nothing, and fed back it would be mistaken for a slot to fill with audio).
    Returns the generated token ids per row, stop token excluded.
    """
    batch, prompt_len = inputs_embeds.shape[:2]
    device = inputs_embeds.device
    stops = torch.tensor(stop_token_ids, device=device)
    budget = torch.tensor(max_new_tokens, device=device)
    suppress = torch.tensor(list(suppress_token_ids), dtype=torch.long, device=device)
    outputs: list[list[int]] = [[] for _ in range(batch)]
    rows = torch.arange(batch, device=device)  # original row index of each active row

    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=lm.config)
    logits = lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    next_pos = position_ids[:, -1:] + 1

    lean = _lean_ok(lm)
    if lean:
        capacity = prompt_len + max(max_new_tokens)
        kv = _StaticKV(cache, capacity)
        del cache
        key_bias = torch.zeros(batch, capacity, dtype=inputs_embeds.dtype, device=device)
        key_bias[:, :prompt_len].masked_fill_(attention_mask == 0, float("-inf"))
    step = 0
    while True:
        if suppress.numel():
            logits = logits.index_fill(-1, suppress, float("-inf"))
        tokens = logits.argmax(-1)
        step += 1
        is_stop = torch.isin(tokens, stops)
        for i, (row, token, stop) in enumerate(zip(rows.tolist(), tokens.tolist(), is_stop.tolist())):
            if not stop:
                outputs[row].append(token)
        done = is_stop | (budget[rows] <= step)
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            rows, tokens, next_pos = rows[keep], tokens[keep], next_pos[keep]
            if lean:
                kv.select(keep)
                key_bias = key_bias[keep]
            else:
                attention_mask = attention_mask[keep]
                cache.batch_select_indices(keep)
        if lean:
            logits = _lean_step(lm, tokens, next_pos, kv, prompt_len + step - 1, key_bias)
        else:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
            logits = lm(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=next_pos,
                        past_key_values=cache, use_cache=True).logits[:, -1]
        next_pos = next_pos + 1
    return outputs
