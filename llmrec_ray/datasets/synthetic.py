"""The built-in dataset (the embedded default): deterministic from a seed, no files needed.

Items are built from topic vocabularies, so their title, genres and description name their topics;
users have tastes that are mixtures of a few topics and pick items mostly by taste, partly by
popularity, over months. The item text therefore carries the preference signal that an LLM encoder
can pick up, and some items are released mid-way (`available_from`) so cold-start items exist.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from llmrec_ray.console import progress
from llmrec_ray.datasets.base import Dataset
from llmrec_ray.datasets.validate import validate
from llmrec_ray.schemas import TIMESTAMP, Rejects

# topic -> (genre name, title nouns, adjectives, description phrases)
TOPICS: list[tuple[str, list[str], list[str], list[str]]] = [
    ("Space Opera", ["Starship", "Nebula", "Galaxy", "Orbit", "Comet", "Empire", "Voyager"],
     ["Distant", "Cosmic", "Stellar", "Silent"],
     ["a crew of smugglers crossing the galaxy", "an interstellar war between fleets",
      "astronauts stranded on a frozen moon", "a rebellion against a galactic empire"]),
    ("Heist", ["Vault", "Score", "Job", "Casino", "Diamond", "Getaway", "Safe"],
     ["Perfect", "Golden", "Last", "Inside"],
     ["a crew of thieves planning one last robbery", "a con artist fooling a casino owner",
      "a bank vault cracked in a single night", "a double-cross during a diamond theft"]),
    ("Romance", ["Heart", "Kiss", "Wedding", "Summer", "Letter", "Promise", "Valentine"],
     ["Tender", "Sweet", "Secret", "Endless"],
     ["two strangers falling in love in Paris", "a wedding planner who falls for the groom",
      "old flames meeting again after ten years", "love letters hidden in a bookshop"]),
    ("Horror", ["Curse", "Shadow", "Crypt", "Haunting", "Ghost", "Ritual", "Nightmare"],
     ["Dark", "Bloody", "Cursed", "Hollow"],
     ["a family haunted by a ghost in an old house", "a demonic ritual gone wrong",
      "teenagers hunted by a masked killer", "a cursed village in the woods"]),
    ("Cooking", ["Kitchen", "Recipe", "Bakery", "Feast", "Chef", "Spice", "Bistro"],
     ["Spicy", "Sweet", "Rustic", "Grand"],
     ["a young chef opening her first restaurant", "a baking contest in a small town",
      "a food critic learning to cook", "street food vendors competing in a market"]),
    ("Sports", ["Champion", "Goal", "Marathon", "Knockout", "Season", "Underdog", "Arena"],
     ["Final", "Fearless", "Golden", "Iron"],
     ["an underdog team fighting for the championship", "a boxer's comeback after an injury",
      "a coach rebuilding a losing team", "a runner training for the olympic marathon"]),
    ("History", ["Kingdom", "Crown", "Dynasty", "Battle", "Empire", "Revolution", "Legion"],
     ["Ancient", "Royal", "Fallen", "Imperial"],
     ["a queen defending her throne in medieval England", "soldiers at a famous battle",
      "the rise and fall of a Roman general", "a revolution that toppled a king"]),
    ("Detective", ["Case", "Clue", "Alibi", "Witness", "Motive", "Suspect", "Verdict"],
     ["Cold", "Hidden", "Twisted", "Quiet"],
     ["a detective solving a murder on a train", "an inspector chasing a serial poisoner",
      "a private eye hired to find a missing heiress", "a courtroom trial with a surprise witness"]),
    ("Animation", ["Dragon", "Robot", "Forest", "Puppy", "Island", "Toy", "Wizard"],
     ["Little", "Magic", "Brave", "Happy"],
     ["a talking animal on a big adventure", "toys that come alive at night",
      "a young wizard learning magic", "a friendly robot looking for a home"]),
    ("Documentary", ["Planet", "Ocean", "Journey", "Truth", "Frontier", "Wild", "Climate"],
     ["Wild", "Hidden", "True", "Blue"],
     ["filmmakers following wolves through a winter", "the hidden life of the deep ocean",
      "an investigation into a corporate scandal", "climbers attempting an unclimbed peak"]),
]


def _timestamp(day: np.ndarray, start: datetime) -> pa.Array:
    base = int(start.timestamp() * 1_000_000)
    seconds = np.rint(day * 86_400).astype(np.int64)
    return pa.array(base + seconds * 1_000_000, TIMESTAMP)


def make_items(rng: np.random.Generator, n_items: int, n_topics: int, days: int):
    """Items with a main topic (and sometimes a second), popularity, release day, and text."""
    topic = rng.integers(0, n_topics, n_items)
    second = np.where(rng.random(n_items) < 0.3, rng.integers(0, n_topics, n_items), -1)
    second[second == topic] = -1
    popularity = rng.pareto(1.2, n_items) + 1.0  # heavy tail, like real catalogues
    # 85% of items exist from day 0; the rest are released during the first 85% of the span.
    release = np.where(rng.random(n_items) < 0.85, 0.0, rng.uniform(0, 0.85 * days, n_items))
    titles, genres, descriptions = [], [], []
    for i in range(n_items):
        name, nouns, adjs, phrases = TOPICS[topic[i]]
        titles.append(f"The {rng.choice(adjs)} {rng.choice(nouns)} {i + 1}")
        g = [name] + ([TOPICS[second[i]][0]] if second[i] >= 0 else [])
        genres.append(", ".join(g))
        desc = f"A film about {rng.choice(phrases)}."
        if second[i] >= 0:
            desc += f" With elements of {TOPICS[second[i]][3][rng.integers(0, 4)]}."
        descriptions.append(desc)
    return topic, second, popularity, release, titles, genres, descriptions


def lognormal_sizes(cfg, n_items: int) -> np.ndarray:
    """(n_users,) heavy-tailed interactions per user (`history_shape: lognormal`): lognormal with
    mean `interactions_per_user`, between 5 and half the catalogue. Drawn from a generator of its
    own, so the rest of the dataset is the same draw as with the default shape."""
    sigma = cfg.history_sigma
    rng = np.random.default_rng([cfg.seed, 1])
    raw = rng.lognormal(np.log(cfg.interactions_per_user) - sigma ** 2 / 2, sigma, cfg.n_users)
    return np.clip(np.rint(raw), 5, max(5, n_items // 2)).astype(np.int64)


def make_interactions(rng: np.random.Generator, cfg, topic, second, popularity, release):
    """Each user: a topic mixture; picks by taste (or by popularity), never the same item twice."""
    n_items, n_topics = len(topic), cfg.n_topics
    users, items, days, ratings = [], [], [], []
    sizes = lognormal_sizes(cfg, n_items) if cfg.history_shape == "lognormal" else None
    bar = progress("generate synthetic interactions", cfg.n_users, "users", brief=True)
    for u in range(cfg.n_users):
        bar.update(1)
        taste = rng.dirichlet(np.full(n_topics, 0.25))
        affinity = taste[topic] + 0.5 * np.where(second >= 0, taste[np.maximum(second, 0)], 0.0)
        n = int(np.clip(rng.poisson(cfg.interactions_per_user), 5, n_items // 2)) if sizes is None \
            else int(sizes[u])
        start = rng.uniform(0, 0.6 * cfg.days)
        end = rng.uniform(start + 0.2 * cfg.days, cfg.days)
        when = np.sort(rng.uniform(start, end, n))
        seen: set[int] = set()
        for t in when:
            available = (release <= t)
            if seen:
                available[list(seen)] = False
            if not available.any():
                continue
            if rng.random() < cfg.popularity_weight:
                w = popularity * available
            else:
                w = (affinity ** 2) * np.sqrt(popularity) * available
                if w.sum() <= 0:
                    w = popularity * available
            i = int(rng.choice(n_items, p=w / w.sum()))
            seen.add(i)
            rating = np.clip(np.rint(2.0 + 6.0 * affinity[i] + rng.normal(0, 0.7)), 1, 5)
            users.append(u)
            items.append(i)
            days.append(t)
            ratings.append(rating)
    bar.close()
    return np.array(users), np.array(items), np.array(days), np.array(ratings, dtype=np.float32)


def load_synthetic(cfg) -> Dataset:
    """Build the synthetic dataset described by `cfg` (a `DataConfig` with source=synthetic)."""
    s = cfg.synthetic
    if s.n_topics > len(TOPICS):
        raise ValueError(f"data.synthetic.n_topics: at most {len(TOPICS)} topics are defined")
    rng = np.random.default_rng(s.seed)
    start = datetime.fromisoformat(s.start).replace(tzinfo=timezone.utc)
    topic, second, popularity, release, titles, genres, descriptions = make_items(
        rng, s.n_items, s.n_topics, s.days)
    u, i, d, r = make_interactions(rng, s, topic, second, popularity, release)
    items = pa.table({
        "item_id": [f"i{k + 1}" for k in range(s.n_items)],
        "title": titles, "genres": genres, "description": descriptions,
        "available_from": _timestamp(release, start),
    })
    users = pa.table({"user_id": [f"u{k + 1}" for k in range(s.n_users)]})
    interactions = pa.table({
        "user_id": pa.array([f"u{k + 1}" for k in u], pa.string()),
        "item_id": pa.array([f"i{k + 1}" for k in i], pa.string()),
        "event_timestamp": _timestamp(d, start),
        "rating": pa.array(r, pa.float32()),
    })
    rejects = Rejects()
    sources = {"interactions": "synthetic", "items": "synthetic", "users": "synthetic"}
    inter, items, users = validate(interactions, items, users, rejects, sources, (1.0, 5.0))
    if len(rejects):
        raise AssertionError(f"synthetic data failed validation: {rejects.rows[:3]}")
    return Dataset("synthetic", inter, items, users, rejects,
                   {"interactions": inter.num_rows, "items": items.num_rows, "users": users.num_rows})
