"""Recommendations from the online store (`pipeline.recommend_stage`, `recommend_for_user`,
`recommend_for_text`, `llmrec recommend`) with the session's tiny trained run (conftest
`trained_run`): a known user, a new user described in words, the errors, the command line."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pytest

from llmrec_ray import pipeline
from llmrec_ray.cli import main
from llmrec_ray.recommend import recommend_for_text, recommend_for_user

# internal: the saved dataset and the served model (repoint here if they move)
from llmrec_ray.artifacts import load_model
from llmrec_ray.build import load_saved_dataset

SPACE = "space operas: starships crossing the galaxy, interstellar wars between fleets"
ROMANCE = "a quiet romance: two strangers falling in love, a wedding, love letters"


@pytest.fixture(scope="module")
def run(trained_run) -> dict:
    """The run's config, its `--set` overrides, each item's title and each user's items."""
    cfg = trained_run["cfg"]
    tables = load_saved_dataset(cfg.run_dir)
    items = tables["items"]
    inter = tables["interactions"]
    users = sorted(set(inter.column("user_id").to_pylist()))
    seen = {u: set(inter.filter(pc.equal(inter.column("user_id"), u)).column("item_id").to_pylist())
            for u in users}
    return {"cfg": cfg, "overrides": trained_run["overrides"], "users": users, "seen": seen,
            "titles": dict(zip(items.column("item_id").to_pylist(), items.column("title").to_pylist()))}


def check_list(recs: list[dict], k: int, titles: dict) -> None:
    """k distinct catalogue items, ranked 1..k, scores not increasing, each with its own title."""
    assert [r["rank"] for r in recs] == list(range(1, k + 1))
    assert len({r["item_id"] for r in recs}) == k
    assert all(set(r) == {"rank", "item_id", "title", "score", "model"} for r in recs)
    for r in recs:
        assert r["title"] == titles[r["item_id"]], r
    scores = [r["score"] for r in recs]
    assert scores == sorted(scores, reverse=True)


def cli(run, *args) -> list[str]:
    return ["recommend"] + [a for o in run["overrides"] for a in ("--set", o)] + list(args)


# ---- a known user -----------------------------------------------------------------------------------

def test_known_user_gets_k_unseen_items_best_first(run):
    user = run["users"][0]
    recs = pipeline.recommend_stage(run["cfg"], user, 5)
    check_list(recs, 5, run["titles"])
    assert not run["seen"][user] & {r["item_id"] for r in recs}


def test_excluding_seen_items_keeps_the_ranking_of_the_rest(run):
    """The model's list with the user's items excluded is its full ranking of the catalogue with
    those items taken out (`recommend_for_user` with nothing seen ranks everything). The model
    alone: a served blend's peer scores from the history, so its ranking depends on what is
    excluded (the served blend: `test_known_user_is_served_what_evaluate_tuned...`)."""
    cfg, user = run["cfg"], run["users"][1]
    repo, model = pipeline.feature_repo(cfg), load_model(cfg.run_dir)
    everything = recommend_for_user(repo, model, user, set(), 40)
    check_list(everything, 40, run["titles"])
    unseen = [r["item_id"] for r in everything if r["item_id"] not in run["seen"][user]]
    got = pipeline.recommend_stage(cfg, user, 10, model_only=True)
    assert [r["item_id"] for r in got] == unseen[:10]
    by_item = {r["item_id"]: r["score"] for r in everything}
    assert [r["score"] for r in got] == pytest.approx([by_item[r["item_id"]] for r in got], abs=1e-6)


def test_k_beyond_the_unseen_items_gives_each_unseen_item_once(run):
    user = run["users"][2]
    unseen = set(run["titles"]) - run["seen"][user]
    recs = pipeline.recommend_stage(run["cfg"], user, 1000)
    check_list(recs, len(unseen), run["titles"])
    assert {r["item_id"] for r in recs} == unseen


def test_different_users_get_different_lists(run):
    lists = {tuple(r["item_id"] for r in pipeline.recommend_stage(run["cfg"], u, 5)) for u in run["users"][:6]}
    assert len(lists) > 1


def test_unknown_user_is_an_error_naming_the_user(run):
    with pytest.raises(ValueError, match="'no-such-user' is not in the online store"):
        pipeline.recommend_stage(run["cfg"], "no-such-user", 5)


# ---- a new user described in words ------------------------------------------------------------------

def test_text_user_gets_k_items_and_the_text_matters(run):
    cfg = run["cfg"]
    space = pipeline.recommend_stage(cfg, None, 5, text=SPACE)
    check_list(space, 5, run["titles"])
    romance = pipeline.recommend_stage(cfg, None, 5, text=ROMANCE)
    check_list(romance, 5, run["titles"])
    assert [r["item_id"] for r in space] != [r["item_id"] for r in romance]
    # the same text, the same list (through the stage or the function itself)
    direct = recommend_for_text(pipeline.feature_repo(cfg), load_model(cfg.run_dir), cfg.encode, SPACE, 5)
    assert [r["item_id"] for r in direct] == [r["item_id"] for r in space]
    assert [r["score"] for r in direct] == pytest.approx([r["score"] for r in space], abs=1e-5)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_is_a_value_error(run, text):
    with pytest.raises(ValueError, match="--text is empty"):
        pipeline.recommend_stage(run["cfg"], None, 5, text=text)


def test_exactly_one_of_user_and_text(run):
    with pytest.raises(ValueError, match="exactly one of --user and --text"):
        pipeline.recommend_stage(run["cfg"], run["users"][0], 5, text=SPACE)
    with pytest.raises(ValueError, match="exactly one of --user and --text"):
        pipeline.recommend_stage(run["cfg"], None, 5)


# ---- the command line -------------------------------------------------------------------------------

def test_cli_prints_one_line_per_item(run, capsys):
    user = run["users"][0]
    want = pipeline.recommend_stage(run["cfg"], user, 3)
    capsys.readouterr()
    assert main(cli(run, "--user", user, "-k", "3")) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert len(lines) == 3, lines
    assert out.err.strip().splitlines()[-1] == f"scored by {want[0]['model']}"
    for line, r in zip(lines, want):
        rank, item, score, title = line.split(None, 3)
        assert (int(rank), item, title) == (r["rank"], r["item_id"], r["title"])
        assert float(score) == pytest.approx(r["score"], abs=5e-4)  # printed with 3 decimals


def test_cli_json_is_the_list_of_records(run, capsys):
    user = run["users"][0]
    want = pipeline.recommend_stage(run["cfg"], user, 4)
    capsys.readouterr()
    assert main(cli(run, "--user", user, "-k", "4", "--json")) == 0
    got = json.loads(capsys.readouterr().out)
    assert [{k: v for k, v in r.items() if k != "score"} for r in got] == \
        [{k: v for k, v in r.items() if k != "score"} for r in want]
    assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=1e-6)
    # a text user, as JSON
    assert main(cli(run, "--text", SPACE, "-k", "2", "--json")) == 0
    got = json.loads(capsys.readouterr().out)
    check_list(got, 2, run["titles"])


def test_cli_errors_exit_1_with_the_message(run, capsys):
    assert main(cli(run, "--user", "no-such-user")) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "error:" in captured.err and "'no-such-user'" in captured.err
    assert main(cli(run, "--text", "  ")) == 1
    assert "error: --text is empty" in capsys.readouterr().err


def test_cli_refuses_both_user_and_text(run, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(cli(run, "--user", run["users"][0], "--text", SPACE))
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("k", [0, -3])
def test_k_below_one_is_a_value_error(run, k):
    with pytest.raises(ValueError, match="at least one item"):
        pipeline.recommend_stage(run["cfg"], run["users"][0], k)


# ---- the served blend ---------------------------------------------------------------------------------

def test_known_user_is_served_what_evaluate_tuned_and_model_only_the_model(run, trained_run):
    """`llmrec evaluate` keeps its tuned blend beside the checkpoint; a known user is scored by it
    (its name on every row), `model_only` by the trained model alone, and the two rankings differ
    (the peer's scores count); a new user in words is matched against the items' text."""
    cfg, user = run["cfg"], run["users"][0]
    served = trained_run["evaluate"]["served"]
    kind = load_model(cfg.run_dir).kind
    blended = pipeline.recommend_stage(cfg, user, 20)
    alone = pipeline.recommend_stage(cfg, user, 20, model_only=True)
    assert {r["model"] for r in alone} == {kind}
    assert {r["model"] for r in blended} == {served}
    if served != kind:  # the tiny run's blend, or a closed-form model validation put above it
        assert [r["item_id"] for r in blended] != [r["item_id"] for r in alone]
    assert {r["model"] for r in pipeline.recommend_stage(cfg, None, 3, text=SPACE)} == {"text_match"}


def test_text_match_scores_are_the_text_cosine_with_a_popularity_prior():
    """z(cosine) + w * z(log1p(count)): w = 0 ranks by the text alone; a larger w lifts the
    popular item over the closer but obscure one."""
    from llmrec_ray.recommend import text_match_scores

    items = np.array([[1.0, 0.0], [0.9, 0.3], [0.0, 1.0]], np.float32)  # item 0 closest to the query
    counts = np.array([0, 500, 10])
    q = np.array([2.0, 0.0], np.float32)
    cos = np.array([1.0, 0.9 / np.hypot(0.9, 0.3), 0.0])
    z = lambda x: (x - x.mean()) / x.std()
    np.testing.assert_allclose(text_match_scores(q, items, counts, 0.0), z(cos), atol=1e-5)
    s = text_match_scores(q, items, counts, 1.0)
    np.testing.assert_allclose(s, z(cos) + z(np.log1p(counts)), atol=1e-5)
    assert np.argmax(s) == 1 and np.argmax(text_match_scores(q, items, counts, 0.0)) == 0
