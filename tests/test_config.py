"""The typed config (llmrec_ray.config): defaults, YAML, strict keys, overrides, env expansion."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from llmrec_ray.config import (Config, ConfigError, GraphConfig, env_hints, expand_env, load_config,
                               parse_override)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
ML100K_CONFIGS = [ROOT / "configs" / "ml-100k.yaml", ROOT / "configs" / "ml-100k-smollm2.yaml"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path, monkeypatch, tmp_path):
    """The configs the project ships load with their data variables set (a key renamed or
    removed in the models without the YAML following fails here)."""
    monkeypatch.setenv("LLMREC_ML100K", str(tmp_path / "ml-100k"))
    monkeypatch.setenv("LLMREC_LASTFM", str(tmp_path / "lastfm"))
    cfg = load_config(path)
    assert cfg.name == path.stem
    if cfg.data.source == "movielens-100k":
        assert cfg.data.path == str(tmp_path / "ml-100k")


def test_no_shipped_config_reaches_into_the_developers_data():
    """A user has no ../shared/: a path into it, as a default or a value, is a bug."""
    for path in CONFIGS:
        assert "shared/" not in path.read_text(), path.name


@pytest.mark.parametrize("path", ML100K_CONFIGS, ids=lambda p: p.name)
def test_ml100k_without_its_variable_says_how_to_get_the_data(path, monkeypatch):
    monkeypatch.delenv("LLMREC_ML100K", raising=False)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: data.path: environment variable LLMREC_ML100K is not set; ")
    for words in ("MovieLens 100K", "https://grouplens.org/datasets/movielens/100k/", "unzip",
                  "set LLMREC_ML100K to the unzipped folder"):
        assert words in msg
    # an override of the key needs no variable (the benchmarks pass the path this way)
    assert load_config(path, ["data.path=/d"]).data.path == "/d"


def test_removed_offline_store_key_is_refused_by_name(tmp_path):
    """featurestore.offline_store is gone (the store is feature_store.yaml's): an old YAML that
    sets it fails as any unknown key does, naming it."""
    with pytest.raises(ConfigError, match=r"run\.yaml: featurestore\.offline_store: Extra inputs"):
        load_config(write(tmp_path, "featurestore:\n  offline_store: llmrec\n"))


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


def test_env_hints_are_the_comments_of_the_lines_using_a_variable():
    text = """# $LLMREC_A in a comment line: not a hint
data:
  path: ${LLMREC_A}/x  # get A from https://example.org/a#files, unzip it
  items: ${LLMREC_A}/items.csv  # a second hint for A: the first one wins
  interactions: "$LLMREC_B/i.csv"   #   B: ask the data team
  users: ${LLMREC_C:-/u}
  title: "C# and ${LLMREC_D}"  # no hint: a `#` inside the value
  description: $${LLMREC_E}  # a literal, not a variable
"""
    assert env_hints(text) == {"LLMREC_A": "get A from https://example.org/a#files, unzip it",
                               "LLMREC_B": "B: ask the data team"}


def test_unset_env_with_a_hint_gives_the_hint(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMREC_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError) as err:
        expand_env("${LLMREC_TEST_UNSET}/x", "data.path", {"LLMREC_TEST_UNSET": "download it from Y"})
    assert str(err.value) == "data.path: environment variable LLMREC_TEST_UNSET is not set; download it from Y"
    path = write(tmp_path, "data:\n  path: ${LLMREC_TEST_UNSET}/ml  # fetch it from Z\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: data\.path: environment variable "
                       r"LLMREC_TEST_UNSET is not set; fetch it from Z$"):
        load_config(path)


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


def test_every_name_imported_from_the_config_module_is_there():
    """`from llmrec_ray.config import X` keeps working for every X the code imports (the
    sections live in config_build / config_train)."""
    import ast

    import llmrec_ray.config as config

    names = set()
    for folder in ("llmrec_ray", "jobs", "benchmarks", "tests", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == "llmrec_ray.config":
                    names.update(a.name for a in node.names)
    assert {"Config", "ConfigError", "load_config", "DataConfig", "TrainConfig"} <= names
    assert [n for n in sorted(names) if not hasattr(config, n)] == []


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
