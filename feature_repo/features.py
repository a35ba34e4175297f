"""Feast declarations of llmrec-ray: entities, sources, feature views, feature services.

Declarations only (Feast imports every .py here on apply/plan). The parquet files are written by
`llmrec build-features`; one row per (entity, event_timestamp), vectors as list<float32>.
"""

import json
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.types import Array, Bool, Float32, Int64, String
from feast.value_type import ValueType

# `llmrec build-features` records each view's current source directory (embedding views live
# under a directory of their encoder) and tags (encoder, dimension) in data/sources.json.
_SOURCES_FILE = Path(__file__).resolve().parent / "data" / "sources.json"
_SOURCES = json.loads(_SOURCES_FILE.read_text()) if _SOURCES_FILE.exists() else {}


def _path(view: str) -> str:
    return _SOURCES.get(view, {}).get("path", f"data/{view}")


def _tags(view: str) -> dict:
    return dict(_SOURCES.get(view, {}).get("tags", {}))


user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="A user of the catalogue.")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING,
              description="An item of the catalogue.")

item_text_source = FileSource(
    name="item_text_embedding_source", path=_path("item_text_embedding"),
    timestamp_field="event_timestamp",
    description="Item text (title, genres, description) encoded; valid from the item's release.")
item_metadata_source = FileSource(
    name="item_metadata_source", path=_path("item_metadata"),
    timestamp_field="event_timestamp", description="Item title and genres, for display.")
user_history_source = FileSource(
    name="user_history_embedding_source", path=_path("user_history_embedding"),
    timestamp_field="event_timestamp",
    description="User history vectors at snapshot times (the history text encoded, or pooled item "
                "vectors); a snapshot at s covers interactions < s.")
user_stats_source = FileSource(
    name="user_stats_source", path=_path("user_stats"), timestamp_field="event_timestamp",
    description="User statistics at the user's snapshot times; a snapshot at s covers interactions < s.")
item_stats_source = FileSource(
    name="item_stats_source", path=_path("item_stats"), timestamp_field="event_timestamp",
    description="Item statistics at the item's start and after every change; covers interactions < s.")

# ttl=0: a row stays valid until a newer one replaces it.
item_text_embedding = FeatureView(
    name="item_text_embedding", entities=[item], ttl=timedelta(0), source=item_text_source,
    schema=[Field(name="embedding", dtype=Array(Float32)), Field(name="n_tokens", dtype=Int64),
            Field(name="truncated", dtype=Bool)],
    online=True, tags=_tags("item_text_embedding"),
    description="Pooled LLM embedding of the item's text; tags name the encoder and dimension.")

item_metadata = FeatureView(
    name="item_metadata", entities=[item], ttl=timedelta(0), source=item_metadata_source,
    schema=[Field(name="title", dtype=String), Field(name="genres", dtype=String)],
    online=True, description="Display fields of the item.")

user_history_embedding = FeatureView(
    name="user_history_embedding", entities=[user], ttl=timedelta(0), source=user_history_source,
    schema=[Field(name="embedding", dtype=Array(Float32)), Field(name="n_tokens", dtype=Int64),
            Field(name="truncated", dtype=Bool), Field(name="n_history", dtype=Int64)],
    online=True, tags=_tags("user_history_embedding"),
    description="Pooled LLM embedding of the user's last N interactions (snapshots), or the pooled "
                "item vectors of the history (tag user_vectors: text, items_mean, items_recency); "
                "tags name the encoder and dimension.")

user_stats = FeatureView(
    name="user_stats", entities=[user], ttl=timedelta(0), source=user_stats_source,
    schema=[Field(name="n_interactions", dtype=Int64), Field(name="mean_rating", dtype=Float32),
            Field(name="last_interaction_unix", dtype=Int64), Field(name="n_30d", dtype=Int64)],
    online=True, description="Interactions so far, mean rating, last interaction time (unix s, 0 = "
                             "none), interactions in the last 30 days.")

item_stats = FeatureView(
    name="item_stats", entities=[item], ttl=timedelta(0), source=item_stats_source,
    schema=[Field(name="n_interactions", dtype=Int64), Field(name="mean_rating", dtype=Float32),
            Field(name="last_interaction_unix", dtype=Int64), Field(name="n_7d", dtype=Int64),
            Field(name="n_30d", dtype=Int64)],
    online=True, description="Popularity: interactions so far and in the last 7 and 30 days, mean "
                             "rating, last interaction time (unix s, 0 = none).")

# The trained model's vectors, written by `llmrec train` (declared once a training exported them;
# the graph model exports item vectors only):
# serving fetches them like any feature; tags name the encoder and the trained model.
def _tower_view(name: str, entity: Entity, description: str) -> FeatureView:
    return FeatureView(
        name=name, entities=[entity], ttl=timedelta(0),
        source=FileSource(name=f"{name}_source", path=_path(name), timestamp_field="event_timestamp"),
        schema=[Field(name="embedding", dtype=Array(Float32))], online=True, tags=_tags(name),
        description=description)


if "item_tower_embedding" in _SOURCES:
    item_tower_embedding = _tower_view("item_tower_embedding", item,
                                       "Item vectors of the trained model (its item tower, or the "
                                       "graph model's propagated item vectors).")
if "user_tower_embedding" in _SOURCES:
    user_tower_embedding = _tower_view("user_tower_embedding", user,
                                       "User vectors of the trained user tower, at the user snapshot times.")

training = FeatureService(
    name="training",
    features=[user_history_embedding[["embedding", "n_history"]], item_text_embedding[["embedding"]],
              user_stats, item_stats],
    description="What the recommenders train on: user history and item text embeddings, statistics.")

serving = FeatureService(
    name="serving",
    features=[user_history_embedding[["embedding"]], item_text_embedding[["embedding"]],
              item_metadata, user_stats, item_stats],
    description="What `llmrec recommend` reads from the online store.")
