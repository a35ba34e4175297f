"""Security rules: remote code and pickle weights only by opt-in, secrets only from the
environment (never in logs, config dumps or the Feast registry), no pickle of untrusted data.

(Pickle weights refused without `encode.allow_unsafe_weights`: test_encode_families.py.)
"""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import pytest

from llmrec_ray.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cret-Pa55word"


@pytest.mark.parametrize("path", [None] + sorted((ROOT / "configs").glob("*.yaml")),
                         ids=lambda p: p.name if p else "defaults")
def test_no_shipped_config_opts_into_remote_code_or_pickle_weights(path, monkeypatch, tmp_path):
    """Remote code and pickle weights are a user's explicit choice: neither the defaults nor a
    config the project ships turn them on."""
    monkeypatch.setenv("LLMREC_ML100K", str(tmp_path))
    monkeypatch.setenv("LLMREC_LASTFM", str(tmp_path))
    cfg = load_config(path, [])
    assert (cfg.encode.trust_remote_code, cfg.encode.allow_unsafe_weights) == (False, False)


def test_remote_code_model_is_refused_without_opt_in(tmp_path):
    """A model whose config needs custom code does not load (no code from the model dir runs)."""
    from llmrec_ray.encoder import Encoder

    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llmrec-evil", "auto_map": {"AutoModel": "modeling_evil.EvilModel",
                                                  "AutoConfig": "configuration_evil.EvilConfig"}}))
    marker = tmp_path / "code-ran"
    (tmp_path / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (tmp_path / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises((ValueError, OSError, KeyError)):
        Encoder(str(tmp_path), "mean", 32, True, device="cpu", dtype="float32")
    assert not marker.exists()


def test_redis_secret_stays_in_the_environment(repo_dir, monkeypatch, caplog, tmp_path):
    """The Redis connection string (with its password) comes from LLMREC_REDIS only: it is not in
    the config dump, any file of the repo (feature_store.yaml is not rewritten) or the logs."""
    from llmrec_ray.config import FeatureStoreConfig
    from llmrec_ray.featurestore import open_repo

    monkeypatch.setenv("LLMREC_REDIS", f"127.0.0.1:1,password={SECRET}")
    caplog.set_level(logging.DEBUG)
    cfg = load_config(None, [f"featurestore.repo_path={repo_dir}", "featurestore.online_store=redis"])
    repo = open_repo(FeatureStoreConfig(**cfg.featurestore.model_dump()))
    assert repo.store.config.online_store.type == "redis"
    dump = json.dumps(cfg.model_dump(), default=str)
    assert SECRET not in dump and "LLMREC_REDIS" in dump  # the variable's name, not its value
    for path in repo_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in caplog.text


def test_no_config_key_holds_a_secret():
    """Connection strings and credentials have no config key: every key about a connection names
    the environment variable that holds it (`..._env`), so no secret is in a config or its dump."""
    from pydantic import BaseModel

    from llmrec_ray.config import Config

    def keys(model, prefix=""):
        for name, info in model.model_fields.items():
            yield prefix + name
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                yield from keys(info.annotation, f"{prefix}{name}.")

    secret = ("connection", "password", "secret", "credential", "api_key", "auth")
    carrying = [k for k in keys(Config) if any(w in k.rsplit(".", 1)[-1] for w in secret)]
    assert "featurestore.redis_connection_env" in carrying
    assert [k for k in carrying if not k.endswith("_env")] == []


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def test_no_pickle_of_untrusted_data():
    """The package never unpickles: torch.load always with weights_only=True, and no pickle,
    cloudpickle, joblib or numpy allow_pickle loads."""
    for path in (ROOT / "llmrec_ray").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "cloudpickle", "dill", "joblib"} & set(names), (path, node.lineno)
        for call in _calls(tree):
            name = ast.unparse(call.func)
            kwargs = {k.arg: ast.unparse(k.value) for k in call.keywords}
            if name.endswith("torch.load") or name == "load" and "weights_only" in kwargs:
                assert kwargs.get("weights_only") == "True", (path, call.lineno)
            if name.endswith("np.load"):
                assert kwargs.get("allow_pickle", "False") == "False", (path, call.lineno)
