"""A small seeded interaction log with learnable sequential and time structure (the default training dataset)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

_START_TIME = 1_577_836_800  # 2020-01-01T00:00:00Z


def make_synthetic_interactions(
    num_users: int = 1_000,
    num_items: int = 600,
    num_clusters: int = 20,
    min_length: int = 20,
    max_length: int = 150,
    follow_probability: float = 0.7,
    mean_session_length: float = 8.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Interactions of ``num_users`` users with ``num_items`` items, as columns user_id, item_id, timestamp, rating.

    Generative process (everything drawn from ``numpy.random.default_rng(seed)``):

    1. Items ``1..num_items`` are dealt at random into ``num_clusters`` equal-sized clusters ("genres"). Inside a
       cluster, items have Zipf-like popularity (weight ``1 / rank``) and a fixed random successor: the items form
       one cycle, so each item has a most likely next item.
    2. Each user has a preference over clusters drawn from a Dirichlet(0.3) (a few favourite clusters) and a
       sequence length uniform in ``[min_length, max_length]``; their first event is at a uniformly random time in
       the first 30 days of 2020.
    3. Events come in sessions. Within a session, consecutive events are minutes apart (exponential, mean
       3 minutes) and stay in the session's cluster: with probability ``follow_probability`` the next item is the
       current item's successor, otherwise a popularity-weighted item of the cluster.
    4. A session ends after each event with probability ``1 / mean_session_length``. The next session starts days
       later (1 day plus an exponential with mean 3 days) in a cluster drawn from the user's preference, with a
       popularity-weighted first item.

    So the next item is predictable from the last one when the gap to it is short, and from the user's long-term
    preference when the gap is long: a sequential model with a time-aware attention bias can learn both, and
    popularity cannot. Ratings (1..5) are higher for the user's favoured clusters, plus noise.
    Rows are ordered by user, then time; timestamps are strictly increasing within a user.
    """
    if num_items < num_clusters or num_clusters < 1:
        raise ValueError(f"need 1 <= num_clusters <= num_items, got {num_clusters} clusters and {num_items} items")
    if not 1 <= min_length <= max_length:
        raise ValueError(f"need 1 <= min_length <= max_length, got {min_length}, {max_length}")
    rng = np.random.default_rng(seed)
    cluster_size = num_items // num_clusters
    items = rng.permutation(num_items)[: cluster_size * num_clusters] + 1
    cluster_items = items.reshape(num_clusters, cluster_size)  # (C, S) raw item ids
    successor = np.zeros(num_items + 1, dtype=np.int64)  # item -> its most likely next item
    cycle = cluster_items[:, rng.permutation(cluster_size)]  # each cluster's items in successor order
    successor[cycle] = np.roll(cycle, -1, axis=1)
    popularity_cdf = np.cumsum(1.0 / np.arange(1, cluster_size + 1))
    popularity_cdf /= popularity_cdf[-1]
    preference = rng.dirichlet(np.full(num_clusters, 0.3), size=num_users)  # (U, C)
    preference_cdf = np.cumsum(preference, axis=1)
    lengths = rng.integers(min_length, max_length + 1, size=num_users)
    users = np.arange(num_users)

    def popular_item(clusters: np.ndarray) -> np.ndarray:
        ranks = np.minimum(np.searchsorted(popularity_cdf, rng.random(len(clusters))), cluster_size - 1)
        return cluster_items[clusters, ranks]

    def preferred_cluster() -> np.ndarray:
        draws = rng.random(num_users)[:, None] * preference_cdf[:, -1:]
        return np.minimum((draws > preference_cdf).sum(axis=1), num_clusters - 1)

    item_steps = np.zeros((max_length, num_users), dtype=np.int64)
    time_steps = np.zeros((max_length, num_users), dtype=np.int64)
    cluster_steps = np.zeros((max_length, num_users), dtype=np.int64)
    clusters = preferred_cluster()
    item_steps[0] = popular_item(clusters)
    time_steps[0] = _START_TIME + rng.integers(0, 30 * 86_400, size=num_users)
    cluster_steps[0] = clusters
    for step in range(1, max_length):  # one vectorised step for all users at a time
        new_session = rng.random(num_users) < 1.0 / mean_session_length
        gaps = np.where(
            new_session,
            86_400 + rng.exponential(3 * 86_400, size=num_users),
            1 + rng.exponential(180, size=num_users),
        )
        clusters = np.where(new_session, preferred_cluster(), clusters)
        follow = rng.random(num_users) < follow_probability
        next_items = np.where(follow & ~new_session, successor[item_steps[step - 1]], popular_item(clusters))
        item_steps[step] = next_items
        time_steps[step] = time_steps[step - 1] + gaps.astype(np.int64)
        cluster_steps[step] = clusters
    valid = np.arange(max_length)[:, None] < lengths[None, :]  # (T, U)
    liking = preference[users[None, :], cluster_steps] / preference.max(axis=1)[None, :]  # (T, U) in [0, 1]
    ratings = np.clip(np.rint(1.5 + 3.5 * liking + rng.normal(0, 0.7, size=liking.shape)), 1, 5).astype(np.int64)
    return pd.DataFrame(
        {
            "user_id": np.broadcast_to(users + 1, valid.shape).T[valid.T],
            "item_id": item_steps.T[valid.T],
            "timestamp": time_steps.T[valid.T],
            "rating": ratings.T[valid.T],
        }
    )


# Shapes of the benchmark logs: minimum events per user, column names (None: no header line), rating scale.
RATINGS_LOG_LAYOUTS = {
    # MovieLens-20M ratings.csv: userId,movieId,rating,timestamp with a header; half stars; >= 20 per user
    "movielens": {"min_length": 20, "columns": ["userId", "movieId", "rating", "timestamp"], "half_stars": True},
    # Amazon ratings_<Category>.csv (e.g. Books): user,item,rating,timestamp without header; whole stars
    "amazon": {"min_length": 1, "columns": None, "half_stars": False},
}


def write_ratings_log(
    path: str | os.PathLike,
    num_rows: int,
    num_users: int,
    num_items: int,
    *,
    layout: str = "movielens",
    seed: int = 0,
    chunk_rows: int = 1_000_000,
) -> Path:
    """Write a synthetic ratings CSV of ``num_rows`` rows for benchmarks, ``chunk_rows`` rows at a time (memory:
    O(users + items + chunk_rows), so logs larger than memory can be made).

    ``layout`` is ``"movielens"`` (MovieLens-20M's ``ratings.csv``: header, half stars, >= 20 ratings per user) or
    ``"amazon"`` (an Amazon ``ratings_<Category>.csv``: no header, whole stars, >= 1 rating per user). Users have
    log-normal history lengths summing to ``num_rows``; items (integer ids spread over a range of at least 131,262)
    have Zipf-like popularity and every one is rated at least once; each user's timestamps span about a year
    starting between 1995 and 2015. Rows are grouped by user and sorted by item within a user, so the time order
    must come from sorting. There may be repeated (user, item) pairs.
    """
    if layout not in RATINGS_LOG_LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(RATINGS_LOG_LAYOUTS)}, got {layout!r}")
    shape = RATINGS_LOG_LAYOUTS[layout]
    min_length = shape["min_length"]
    if num_rows < min_length * num_users or num_rows < num_items:
        raise ValueError(
            f"{num_rows} rows cannot give {num_users} users {min_length} ratings each and cover {num_items} items"
        )
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 1.2, size=num_users)
    lengths = min_length + np.floor((num_rows - min_length * num_users) * weights / weights.sum()).astype(np.int64)
    lengths[: num_rows - int(lengths.sum())] += 1
    del weights
    ends = np.cumsum(lengths)
    item_ids = np.sort(rng.choice(max(131_262, 5 * num_items), size=num_items, replace=False) + 1)
    item_ids = item_ids[rng.permutation(num_items)]  # popularity rank -> item id
    popularity_cdf = np.cumsum(1.0 / np.arange(1, num_items + 1) ** 0.9)
    popularity_cdf /= popularity_cdf[-1]
    coverage = rng.permutation(num_items)  # every item's rank is written at least once, spread over the chunks
    stars = np.arange(1, 11) / 2 if shape["half_stars"] else np.arange(1, 6, dtype=np.float64)
    star_weights = [1, 3, 3, 7, 4, 21, 11, 28, 8, 14] if shape["half_stars"] else [6, 5, 9, 20, 60]
    star_p = np.asarray(star_weights, dtype=np.float64) / sum(star_weights)
    names = shape["columns"] or ["user", "item", "rating", "timestamp"]
    schema = pa.schema(
        [(names[0], pa.int64()), (names[1], pa.int64()), (names[2], pa.float64()), (names[3], pa.int64())]
    )
    path = Path(path)
    options = pa_csv.WriteOptions(include_header=shape["columns"] is not None)
    first_user, covered = 0, 0
    with pa_csv.CSVWriter(path, schema, write_options=options) as writer:
        while first_user < num_users:
            start = ends[first_user - 1] if first_user else 0
            last_user = max(first_user + 1, int(np.searchsorted(ends, start + chunk_rows, side="right")))
            block = lengths[first_user:last_user]
            rows = int(block.sum())
            users = np.repeat(np.arange(first_user + 1, last_user + 1, dtype=np.int64), block)
            ranks = np.minimum(np.searchsorted(popularity_cdf, rng.random(rows)), num_items - 1)
            share = min(num_items - covered, -(-num_items * rows // num_rows), rows)
            ranks[rng.choice(rows, size=share, replace=False)] = coverage[covered : covered + share]
            covered += share
            starts = rng.integers(789_652_009, 1_427_784_002, size=last_user - first_user)
            timestamps = np.repeat(starts, block) + rng.integers(0, 365 * 86_400, size=rows)
            items = item_ids[ranks]
            order = np.lexsort((items, users))
            columns = [users[order], items[order], rng.choice(stars, size=rows, p=star_p), timestamps[order]]
            writer.write_table(pa.table(dict(zip(names, columns, strict=True)), schema=schema))
            first_user = last_user
    return path
