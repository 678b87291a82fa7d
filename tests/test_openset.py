"""Open-set calibration: planning the sets, fitting the threshold, rescoring, the report CLI, duplicates."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from msdmatch.errors import ParameterError
from msdmatch.evaluation.openset import open_truth, removed_queries, truth_sets, write_open_set
from msdmatch.kernels.fusion import DEFAULT_THRESHOLD, FusionModel, read_threshold
from msdmatch.stages.calibrate import fit_from_matches, pick_threshold, rescore, top1_table


def test_removed_queries_is_a_fixed_share_independent_of_order():
    qs = [f"q{i:03d}" for i in range(101)]
    a = removed_queries(qs, fraction=0.5, seed=0)
    assert len(a) == 50 and a <= set(qs)
    assert removed_queries(qs[::-1], fraction=0.5, seed=0) == a
    assert removed_queries(qs, fraction=0.5, seed=1) != a
    assert removed_queries(qs, fraction=0.0, seed=0) == set()
    with pytest.raises(ParameterError, match="fraction"):
        removed_queries(qs, fraction=1.5)


def test_truth_sets_and_open_truth():
    t = truth_sets(["q1", "q1", "q2", "q3"], ["A", "B", "", "C"])
    assert t == {"q1": {"A", "B"}, "q2": set(), "q3": {"C"}}
    assert open_truth(t, {"q1"}) == {"q1": set(), "q2": set(), "q3": {"C"}}


def _corpus(root, name: str, rows: list[tuple[str, str, str]]):
    d = root / name
    (d / "audio").mkdir(parents=True)
    with open(d / "split.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["query_id", "track_id", "split"])
        w.writerows(rows)
    return d


def test_write_open_set_removes_every_duplicate_and_no_test_distractor(tmp_path):
    main = _corpus(tmp_path, "main", [
        ("q1", "T1", "valid"), ("q1", "T1dup", "valid"), ("q2", "T2", "valid"), ("q3", "T3", "valid"),
        ("q4", "T4", "valid"), ("q5", "T5", "test"), ("", "D1", "train")])
    extra = _corpus(tmp_path, "extra", [("", "E1", "valid"), ("", "E2", "test"), ("", "E3", "train")])
    s = write_open_set(str(main), out_dir=str(tmp_path / "o"), extra=[str(extra)], split="valid", seed=3)
    o = tmp_path / "o"
    closed = {p.split("/")[-1] for p in (o / "db-closed.txt").read_text().split()}
    # every preview of the main corpus (its test song's too: it is a distractor there), extras but E2
    assert closed == {f"{t}.mp3" for t in ("T1", "T1dup", "T2", "T3", "T4", "T5", "D1", "E1", "E3")}
    assert s["queries"] == 4 and s["no_match_a"] == 2 and s["no_match_b"] == 2
    queries = (o / "queries.txt").read_text().split()
    assert [q.split("/")[-1] for q in queries] == ["q1.mid", "q2.mid", "q3.mid", "q4.mid"]
    for half in "ab":
        with open(o / f"truth-{half}.csv") as fh:
            t = truth_sets(*zip(*[(r["query_id"], r["track_id"]) for r in csv.DictReader(fh)], strict=True))
        gone = {q for q, v in t.items() if not v}
        db = {p.split("/")[-1][:-4] for p in (o / f"db-{half}.txt").read_text().split()}
        dropped = closed - {f"{x}.mp3" for x in db}
        # exactly the valid tracks of the removed queries are gone, duplicates included
        assert dropped == {f"{x}.mp3" for q in gone for x in ({"T1", "T1dup"} if q == "q1" else {f"T{q[1]}"})}
        assert all(v <= db for v in t.values())
    gone_a = {r["query_id"] for r in csv.DictReader(open(o / "truth-a.csv")) if not r["track_id"]}
    gone_b = {r["query_id"] for r in csv.DictReader(open(o / "truth-b.csv")) if not r["track_id"]}
    assert gone_a.isdisjoint(gone_b) and gone_a | gone_b == {"q1", "q2", "q3", "q4"}
    assert json.loads((o / "openset.json").read_text())["db_closed"] == 9


def open_set_runs(rng: np.random.Generator, n_queries: int, n_cand: int = 10) -> tuple[dict, dict]:
    """MATCHES of a run where half the queries lost their recording; the true match (if any)
    scores lower on every score, and a no-match query's candidates are all unrelated."""
    q = np.repeat([f"q{i}" for i in range(n_queries)], n_cand)
    gone = rng.random(n_queries) < 0.5
    pos = rng.integers(0, n_cand, n_queries)
    y = np.zeros(q.size, bool)
    y[np.flatnonzero(~gone) * n_cand + pos[~gone]] = True
    shift = np.repeat(rng.normal(0, 0.08, n_queries), n_cand)

    def score(base, gain, sd):
        return base - gain * y + shift + rng.normal(0, sd, q.size)

    tracks = np.array([f"T{i}" for i in range(q.size)])
    truth_track = np.where(gone, "", tracks.reshape(n_queries, n_cand)[np.arange(n_queries), pos])
    m = {"query_id": q, "rank": np.tile(np.arange(1, n_cand + 1), n_queries), "track_id": tracks,
         "confidence": np.full(q.size, np.nan), "verify_score": score(0.8, 0.3, 0.06),
         "verify_std_score": score(0.75, 0.3, 0.06), "verify_dhs_score": score(0.8, 0.25, 0.08),
         "verify_high_score": score(0.8, 0.3, 0.08), "dhs_score": np.exp(score(2.5, 0.6, 0.2)),
         "dhs_matrix_mean": np.full(q.size, 15.0), "pse_distance": np.exp(score(1.5, 0.5, 0.3)),
         "stage": np.full(q.size, "verify")}
    return m, {"query_id": np.array([f"q{i}" for i in range(n_queries)]), "track_id": truth_track}


def test_fit_open_set_threshold_meets_its_false_accept_target(rng, tmp_path):
    runs = [open_set_runs(rng, 200) for _ in range(2)]
    model = fit_from_matches([m for m, _ in runs], [t for _, t in runs], target_false_accept=0.02)
    assert 0.0 < model.threshold < 1.0
    assert model.false_accept_rate <= 0.02
    assert model.true_accept_rate > 0.5
    assert model.metrics["cv_no_match_queries"] > 150 and model.metrics["runs"] == 2
    assert model.metrics["cv_top1_auc"] > 0.9
    fa = [p["false_accept_rate"] for p in model.metrics["operating_points"]]
    assert fa == sorted(fa, reverse=True)  # a higher threshold never accepts more
    # on fresh queries the threshold keeps the false accepts near the target
    m, t = open_set_runs(rng, 400)
    scored = rescore(m, model)
    top = top1_table(scored["confidence"], {**scored, "group": scored["query_id"],
                                            "y": np.isin(scored["track_id"], t["track_id"]).astype(float),
                                            "no_match": np.isin(scored["query_id"], t["query_id"][t["track_id"] == ""])})
    assert np.mean(top["p"][top["no_match"]] >= model.threshold) <= 0.05
    # the threshold travels with the model's JSON
    model.save(str(tmp_path / "f.json"))
    assert read_threshold(str(tmp_path / "f.json")) == model.threshold
    back = FusionModel.load(str(tmp_path / "f.json"))
    assert back.false_accept_rate == model.false_accept_rate and back == model


def test_verify_veto_is_kept_and_applied_to_the_cross_validated_rates(rng):
    runs = [open_set_runs(rng, 200) for _ in range(2)]
    plain = fit_from_matches([m for m, _ in runs], [t for _, t in runs])
    # a veto below every true match's verify score rejects every query: nothing is accepted
    strict = fit_from_matches([m for m, _ in runs], [t for _, t in runs], verify_veto=0.0)
    assert strict.verify_veto == 0.0 and strict.true_accept_rate == 0.0 and strict.false_accept_rate == 0.0
    # a veto above every verify score changes nothing
    loose = fit_from_matches([m for m, _ in runs], [t for _, t in runs], verify_veto=10.0)
    assert (loose.threshold, loose.true_accept_rate) == (plain.threshold, plain.true_accept_rate)
    assert loose.weights == plain.weights
    with pytest.raises(ParameterError, match="verify_veto needs the verify_score feature"):
        fit_from_matches([m for m, _ in runs], [t for _, t in runs], verify_veto=1.0,
                         names=("verify_std_score", "log_pse_distance"))


def test_closed_set_fit_keeps_the_default_threshold(rng):
    m, t = open_set_runs(rng, 200)
    has = t["track_id"] != ""
    keep = np.isin(m["query_id"], t["query_id"][has])
    closed = fit_from_matches({k: v[keep] for k, v in m.items()},
                              {"query_id": t["query_id"][has], "track_id": t["track_id"][has]})
    assert closed.threshold == DEFAULT_THRESHOLD and closed.false_accept_rate is None
    with pytest.raises(ParameterError, match="no query without a match"):
        pick_threshold(np.array([0.9]), np.array([False]))


def test_pick_threshold_by_hand():
    p = np.array([0.95, 0.31, 0.3, 0.1, 0.9])
    no_match = np.array([False, True, True, True, False])
    assert pick_threshold(p, no_match, target=0.0) == 0.32
    assert pick_threshold(p, no_match, target=0.34) == 0.31  # one of three may pass
    assert pick_threshold(p, no_match, target=1.0) == 0.01


def test_rescore_reranks_the_verified_rows(rng):
    m, t = open_set_runs(rng, 50)
    model = fit_from_matches(m, t, folds=0)
    m["stage"] = np.where(m["rank"] <= 8, "verify", "rerank")
    out = rescore(m, model)
    for q in np.unique(out["query_id"])[:10]:
        sel = out["query_id"] == q
        np.testing.assert_array_equal(out["rank"][sel], np.arange(1, 11))
        c = out["confidence"][sel]
        assert np.all(np.diff(c[:8]) <= 0) and np.isnan(c[8:]).all()
        assert set(out["track_id"][sel]) == set(m["track_id"][m["query_id"] == q])


def test_calibrate_cli_writes_the_veto(tmp_path):
    from msdmatch.cli import main
    from msdmatch.evaluation.metrics import write_matches

    m, t = open_set_runs(np.random.default_rng(1), 120)
    write_matches(m, tmp_path / "m.csv")
    (tmp_path / "t.csv").write_text("query_id,track_id\n" + "".join(
        f"{q},{x}\n" for q, x in zip(t["query_id"], t["track_id"], strict=True)))
    runner = CliRunner()
    r = runner.invoke(main, ["calibrate", str(tmp_path / "m.csv"), "--truth", str(tmp_path / "t.csv"),
                             "--verify-veto", "0.9", "--out", str(tmp_path / "f.json")])
    assert r.exit_code == 0, r.output
    model = FusionModel.load(str(tmp_path / "f.json"))
    assert model.verify_veto == 0.9 and model.lower is not None
    r = runner.invoke(main, ["calibrate", str(tmp_path / "m.csv"), "--truth", str(tmp_path / "t.csv"),
                             "--verify-veto", "-1", "--out", str(tmp_path / "g.json")])
    assert r.exit_code == 2 and "--verify-veto" in r.stderr and not (tmp_path / "g.json").exists()


def test_report_cli_warns_on_stderr_and_refuses_bad_truth(tmp_path):
    from msdmatch.cli import main
    from msdmatch.evaluation.metrics import write_matches

    m, _ = open_set_runs(np.random.default_rng(0), 3)
    write_matches({k: v for k, v in m.items() if k != "stage"}, tmp_path / "m.csv")
    (tmp_path / "t.csv").write_text("query_id,track_id\nq0,T1\nq1,\nq9,T5\n")  # q2 has no truth, q9 no rows
    runner = CliRunner()
    r = runner.invoke(main, ["report", str(tmp_path / "m.csv"), "--truth", str(tmp_path / "t.csv"),
                             "--out", str(tmp_path / "rep"), "--threshold", "0.5"])
    assert r.exit_code == 0, r.output
    assert "msdmatch: warning: 1 truth queries have no rows in matches" in r.stderr
    assert "have no truth rows and are ignored" in r.stderr
    assert "false accepts / no-match queries" in r.stdout
    json.loads((tmp_path / "rep" / "metrics.json").read_text())  # strict JSON
    assert (tmp_path / "rep" / "roc.png").is_file() and (tmp_path / "rep" / "reliability.png").is_file()
    (tmp_path / "bad.csv").write_bytes(b"query_id,track_id\nq\xe9,T1\n")
    (tmp_path / "cols.csv").write_text("query,track\nq0,T1\n")
    (tmp_path / "empty.csv").write_text("")
    for bad, msg in (("nope.csv", "does not exist"), ("bad.csv", "not UTF-8"),
                     ("cols.csv", "expected query_id,track_id"), ("empty.csv", "is empty")):
        r = runner.invoke(main, ["report", str(tmp_path / "m.csv"), "--truth", str(tmp_path / bad)])
        assert r.exit_code == 2, (bad, r.output)
        assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_old_fusion_json_is_refused_with_the_fix(tmp_path):
    from msdmatch.errors import ModelError

    d = {"format_version": 4, "feature_names": [], "weights": [], "bias": 0.0, "mean": [], "scale": []}
    with pytest.raises(ModelError, match="fit_fusion_openset.sh"):
        FusionModel.from_dict(d)
    (tmp_path / "old.json").write_text(json.dumps(d))
    assert read_threshold(str(tmp_path / "old.json")) == DEFAULT_THRESHOLD


def test_demo_duplicates_are_extra_previews(tmp_path):
    from msdmatch.demo import build_corpus
    from msdmatch.demo import corpus as C

    plain = C.plan_corpus(songs=3, distractors=1, seed=4, works=[], duplicates=0.0)
    dup = C.plan_corpus(songs=3, distractors=1, seed=4, works=[], duplicates=1.0)
    assert [s.track_id for s in plain] == [s.track_id for s in dup]  # the songs do not move
    assert all(s.duplicate for s in dup[:3]) and not dup[3].duplicate
    assert len({s.duplicate for s in dup[:3]} | {s.track_id for s in dup}) == 7
    with pytest.raises(ParameterError, match="duplicates"):
        C.plan_corpus(songs=3, distractors=1, seed=4, works=[], duplicates=2.0)
    summary = build_corpus(tmp_path, songs=1, distractors=0, seed=5, duplicates=1.0, n_workers=1,
                           progress=False)
    assert summary["duplicates"] == 1 and summary["previews"] == 1
    assert len(list((tmp_path / "audio").glob("*.mp3"))) == 2
    with open(tmp_path / "truth.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and len({r["query_id"] for r in rows}) == 1
    recs = [json.loads(line) for line in (tmp_path / "recordings.jsonl").read_text().splitlines()]
    dups = [r for r in recs if r.get("duplicate_of")]
    assert len(dups) == 1 and dups[0]["plan"]["kind"] in ("offset", "reencode")
    from msdmatch.demo import load_preview

    y, sr = load_preview(str(tmp_path / "audio" / f"{dups[0]['track_id']}.mp3"))
    assert 29.9 < y.size / sr < 30.3 and np.max(np.abs(y)) > 0.05


def test_melody_signature_is_one_tune_across_keys_and_pickups():
    from msdmatch.evaluation.openset import melody_grams, same_tune

    tune = [67, 69, 71, 72, 74, 72, 71, 69, 67, 64, 62, 64, 67, 69, 71, 67, 64, 62]
    g = melody_grams(tune)
    assert g == melody_grams([p + 5 for p in tune])  # transposed: the same signature
    assert same_tune(g, melody_grams([60] + tune[1:]))  # another first note (pickup)
    other = melody_grams([60, 64, 67, 72, 67, 64, 60, 62, 65, 69, 65, 62, 60, 59, 55, 59, 62, 67])
    assert not same_tune(g, other)
    assert melody_grams([60, 62, 64]) == frozenset() and not same_tune(frozenset(), g)


def test_alike_previews_rules():
    from msdmatch.evaluation.openset import alike_previews, melody_grams

    tune = melody_grams([67, 69, 71, 72, 74, 72, 71, 69, 67, 64, 62, 64, 67])
    other = melody_grams([60, 64, 67, 72, 67, 64, 60, 62, 65, 69, 65, 62, 60])
    melodies = {"oneills#1": (1, tune), "airds#9": (1, tune), "bach/a": (4, tune), "bach/b": (4, tune),
                "essen#3": (1, other)}
    q = {"q1": "oneills#1", "q2": "bach/a", "q3": "", "q4": "essen#3"}
    p = {"T_same": "oneills#1", "T_named": "airds#9", "T_chorale": "bach/b", "T_bach": "bach/a",
         "T_gen": "", "T_x": "essen#9"}
    got = alike_previews(q, p, melodies)
    # the same work, and a single-line tune with the same melody under another name
    assert got["q1"] == {"T_same", "T_named"}
    # a chorale harmonised anew is another piece; the same work stays alike
    assert got["q2"] == {"T_bach"}
    assert "q3" not in got and "q4" not in got


def test_write_open_set_counts_previews_of_the_query_tune_as_matches(tmp_path):
    """Real music21 works: O'Neill's 'I'm the Boy for Bewitching Them' is Aird's 'Fy let us a' to
    the Bridal' (the same notes); a preview of either is a match of the query, in every half."""
    main = _corpus(tmp_path, "main", [("q1", "T1", "valid"), ("q2", "T2", "valid"), ("", "D1", "train")])
    extra = _corpus(tmp_path, "extra", [("", "E1", "valid"), ("", "E2", "valid"), ("", "E3", "train")])
    works = {"main": {"T1": "oneills1850/1136-1175.abc#1151", "T2": "airdsAirs/book4.abc#632",
                      "D1": "airdsAirs/book1.abc#123"},
             "extra": {"E1": "airdsAirs/book4.abc#632", "E2": "bach/bwv415.mxl", "E3": ""}}
    for name, w in works.items():
        with open(tmp_path / name / "recordings.jsonl", "w") as fh:
            fh.writelines(json.dumps({"track_id": t, "query_id": "", "source": s, "error": ""}) + "\n"
                          for t, s in w.items())
    o = tmp_path / "o"
    s = write_open_set(str(main), out_dir=str(o), extra=[str(extra)], split="valid", seed=3)
    assert s["alike"] == {"q1": ["D1"], "q2": ["E1"]}
    closed = {p.split("/")[-1][:-4] for p in (o / "db-closed.txt").read_text().split()}
    for name in ("closed", "a", "b"):
        with open(o / f"truth-{name}.csv") as fh:
            t = truth_sets(*zip(*[(r["query_id"], r["track_id"]) for r in csv.DictReader(fh)], strict=True))
        db = {p.split("/")[-1][:-4] for p in (o / f"db-{name}.txt").read_text().split()}
        # the alike previews stay in every database and are valid matches there
        assert {"D1", "E1"} <= db and t["q1"] >= {"D1"} and t["q2"] >= {"E1"}
        assert all(v <= db for v in t.values())
        if name != "closed":
            # only the own recording of the removed query is gone; its tune still has a match
            assert closed - db == {"T1", "T2"} - set().union(*t.values()) and len(closed - db) == 1
            assert s[f"no_match_{name}"] == 0
    s2 = write_open_set(str(main), out_dir=str(tmp_path / "o2"), extra=[str(extra)], split="valid", seed=3,
                        alike=False)
    assert s2["alike"] == {} and s2["no_match_a"] + s2["no_match_b"] == 2
