"""The config sections of what runs on the built features: the recommender and its training
(`train`, `train.graph`), the evaluation (`evaluate`) and serving (`recommend`). Every field has
its one-line doc; unknown keys are errors.

`llmrec_ray.config` puts them together with the feature-build sections into one `Config`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from llmrec_ray.config_build import Strict


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
        "user or item is its feature vector in the same space."))
    user_id_dropout: float | None = Field(None, ge=0, le=1, description=(
        "hybrid: probability that a user's ID is replaced by the unknown ID in training; None = "
        "id_dropout."))
    text_aux: float = Field(1.0, ge=0, description=(
        "hybrid: weight of an auxiliary InfoNCE loss that scores every item as if unseen (text "
        "only), so the text path, which serves cold items, is trained on every row, not only on "
        "the id_dropout ones (0 = off)."))
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
        "after a row's time with the unknown ID. auto = when items have release dates."))
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
