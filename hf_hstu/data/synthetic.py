"""A small seeded interaction log with learnable sequential and time structure (the default training dataset)."""

from __future__ import annotations

import numpy as np
import pandas as pd

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


def make_movielens_like_ratings(
    num_rows: int = 20_000_263, num_users: int = 138_493, num_items: int = 26_744, seed: int = 0
) -> pd.DataFrame:
    """A ratings table shaped like MovieLens-20M's ``ratings.csv`` (for benchmarks): columns userId, movieId,
    rating (half stars 0.5..5), timestamp, sorted by userId then movieId like the real file.

    Every user has at least 20 ratings (log-normal lengths summing to ``num_rows``), every one of the
    ``num_items`` movie ids (spread over 1..131,262) is rated at least once with Zipf-like popularity, and each
    user's timestamps are spread over a span of about a year starting between 1995 and 2015. There may be
    repeated (user, movie) pairs, which the real file does not have.
    """
    if num_rows < 20 * num_users or num_rows < num_items:
        raise ValueError(f"{num_rows} rows cannot give {num_users} users 20 ratings each and cover {num_items} items")
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 1.2, size=num_users)
    lengths = 20 + np.floor((num_rows - 20 * num_users) * weights / weights.sum()).astype(np.int64)
    lengths[: num_rows - int(lengths.sum())] += 1
    users = np.repeat(np.arange(1, num_users + 1, dtype=np.int64), lengths)
    movie_ids = np.sort(rng.choice(np.arange(1, 131_263), size=num_items, replace=False))
    popularity_cdf = np.cumsum(1.0 / np.arange(1, num_items + 1) ** 0.9)
    popularity_cdf /= popularity_cdf[-1]
    ranks = np.minimum(np.searchsorted(popularity_cdf, rng.random(num_rows)), num_items - 1)
    ranks[rng.choice(num_rows, size=num_items, replace=False)] = rng.permutation(num_items)
    items = movie_ids[rng.permutation(num_items)][ranks]
    starts = rng.integers(789_652_009, 1_427_784_002, size=num_users)
    timestamps = np.repeat(starts, lengths) + rng.integers(0, 365 * 86_400, size=num_rows)
    ratings = rng.choice(np.arange(1, 11) / 2, size=num_rows, p=[1, 3, 3, 7, 4, 21, 11, 28, 8, 14] / np.float64(100))
    order = np.lexsort((items, users))
    return pd.DataFrame(
        {"userId": users[order], "movieId": items[order], "rating": ratings[order], "timestamp": timestamps[order]}
    )
