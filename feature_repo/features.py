"""Feast declarations of llmrec-ray: entities, sources, feature views, feature services.

Declarations only (Feast imports every .py here on apply/plan). The parquet files are written by
`llmrec build-features`; one row per (entity, event_timestamp), vectors as list<float32>.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.types import Array, Bool, Float32, Int64, String
from feast.value_type import ValueType

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="A user of the catalogue.")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING,
              description="An item of the catalogue.")

item_text_source = FileSource(
    name="item_text_embedding_source", path="data/item_text_embedding.parquet",
    timestamp_field="event_timestamp",
    description="Item text (title, genres, description) encoded; valid from the item's release.")
item_metadata_source = FileSource(
    name="item_metadata_source", path="data/item_metadata.parquet",
    timestamp_field="event_timestamp", description="Item title and genres, for display.")
user_history_source = FileSource(
    name="user_history_embedding_source", path="data/user_history_embedding.parquet",
    timestamp_field="event_timestamp",
    description="User history text encoded at snapshot times; a snapshot at s covers interactions < s.")

# ttl=0: a row stays valid until a newer one replaces it.
item_text_embedding = FeatureView(
    name="item_text_embedding", entities=[item], ttl=timedelta(0), source=item_text_source,
    schema=[Field(name="embedding", dtype=Array(Float32)), Field(name="n_tokens", dtype=Int64),
            Field(name="truncated", dtype=Bool)],
    online=True, description="Pooled LLM embedding of the item's text.")

item_metadata = FeatureView(
    name="item_metadata", entities=[item], ttl=timedelta(0), source=item_metadata_source,
    schema=[Field(name="title", dtype=String), Field(name="genres", dtype=String)],
    online=True, description="Display fields of the item.")

user_history_embedding = FeatureView(
    name="user_history_embedding", entities=[user], ttl=timedelta(0), source=user_history_source,
    schema=[Field(name="embedding", dtype=Array(Float32)), Field(name="n_tokens", dtype=Int64),
            Field(name="truncated", dtype=Bool), Field(name="n_history", dtype=Int64)],
    online=True, description="Pooled LLM embedding of the user's last N interactions (snapshots).")

training = FeatureService(
    name="training",
    features=[user_history_embedding[["embedding", "n_history"]], item_text_embedding[["embedding"]]],
    description="What the two-tower model trains on: user history and item text embeddings.")

serving = FeatureService(
    name="serving",
    features=[user_history_embedding[["embedding"]], item_text_embedding[["embedding"]],
              item_metadata],
    description="What `llmrec recommend` reads from the online store.")
