"""The typed config (llmrec_ray.config): defaults, YAML, strict keys, overrides, env expansion."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from llmrec_ray.config import Config, ConfigError, GraphConfig, expand_env, load_config, parse_override


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg == Config()
    assert cfg.data.source == "synthetic"
    assert cfg.train.epochs == 20
    assert cfg.evaluate.ks == [10, 20]
    assert cfg.serialize.snapshot_every == "7d"
    assert cfg.run_dir == Path("runs") / "synthetic"


def test_yaml_file(tmp_path):
    path = write(tmp_path, """
name: small
data:
  source: movielens-100k
  path: /data/ml-100k
train:
  epochs: 3
  lr: 0.01
evaluate:
  ks: [5]
""")
    cfg = load_config(path)
    assert cfg.name == "small"
    assert cfg.data.source == "movielens-100k"
    assert cfg.data.path == "/data/ml-100k"
    assert (cfg.train.epochs, cfg.train.lr) == (3, 0.01)
    assert cfg.evaluate.ks == [5]
    # untouched sections keep their defaults
    assert cfg.encode == Config().encode


def test_empty_yaml_is_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()


@pytest.mark.parametrize("text, key", [
    ("epochz: 3\n", "epochz"),
    ("encode:\n  batchsize: 32\n", "encode.batchsize"),
    ("data:\n  synthetic:\n    n_user: 5\n", "data.synthetic.n_user"),
])
def test_unknown_key_names_the_dotted_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert f"{key}:" in str(err.value)
    assert "run.yaml" in str(err.value)


def test_bad_value_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(write(tmp_path, "train:\n  epochs: 0\n"))


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_overrides_are_typed(tmp_path):
    path = write(tmp_path, "name: x\ntrain:\n  epochs: 7\n  lr: 0.5\n")
    cfg = load_config(path, ["train.epochs=3", "evaluate.ks=[5,10]", "encode.normalize=false",
                             "data.path=", "encode.batch_size=16"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.evaluate.ks == [5, 10]
    assert cfg.encode.normalize is False
    assert cfg.data.path is None  # empty value -> None
    assert cfg.encode.batch_size == 16
    # the file's other values stay
    assert cfg.name == "x" and cfg.train.lr == 0.5


def test_overrides_without_file():
    cfg = load_config(None, ["train.lr=0.001", "ray.num_cpus=2"])
    assert cfg.train.lr == pytest.approx(0.001)
    assert cfg.ray.num_cpus == 2


def test_parse_override():
    assert parse_override("a.b=c=d") == (["a", "b"], "c=d")  # split on the first '='
    assert parse_override(" train.epochs = 4") == (["train", "epochs"], 4)


@pytest.mark.parametrize("overrides, match", [
    (["train.epochs"], "KEY=VALUE"),
    (["=3"], "empty key"),
    (["encode.batchsize=32"], r"encode\.batchsize"),
    (["train.epochs.x=1"], r"train\.epochs: Input should be a valid integer"),
    (["train.epochs=3", "train.epochs.x=1"], "epochs is not a section"),
    (["train.epochs=many"], r"train\.epochs"),
])
def test_bad_override_raises(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_expand_env_default(monkeypatch):
    monkeypatch.delenv("LLMREC_TEST_DATA", raising=False)
    assert expand_env("${LLMREC_TEST_DATA:-/tmp/ml}/100k") == "/tmp/ml/100k"
    monkeypatch.setenv("LLMREC_TEST_DATA", "/data")
    assert expand_env("${LLMREC_TEST_DATA:-/tmp/ml}/100k") == "/data/100k"
    assert expand_env("$LLMREC_TEST_DATA/x") == "/data/x"
    assert expand_env("${LLMREC_TEST_DATA}/y") == "/data/y"
    # set but empty: `:-` uses the default, as in the shell; without a default it is empty
    monkeypatch.setenv("LLMREC_TEST_DATA", "")
    assert expand_env("${LLMREC_TEST_DATA:-/tmp/ml}") == "/tmp/ml"
    assert expand_env("a${LLMREC_TEST_DATA}b") == "ab"
    # unset with an empty default: empty
    monkeypatch.delenv("LLMREC_TEST_DATA")
    assert expand_env("a${LLMREC_TEST_DATA:-}b") == "ab"


def test_expand_env_literal_dollars(monkeypatch):
    monkeypatch.delenv("LLMREC_TEST_DATA", raising=False)
    assert expand_env("cost $$5, $${LLMREC_TEST_DATA}") == "cost $5, ${LLMREC_TEST_DATA}"
    # a `$` before anything but a name, `$` or `{` stays as it is
    assert expand_env("$5 and $ and 100%$") == "$5 and $ and 100%$"


@pytest.mark.parametrize("text, match", [
    ("${LLMREC_TEST_UNSET}/x", r"data\.path: environment variable LLMREC_TEST_UNSET is not set"),
    ("$LLMREC_TEST_UNSET/x", r"data\.path: environment variable LLMREC_TEST_UNSET is not set"),
    ("${LLMREC_TEST_UNSET", r"data\.path: .*must start \$\{NAME\}"),
    ("${1X}", r"data\.path: .*must start \$\{NAME\}"),
])
def test_expand_env_unset_without_default_raises(monkeypatch, text, match):
    monkeypatch.delenv("LLMREC_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError, match=match):
        expand_env(text, "data.path")


def test_env_expanded_at_load_in_every_string(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMREC_TEST_ROOT", "/srv")
    monkeypatch.delenv("LLMREC_TEST_UNSET", raising=False)
    path = write(tmp_path, """
name: ${LLMREC_TEST_NAME:-envrun}
output_dir: $LLMREC_TEST_ROOT/runs
data:
  source: generic
  path: ${LLMREC_TEST_UNSET:-/data}/ml-100k
  interactions: ${LLMREC_TEST_ROOT}/inter.parquet
  columns: {user_id: "${LLMREC_TEST_UNSET:-uid}"}
train:
  storage_path: ${LLMREC_TEST_UNSET:-s3://bucket}/ray_results
  epochs: ${LLMREC_TEST_UNSET:-3}
evaluate:
  baselines: [popularity, "${LLMREC_TEST_UNSET:-ease}"]
""")
    monkeypatch.delenv("LLMREC_TEST_NAME", raising=False)
    cfg = load_config(path, ["encode.cache_dir=${LLMREC_TEST_ROOT}/cache"])
    assert cfg.name == "envrun"
    assert cfg.output_dir == "/srv/runs" and cfg.run_dir == Path("/srv/runs/envrun")
    assert cfg.data.path == "/data/ml-100k"
    assert cfg.data.interactions == "/srv/inter.parquet"
    assert cfg.data.columns == {"user_id": "uid"}
    assert cfg.train.storage_path == "s3://bucket/ray_results"
    assert cfg.train.epochs == 3  # an expanded string validates as the field's type
    assert cfg.evaluate.baselines == ["popularity", "ease"]
    assert cfg.encode.cache_dir == "/srv/cache"
    # expanded once: a `$` in a variable's value is not expanded again
    monkeypatch.setenv("LLMREC_TEST_ROOT", "/srv/$LLMREC_TEST_UNSET")
    assert load_config(None, ["data.path=${LLMREC_TEST_ROOT}"]).data.path == "/srv/$LLMREC_TEST_UNSET"
    # an override replaces the file's value before expansion: the file's variable is not needed
    text = "data:\n  path: ${LLMREC_TEST_UNSET}\n"
    assert load_config(write(tmp_path, text), ["data.path=/d"]).data.path == "/d"


def test_unset_env_without_default_names_the_key(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMREC_TEST_UNSET", raising=False)
    path = write(tmp_path, "train:\n  storage_path: ${LLMREC_TEST_UNSET}/ray_results\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: train\.storage_path: environment variable "
                       r"LLMREC_TEST_UNSET is not set .*\$\{LLMREC_TEST_UNSET:-default\}"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"overrides: data\.path: environment variable LLMREC_TEST_UNSET"):
        load_config(None, ["data.path=$LLMREC_TEST_UNSET/ml"])
    with pytest.raises(ConfigError, match=r"evaluate\.baselines\.1: environment variable LLMREC_TEST_UNSET"):
        load_config(None, ["evaluate.baselines=[ease, '${LLMREC_TEST_UNSET}']"])


def all_fields(model: type[BaseModel], prefix: str = ""):
    """(dotted name, FieldInfo, is_section) for every field, recursively."""
    for name, info in model.model_fields.items():
        section = isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
        yield prefix + name, info, section
        if section:
            yield from all_fields(info.annotation, f"{prefix}{name}.")


def test_every_leaf_field_has_a_description():
    missing = [name for name, info, section in all_fields(Config)
               if not section and not (info.description or "").strip()]
    assert missing == []
    assert sum(not section for _, _, section in all_fields(Config)) >= 50


def test_every_field_has_a_description():
    missing = [name for name, info, _ in all_fields(Config) if not (info.description or "").strip()]
    assert missing == []


def test_every_config_model_has_a_docstring_and_forbids_extra_keys():
    models = {Config} | {info.annotation for _, info, section in all_fields(Config) if section}
    assert GraphConfig in models and len(models) == 11  # every section reached, the nested ones too
    for model in models:
        assert (model.__doc__ or "").strip(), model.__name__
        assert model.model_config.get("extra") == "forbid", model.__name__


def test_train_storage_path_keeps_uris_and_resolves_paths(tmp_path, monkeypatch):
    from llmrec_ray.train import storage_path

    monkeypatch.delenv("LLMREC_TEST_UNSET", raising=False)

    cfg = load_config(None, [f"output_dir={tmp_path}"])
    assert storage_path(cfg) == str((tmp_path / "synthetic" / "ray_results").resolve())
    # environment variables: expanded at load, used as they are
    cfg = load_config(None, ["train.storage_path=${LLMREC_TEST_UNSET:-s3://b}/ray_results"])
    assert cfg.train.storage_path == "s3://b/ray_results" and storage_path(cfg) == "s3://b/ray_results"
    for uri in ("s3://bucket/llmrec/ray_results", "gs://b/p", "local:///mnt/shared/ray_results"):
        assert storage_path(load_config(None, [f"train.storage_path={uri}"])) == uri
    assert storage_path(load_config(None, ["train.storage_path=rel/dir"])) == str(Path("rel/dir").resolve())
