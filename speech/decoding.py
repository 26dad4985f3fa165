"""Batched greedy decoding with a KV cache, written for speech prompts.

Why not `generate`: for ASR every sequence is short and the batch is ragged (different audio
lengths, different answer lengths). This loop does only what greedy speech decoding needs:
one prefill over left-padded prompt embeddings, then one token per step, dropping finished rows
from the batch *and* the cache so late steps cost only the sequences still talking. No logits
processors, no per-step Python over the vocabulary.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel


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
    batch = inputs_embeds.shape[0]
    device = inputs_embeds.device
    stops = torch.tensor(stop_token_ids, device=device)
    budget = torch.tensor(max_new_tokens, device=device)
    outputs: list[list[int]] = [[] for _ in range(batch)]
    rows = torch.arange(batch, device=device)  # original row index of each active row

    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=lm.config)
    logits = lm(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]
    next_pos = position_ids[:, -1:] + 1
    step = 0
    suppress = torch.tensor(list(suppress_token_ids), dtype=torch.long, device=device)
    while True:
        if suppress.numel():
            logits = logits.index_fill(-1, suppress, float("-inf"))
        tokens = logits.argmax(-1)
        step += 1
        is_stop = torch.isin(tokens, stops)
        tokens_list = tokens.tolist()
        for i, row in enumerate(rows.tolist()):
            if not is_stop[i]:
                outputs[row].append(tokens_list[i])
        done = is_stop | (budget[rows] <= step)
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            rows, tokens, next_pos = rows[keep], tokens[keep], next_pos[keep]
            attention_mask = attention_mask[keep]
            cache.batch_select_indices(keep)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
        logits = lm(
            input_ids=tokens[:, None],
            attention_mask=attention_mask,
            position_ids=next_pos,
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1]
        next_pos = next_pos + 1
    return outputs
