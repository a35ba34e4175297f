"""One typed config for every stage: pydantic models, strict about unknown keys, one YAML file,
CLI overrides on top (`--set encode.batch_size=64`).

The sections live beside this module, by stage: `config_build` (data, serialize, encode,
featurestore) and `config_train` (train, evaluate, recommend); this module puts them together
(`Config`) and loads a run's YAML (`load_config`). Every section is importable from here.

A bad key fails with its dotted name (`encode.batchsize: extra inputs are not permitted`).

Environment variables are expanded once, by `load_config`, in every string value of the file and
the overrides: `${VAR}`, `$VAR`, `${VAR:-default}` (the default when VAR is unset or empty), `$$`
for a literal `$`. A variable that is not set and has no default is an error naming the file,
the key and the variable, with the comment at the end of the YAML line that uses it (how to get
the data it points at), when the file has one. The `Config` that comes back holds the expanded
values, and the stages use them as they are.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from llmrec_ray.config_build import (DataConfig, EncodeConfig, FeatureStoreConfig, SerializeConfig, Strict,
                                     SyntheticConfig)
from llmrec_ray.config_train import EvalConfig, GraphConfig, RecommendConfig, TrainConfig

__all__ = ["Config", "ConfigError", "DataConfig", "EncodeConfig", "EvalConfig", "FeatureStoreConfig",
           "GraphConfig", "RayConfig", "RecommendConfig", "SerializeConfig", "Strict", "SyntheticConfig",
           "TrainConfig", "env_hints", "expand_env", "load_config", "parse_override"]


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
# A YAML line with a comment at its end: `key: value  # comment` (no `#` in the value).
_COMMENTED = re.compile(r"^(?P<body>[^#]*?)\s+#\s*(?P<comment>\S.*?)\s*$")


def expand_env(value: str, key: str = "value", hints: dict[str, str] | None = None) -> str:
    """Expand `${VAR}`, `$VAR` and `${VAR:-default}` (the default when VAR is unset or empty);
    `$$` is a literal `$`, and a `$` before anything else stays as it is. An unset VAR without a
    default, or a `${` that is not `${NAME}` / `${NAME:-default}`, is a ConfigError naming `key`;
    for an unset VAR it ends with `hints[VAR]` (how to get what VAR points at) when given."""

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
            hint = (hints or {}).get(name)
            if hint:
                raise ConfigError(f"{key}: environment variable {name} is not set; {hint}")
            raise ConfigError(f"{key}: environment variable {name} is not set (in {value!r}; "
                              f"give a default with ${{{name}:-default}})")
        return got

    return _ENV_REF.sub(repl, value)


def env_hints(text: str) -> dict[str, str]:
    """{VAR: the comment at the end of the first line of the YAML `text` that uses VAR and has
    one}: where a config says how to get what the variable points at, e.g.
    `path: ${LLMREC_ML100K}  # get MovieLens 100K from ..., set LLMREC_ML100K to the folder`."""
    hints: dict[str, str] = {}
    for line in text.splitlines():
        m = _COMMENTED.match(line)
        if not m:
            continue
        for ref in _ENV_REF.finditer(m.group("body")):
            name = ref.group("braced") or ref.group("bare")
            if name:
                hints.setdefault(name, m.group("comment"))
    return hints


def _expand_all(node: Any, key: str, hints: dict[str, str]) -> Any:
    """`node` with expand_env applied to every string inside it (mapping values, list items)."""
    if isinstance(node, str):
        return expand_env(node, key or "<root>", hints)
    if isinstance(node, dict):
        return {k: _expand_all(v, f"{key}.{k}" if key else str(k), hints) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_expand_all(v, f"{key}.{i}", hints) for i, v in enumerate(node)]
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


def _read_yaml(path: str | Path) -> tuple[dict, str]:
    """The mapping in the YAML file at `path`, and the file's text."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data, text


def _apply_override(data: dict, text: str) -> None:
    """Set the `KEY=VALUE` override `text` in `data`, making the sections on its way."""
    keys, value = parse_override(text)
    node = data
    for k in keys[:-1]:
        child = node.setdefault(k, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {text!r}: {k} is not a section")
        node = child
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load the YAML at `path` (defaults when None), apply `KEY=VALUE` overrides, expand the
    environment variables in every string value (once, here), validate."""
    data, text, source = {}, "", "<defaults>"
    if path is not None:
        data, text = _read_yaml(path)
        source = str(path)
    for override in overrides or []:
        _apply_override(data, override)
    if overrides:
        source = f"{source} + overrides"
    try:
        data = _expand_all(data, "", env_hints(text))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None
