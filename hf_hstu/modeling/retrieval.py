"""Brute-force top-k retrieval over the item catalogue (or a candidate set), in bounded memory."""

import torch

from .similarity import Similarity

# Scores held at once per chunk: users x candidates; bounds memory for large catalogues (~16 MB in fp32). Smaller
# chunks stay in cache (on 2 CPU cores, 256 users x 1M items: 2.5 s with 2^22, 3.8 s with 2^24).
DEFAULT_MAX_SCORES_PER_CHUNK = 2**22


def _mask_columns(scores: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Set scores[b, columns[b, j]] = -inf in place for every column index in [0, C) (other indices are ignored);
    returns `scores`."""
    in_range = (columns >= 0) & (columns < scores.shape[1])
    rows = torch.arange(scores.shape[0], device=scores.device).unsqueeze(1).expand_as(columns)
    scores[rows[in_range], columns[in_range]] = float("-inf")
    return scores


def _merge_top_k(
    best_scores: torch.Tensor, best_ids: torch.Tensor, scores: torch.Tensor, ids: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of the running best (B, k') and a chunk's (B, c) scores of `ids`, (c,) shared or (B, c).

    Once every user has k items, only the chunk's scores above the user's k-th best can enter: those few are found
    with a comparison (after n items a chunk of c holds about k c / n of them), far cheaper than a top-k of the
    chunk, which is taken only while there are many (the first chunks). Either way only (B, k) ids are gathered.
    """
    batch_size, width = scores.shape
    chunk_scores = None
    if best_scores.shape[1] == k:
        threshold = best_scores[:, -1:]
        if not (scores.amax(1, keepdim=True) > threshold).any():
            return best_scores, best_ids
        rows, columns = (scores > threshold).nonzero(as_tuple=True)  # row-major: each row's entries together
        counts = torch.bincount(rows, minlength=batch_size)
        most = int(counts.max())
        if most <= k:
            slots = torch.arange(rows.shape[0], device=rows.device) - (counts.cumsum(0) - counts)[rows]
            chunk_scores = scores.new_full((batch_size, most), float("-inf"))
            chunk_scores[rows, slots] = scores[rows, columns]
            positions = torch.zeros(batch_size, most, dtype=torch.long, device=scores.device)
            positions[rows, slots] = columns
    if chunk_scores is None:
        chunk_scores, positions = scores.topk(min(k, width), dim=1)
    chunk_ids = ids[positions] if ids.dim() == 1 else ids.gather(1, positions)
    all_scores = torch.cat([best_scores, chunk_scores], dim=1)
    all_ids = torch.cat([best_ids, chunk_ids], dim=1)
    top_scores, top = all_scores.topk(min(k, all_scores.shape[1]), dim=1)
    return top_scores, all_ids.gather(1, top)


def top_k_items(
    user_embeddings: torch.Tensor,
    item_table: torch.Tensor,
    similarity: Similarity,
    k: int,
    exclude_ids: torch.Tensor | None = None,
    candidate_ids: torch.Tensor | None = None,
    max_scores_per_chunk: int = DEFAULT_MAX_SCORES_PER_CHUNK,
    pad_missing: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best-scoring items per user, sorted by decreasing score.

    Args:
        user_embeddings: (B, D).
        item_table: `similarity.item_table(item_weight)`, (num_items + 1, R); row 0 is padding, never returned.
        similarity: scores (B, D) users against (C, R) or (B, C, R) item representations.
        k: items to return per user.
        exclude_ids: (B, N) item ids never to return for each user (e.g. the history; 0 entries are ignored).
        candidate_ids: None for the whole catalogue, (C,) ids shared by all users, or (B, C) ids per user;
            ids must be in 1..num_items.
        max_scores_per_chunk: bound on B x chunk scores held at once.
        pad_missing: a user with fewer than k candidates left after exclusion gets id 0 (score -inf) in the places
            left over, instead of an error (evaluation lists every item it can).

    Returns:
        (item ids (B, k) int64, scores (B, k)).

    Raises:
        ValueError: when a user has fewer than k candidates left after exclusion (unless `pad_missing`).
    """
    batch_size = user_embeddings.shape[0]
    device = user_embeddings.device
    num_items = item_table.shape[0] - 1
    num_candidates = num_items if candidate_ids is None else candidate_ids.shape[-1]
    if k > num_candidates:
        raise ValueError(f"k={k} is larger than the number of candidate items ({num_candidates}).")
    chunk_size = max(1, max_scores_per_chunk // max(batch_size, 1))
    best_scores = user_embeddings.new_empty(batch_size, 0)
    best_ids = torch.empty(batch_size, 0, dtype=torch.long, device=device)

    if candidate_ids is None or candidate_ids.dim() == 1:
        # Position of each excluded id among the candidates (-1 when it is not a candidate). The whole catalogue
        # needs no table: item i is candidate i - 1, and its chunks are slices of the item table.
        excluded_positions = None
        if exclude_ids is not None and candidate_ids is None:
            excluded_positions = exclude_ids - 1
        elif exclude_ids is not None:
            lookup = torch.full((num_items + 1,), -1, dtype=torch.long, device=device)
            lookup[candidate_ids] = torch.arange(candidate_ids.shape[0], device=device)
            excluded_positions = lookup[exclude_ids]
        for start in range(0, num_candidates, chunk_size):
            if candidate_ids is None:
                end = min(start + chunk_size, num_candidates)
                chunk_ids = torch.arange(start + 1, end + 1, device=device)
                scores = similarity(user_embeddings, item_table[start + 1 : end + 1])  # (B, c)
            else:
                chunk_ids = candidate_ids[start : start + chunk_size]
                scores = similarity(user_embeddings, item_table[chunk_ids])  # (B, c)
            if excluded_positions is not None:
                scores = _mask_columns(scores, excluded_positions - start)
            best_scores, best_ids = _merge_top_k(best_scores, best_ids, scores, chunk_ids, k)
    else:
        sorted_excluded = exclude_ids.sort(dim=1).values if exclude_ids is not None else None
        for start in range(0, candidate_ids.shape[1], chunk_size):
            chunk_ids = candidate_ids[:, start : start + chunk_size]
            scores = similarity(user_embeddings, item_table[chunk_ids])  # (B, c)
            if sorted_excluded is not None:
                positions = torch.searchsorted(sorted_excluded, chunk_ids).clamp(max=sorted_excluded.shape[1] - 1)
                is_excluded = sorted_excluded.gather(1, positions) == chunk_ids
                scores = scores.masked_fill(is_excluded, float("-inf"))
            best_scores, best_ids = _merge_top_k(best_scores, best_ids, scores, chunk_ids, k)

    if pad_missing:
        return best_ids.masked_fill(torch.isneginf(best_scores), 0), best_scores
    exhausted_rows = torch.nonzero(torch.isinf(best_scores[:, -1])).flatten()
    if exhausted_rows.numel():
        raise ValueError(
            f"k={k} is larger than the number of candidate items left after removing seen items for batch rows "
            f"{exhausted_rows.tolist()[:10]}; lower k, pass filter_seen=False, or give more candidates."
        )
    return best_ids, best_scores


def target_ranks(
    user_embeddings: torch.Tensor,
    item_table: torch.Tensor,
    similarity: Similarity,
    target_ids: torch.Tensor,
    exclude_ids: torch.Tensor | None = None,
    max_scores_per_chunk: int = DEFAULT_MAX_SCORES_PER_CHUNK,
) -> torch.Tensor:
    """1-based rank of each user's target among the whole catalogue, excluded items removed.

    rank = 1 + the number of items that score strictly higher than the target (ties count in the target's favour),
    over all items except the padding id, the `exclude_ids` of that user (e.g. the history) and the target itself.

    Args:
        user_embeddings: (B, D).
        item_table: `similarity.item_table(item_weight)`, (num_items + 1, R).
        target_ids: (B,) ids in 1..num_items.
        exclude_ids: (B, N) item ids not ranked for each user (0 entries are ignored).

    Returns:
        (B,) int64 ranks.
    """
    batch_size = user_embeddings.shape[0]
    num_items = item_table.shape[0] - 1
    target_scores = similarity(user_embeddings, item_table[target_ids.unsqueeze(1)]).squeeze(1)  # (B,)
    # Never count the target against itself: its chunk score may differ from target_scores in the last bit.
    not_ranked = target_ids.unsqueeze(1) if exclude_ids is None else torch.cat([exclude_ids, target_ids[:, None]], 1)
    chunk_size = max(1, max_scores_per_chunk // max(batch_size, 1))
    higher = torch.zeros(batch_size, dtype=torch.long, device=user_embeddings.device)
    for start in range(1, num_items + 1, chunk_size):
        chunk_ids = torch.arange(start, min(start + chunk_size, num_items + 1), device=user_embeddings.device)
        scores = _mask_columns(similarity(user_embeddings, item_table[chunk_ids]), not_ranked - start)
        higher += (scores > target_scores.unsqueeze(1)).sum(1)
    return higher + 1
