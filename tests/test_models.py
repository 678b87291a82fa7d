"""DHS/PSE nets, training data, loss, validation metric, training and export."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from msdmatch.errors import ModelError, ParameterError  # noqa: E402
from msdmatch.models.export import check_parity, export_model, export_onnx  # noqa: E402
from msdmatch.models.nets import NetConfig, build_net, default_config  # noqa: E402
from msdmatch.models.pairs import (  # noqa: E402
    MemoryStore,
    align_pairs,
    aligned_batch,
    collect_pairs,
    generated_corpus,
    pad_batch,
    read_truth,
    sequence_batch,
    transpose_bins,
    zscore_stats,
)
from msdmatch.models.train import (  # noqa: E402
    HParams,
    bhattacharyya,
    default_hparams,
    fit,
    nce_loss,
    pair_loss,
    train_models,
)
from msdmatch.params import DHS_HUB_N  # noqa: E402

torch.set_num_threads(1)

TINY = {
    "dhs": NetConfig(kind="dhs", filters=(4, 4, 8), convs_per_group=1, dense=(32,), out_dim=32),
    "pse": NetConfig(kind="pse", filters=(4,), dense=(32, 32), out_dim=128, attention_dim=16),
    "pse-shipped-shape": NetConfig(kind="pse", filters=(4, 8), dense=(32,), out_dim=128, attention_dim=16,
                                   time_pool=4, step_dim=32, aux_bits=32, normalize=True),
    # a pooled-hash PSE whose front end is TINY["dhs"]
    "pse-pooled": NetConfig(kind="pse", filters=(4, 4, 8), convs_per_group=1, dense=(32,), out_dim=128,
                            step_dim=32, attention_dim=8, lags=(1, 3), normalize=True),
}


def _seqs(rng, lengths, n_bins=48):
    out = []
    for n in lengths:
        s = rng.random((n, n_bins)).astype(np.float32) ** 3
        out.append(s / np.linalg.norm(s, axis=1, keepdims=True))
    return out


@pytest.fixture(scope="module")
def corpus():
    return generated_corpus(n_songs=12, song_frames=(200, 300), preview_frames=120,
                            n_distractors=2, seed=3)


@pytest.fixture(scope="module")
def aligned(corpus):
    qs, ds, truth = corpus
    pairs = collect_pairs(qs, ds, truth, splits=("train", "valid"))
    kept, rejected = align_pairs(pairs)
    return kept, rejected


@pytest.mark.parametrize("kind", ["dhs", "pse"])
def test_shapes_and_dtypes(kind, rng):
    net = build_net(default_config(kind)).eval()
    x, m = pad_batch(_seqs(rng, [37, 20]))
    with torch.no_grad():
        y = net(torch.from_numpy(x), torch.from_numpy(m))
    assert y.dtype == torch.float32
    if kind == "dhs":
        assert tuple(y.shape) == (2, 5, 32)  # ceil(37 / 8)
        assert torch.all(y[1, 3:] == 0)  # steps past ceil(20 / 8) are padding
    else:
        assert tuple(y.shape) == (2, 128)
    assert torch.all(y.abs() < 1)


@pytest.mark.parametrize("name", ["dhs-midi-synth", "dhs-midi-pianoroll", "pse-midi-synth", "pse-midi-pianoroll"])
def test_shipped_models_have_the_default_architecture(name):
    """`msdmatch train` (and scripts/train_shipped.sh) trains the widths that are shipped."""
    from msdmatch.io.modelfile import shipped_model_dir

    info = json.loads((shipped_model_dir() / name / "model.json").read_text())
    kind, modality = name.split("-", 1)
    # fields added after a model was trained take their defaults, as at load time
    assert NetConfig.from_dict(info["architecture"]) == default_config(kind, midi_modality=modality)


def test_config_rejects_bad_dhs_depth():
    with pytest.raises(ParameterError, match="exactly 3 conv groups"):
        NetConfig(kind="dhs", filters=(8, 8))


@pytest.mark.parametrize("kind", ["dhs", "pse", "pse-plain", "pse-synth"])
def test_batch_independence(kind, rng):
    torch.manual_seed(0)
    cfg = {"pse-plain": TINY["pse"], "pse-synth": default_config("pse", "midi-synth")}.get(kind) or default_config(kind)
    kind = kind.split("-")[0]
    net = build_net(cfg).eval()
    seqs = _seqs(rng, [61, 8, 130, 17])
    x, m = pad_batch(seqs)
    with torch.no_grad():
        batched = net(torch.from_numpy(x), torch.from_numpy(m)).numpy()
        for k, s in enumerate(seqs):
            xs, ms = pad_batch([s])
            single = net(torch.from_numpy(xs), torch.from_numpy(ms)).numpy()[0]
            if kind == "pse":
                assert np.abs(single - batched[k]).max() <= 1e-4
            else:
                n = -(-len(s) // 8)
                assert single.shape[0] == n
                assert np.array_equal(single > 0, batched[k, :n] > 0)


def test_bhattacharyya_values():
    a = np.array([0.0, 0.1, 0.2, 0.3])
    assert bhattacharyya(a, a, bins=4) == pytest.approx(1.0)
    assert bhattacharyya(a, a + 10.0, bins=10) == pytest.approx(0.0)
    # p = [1/2, 1/2, 0], q = [0, 1/2, 1/2]  ->  BC = sqrt(1/4) = 0.5
    edges = np.array([-0.5, 0.5, 1.5, 2.5])
    assert bhattacharyya([0, 1], [1, 2], bins=edges) == pytest.approx(0.5)
    with pytest.raises(ParameterError, match="validation split empty"):
        bhattacharyya([], [1.0])


def test_pair_loss_terms():
    fx = torch.zeros(3, 4)
    gy = torch.ones(3, 4)  # squared distance 4
    far = torch.full((3, 4), 10.0)
    loss = pair_loss(fx, gy, far, fx, alpha=2.0, margin=1.0, beta=0.0)
    assert float(loss) == pytest.approx(4.0)  # negatives beyond the margin cost nothing
    loss = pair_loss(fx, gy, fx, fx, alpha=2.0, margin=1.0, beta=0.5)
    assert float(loss) == pytest.approx(4.0 + 2.0 * 1.0 + 0.5 * 4.0)


def test_read_truth_skips_distractors_and_checks_split(tmp_path):
    p = tmp_path / "split.csv"
    p.write_text("query_id,track_id,split\nq1,TR1,train\n,TR2,\nq3,TR3,valid\n")
    assert read_truth(p) == [("q1", "TR1", "train"), ("q3", "TR3", "valid")]
    with pytest.raises(ParameterError, match="must be one of"):
        read_truth([("q1", "TR1", "training")])
    bad = tmp_path / "bad.csv"
    bad.write_text("midi,track\nq1,TR1\n")
    with pytest.raises(ParameterError, match="lacks columns"):
        read_truth(bad)


def test_known_time_maps_align_pairs_that_dtw_would_reject(rng):
    from msdmatch.models.pairs import Pair

    fr = 20.0
    song = _seqs(rng, [300])[0]
    same = Pair("q", "t0", "train", song, song[50:170].copy())  # the preview is song frames 50..169
    noise = Pair("q", "t1", "train", song, _seqs(rng, [120])[0])  # unrelated audio, said to be frames 0..119
    outside = Pair("q", "t2", "train", song, song[:120].copy())  # a map that puts it past the song's end
    known = {"t0": lambda s: s + 50 / fr, "t1": lambda s: s, "t2": lambda s: s + 295 / fr}
    kept, rejected = align_pairs([same, noise, outside], known=known, frame_rate=fr)
    assert [p.track_id for p in kept] == ["t0", "t1"] and [p.track_id for p in rejected] == ["t2"]
    np.testing.assert_array_equal(kept[0].midi_w, kept[0].audio_w)
    assert kept[0].midi_span == (50, 170) and kept[0].confidence == 1.0
    np.testing.assert_array_equal(kept[1].midi_w, song[:120])
    # without the maps, DTW keeps the true pair and rejects the unrelated one
    dtw_kept, _ = align_pairs([Pair("q", "t0", "train", song, song[50:170].copy()),
                               Pair("q", "t1", "train", song, noise.audio)])
    assert [p.track_id for p in dtw_kept] == ["t0"]


def test_alignment_filter_rejects_mismatched_pair(corpus):
    qs, ds, truth = corpus
    q0, t0, _ = truth[0]
    _, t1, _ = truth[1]
    pairs = collect_pairs(qs, ds, [(q0, t0, "train"), (q0, t1, "train")])
    kept, rejected = align_pairs(pairs)
    assert [p.track_id for p in kept] == [t0]
    assert [p.track_id for p in rejected] == [t1]
    assert kept[0].confidence >= 0.5 > rejected[0].confidence
    p = kept[0]
    assert p.audio_w.shape == p.midi_w.shape and p.audio_w.shape[1] == 48
    # aligned frames are more similar than the same frames 30 steps apart
    aligned_sim = np.mean(np.sum(p.audio_w * p.midi_w, 1))
    shifted_sim = np.mean(np.sum(p.audio_w * np.roll(p.midi_w, 30, axis=0), 1))
    assert aligned_sim > 0.8 and aligned_sim > shifted_sim + 0.05


def test_zscore_stats_and_aligned_batch(aligned, rng):
    kept, _ = aligned
    mean, std = zscore_stats(p.audio for p in kept)
    assert mean.shape == std.shape == (48,) and np.all(std > 0)
    xa, xm, mask = aligned_batch(kept, rng=rng, batch=5, crop=40)
    assert xa.shape == xm.shape == (5, 40, 48) and mask.shape == (5, 40)


@pytest.mark.parametrize("kind", ["dhs", "pse"])
def test_loss_decreases(kind, aligned):
    kept, _ = aligned
    train = [p for p in kept if p.split == "train"]
    valid = [p for p in kept if p.split == "valid"]
    hp = HParams(lr=3e-3, alpha=1.0, margin=2.0 if kind == "dhs" else 1.0,
                 beta=0.0, batch=8, crop=48, audio_frames=96, midi_frames=160)
    res = fit(kind, train, valid, config=TINY[kind], hparams=hp, seed=1, max_steps=60,
              eval_every=20, patience=10)
    loss = res.history["loss"]
    assert len(loss) == 3 and loss[-1] < 0.8 * loss[0]
    assert 0.0 <= res.metrics["bc"] <= 1.0


def test_pse_contrastive_loss_with_auxiliary_head_decreases(aligned):
    """The conv PSE recipe: NCE + auxiliary aligned hash loss + transposition, 4x time pooling."""
    kept, _ = aligned
    train = [p for p in kept if p.split == "train"]
    valid = [p for p in kept if p.split == "valid"]
    hp = default_hparams("pse", lr=3e-3, batch=8, aux_crop=48, transpose=2, audio_frames=96,
                         midi_frames=160, negatives=0)
    assert hp.loss == "nce" and hp.aux > 0
    res = fit("pse", train, valid, config=TINY["pse-shipped-shape"], hparams=hp, seed=1, max_steps=120,
              eval_every=40, patience=10)
    loss = res.history["loss"]
    assert len(loss) == 3 and loss[-1] < 0.8 * loss[0]
    assert 0.0 <= res.metrics["bc"] <= 1.0


def test_shared_nets_train_one_set_of_weights_with_their_own_statistics(aligned):
    kept, _ = aligned
    train = [p for p in kept if p.split == "train"]
    valid = [p for p in kept if p.split == "valid"]
    hp = default_hparams("pse", "midi-synth", lr=3e-3, batch=8, aux_crop=48, audio_frames=96,
                         midi_frames=160, negatives=4)  # the synthesized-CQT recipe, extra negatives included
    cfg = dataclasses.replace(TINY["pse-shipped-shape"], shared=True)
    res = fit("pse", train, valid, config=cfg, hparams=hp, seed=1, max_steps=40, eval_every=20, patience=10)
    fs, gs = res.f.state_dict(), res.g.state_dict()
    weights = [k for k in fs if not k.endswith((".mean", ".std"))]
    assert weights and all(torch.equal(fs[k], gs[k]) for k in weights)
    assert not torch.equal(fs["front.mean"], gs["front.mean"])  # audio and MIDI z-scores differ
    assert res.history["loss"][-1] < res.history["loss"][0]


def test_nce_loss_prefers_matched_rows():
    x = torch.eye(4)
    assert nce_loss(x, x, temperature=0.1) < nce_loss(x, x.roll(1, 0), temperature=0.1)
    assert nce_loss(x, x, temperature=0.1) < 1e-6


def test_nce_loss_extra_previews_are_negatives_for_the_midi_side_only():
    gy = torch.eye(4)[:2]
    far = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    base = nce_loss(gy, gy, temperature=0.5)
    # a far extra preview barely matters; one equal to MIDI row 0 halves its odds
    assert nce_loss(torch.cat([gy, far]), gy, temperature=0.5) > base
    confusable = nce_loss(torch.cat([gy, gy[:1]]), gy, temperature=0.5)
    logits = -torch.cdist(gy, torch.cat([gy, gy[:1]])) ** 2 / 0.5
    labels = torch.arange(2)
    ce = torch.nn.functional.cross_entropy
    expect = 0.5 * (ce(logits, labels) + ce(logits[:, :2].T, labels))
    assert torch.allclose(confusable, expect) and confusable > base + 0.15  # ~ log(2) / 4


def test_sequence_batch_extra_previews_come_from_other_pairs(aligned):
    kept, _ = aligned
    xa, ma, xm, mm = sequence_batch(kept, rng=np.random.default_rng(3), batch=2, audio_frames=10**4,
                                    midi_frames=10**4, extra_audio=3)
    assert xa.shape[0] == ma.shape[0] == 5 and xm.shape[0] == mm.shape[0] == 2

    def which(x, m):  # index of the pair whose whole preview this row is
        n = int(m.sum())
        return next(i for i, p in enumerate(kept) if len(p.audio) == n and np.array_equal(x[:n], p.audio))

    batch = {which(xa[i], ma[i]) for i in range(2)}
    assert all(which(xa[i], ma[i]) not in batch for i in range(2, 5))
    # a batch that holds every pair has no other previews to add
    xa, *_ = sequence_batch(kept[:1], rng=np.random.default_rng(3), batch=2, extra_audio=3)
    assert xa.shape[0] == 2


def test_transposition_shifts_both_sides_alike(aligned, rng):
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    assert np.array_equal(transpose_bins(x, 2), [[0, 0, 0, 1, 2, 3], [0, 0, 6, 7, 8, 9]])
    assert np.array_equal(transpose_bins(x, -1), [[1, 2, 3, 4, 5, 0], [7, 8, 9, 10, 11, 0]])
    kept, _ = aligned
    p = kept[0]
    xa, xm, _ = aligned_batch([p], rng=np.random.default_rng(5), batch=1, crop=len(p.audio_w), transpose=3)
    # the same shift on both sides: find it from the audio and check the MIDI
    k = next(k for k in range(-3, 4) if np.array_equal(xa[0], transpose_bins(p.audio_w, k)))
    assert np.array_equal(xm[0], transpose_bins(p.midi_w, k))
    xa, _, xm, _ = sequence_batch([p], rng=rng, batch=4, audio_frames=10**4, midi_frames=10**4, transpose=0)
    assert np.array_equal(xa[0], p.audio) and np.array_equal(xm[0], p.midi)


def test_seed_reproducibility(aligned):
    kept, _ = aligned
    train = [p for p in kept if p.split == "train"]
    valid = [p for p in kept if p.split == "valid"]
    hp = HParams(batch=6, crop=32)
    runs = [fit("dhs", train, valid, config=TINY["dhs"], hparams=hp, seed=7, max_steps=6,
                eval_every=3, patience=5) for _ in range(2)]
    sa, sb = runs[0].f.state_dict(), runs[1].f.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    other = fit("dhs", train, valid, config=TINY["dhs"], hparams=hp, seed=8, max_steps=6,
                eval_every=3, patience=5).f.state_dict()
    assert not all(torch.equal(sa[k], other[k]) for k in sa)


@pytest.mark.parametrize("kind", ["dhs", "pse", "pse-synth"])
def test_onnx_parity(kind, tmp_path, rng, corpus):
    torch.manual_seed(0)
    kind, _, modality = kind.partition("-")
    net = build_net(default_config(kind, f"midi-{modality}" if modality else None))
    net.front.set_stats(np.full(48, 0.1), np.full(48, 0.05))
    path = export_onnx(net, tmp_path / "net.onnx")
    qs, _, _ = corpus
    parity = check_parity(net, path, real=[qs.sequence(0), qs.sequence(1)[:50]])
    assert parity["max_abs_diff"] <= 1e-4
    if kind == "dhs":
        assert parity["bit_agreement"] >= 0.999

    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["features", "mask"]
    assert [o.name for o in sess.get_outputs()] == ["hashes" if kind == "dhs" else "embedding"]


def test_parity_check_catches_a_different_net(tmp_path):
    torch.manual_seed(0)
    net = build_net(default_config("pse"))
    path = export_onnx(net, tmp_path / "net.onnx")
    other = build_net(default_config("pse"))
    with pytest.raises(ModelError, match="not faithful"):
        check_parity(other, path)


def test_export_model_writes_loadable_model(tmp_path):
    from msdmatch.io.modelfile import check_compatible, load_model, run_net
    from msdmatch.params import DEFAULT_PARAMS

    torch.manual_seed(0)
    f, g = build_net(TINY["pse"]), build_net(TINY["pse"])
    stats = {"audio": (np.zeros(48), np.ones(48)), "midi": (np.zeros(48), np.ones(48))}
    export_model(f, g, out_dir=tmp_path / "m", name="pse-test", midi_modality="midi-pianoroll",
                 params=DEFAULT_PARAMS, stats=stats, metrics={"bc": 0.4}, config=TINY["pse"])
    info = load_model(tmp_path / "m")
    assert info.kind == "pse" and info.embedding_dim == 128 and info.metrics["bc"] == 0.4
    assert info.raw["parity"]["audio"]["max_abs_diff"] <= 1e-4
    onnx = check_compatible(info, store_params=DEFAULT_PARAMS, store_modality="midi-pianoroll")
    assert onnx == info.midi_onnx
    x, m = pad_batch(_seqs(np.random.default_rng(0), [30]))
    with torch.no_grad():
        expect = g(torch.from_numpy(x), torch.from_numpy(m)).numpy()
    assert np.abs(run_net(onnx, x, m) - expect).max() <= 1e-4


def test_train_models_end_to_end(corpus, tmp_path):
    from msdmatch.io.modelfile import load_model, run_net

    qs, ds, truth = corpus
    hp = {"dhs": HParams(batch=6, crop=32), "pse": HParams(alpha=3.34, margin=1.06, beta=0.0,
                                                           batch=4, audio_frames=64, midi_frames=96)}
    out = train_models(qs, ds, truth, out_dir=tmp_path, kind="both", max_steps=4, eval_every=2,
                       configs=TINY, hparams=hp)
    assert set(out) == {"dhs", "pse"}
    for kind, d in out.items():
        info = load_model(d)
        assert info.kind == kind and info.midi_modality == "midi-synth"
        assert 0.0 <= info.metrics["bc"] <= 1.0
        assert (d / "training.png").stat().st_size > 1000
        doc = json.loads((d / "model.json").read_text())
        assert len(doc["zscore"]["audio"]["mean"]) == 48
        assert doc["training"]["n_train_pairs"] > 0
    assert load_model(out["dhs"]).n_bits == 32 and load_model(out["dhs"]).downsample == 8
    # the PSE's hub reference: its MIDI net's vectors of the training queries, each once
    pse = load_model(out["pse"])
    train_ids = {p.query_id for p in collect_pairs(qs, ds, truth) if p.split == "train"}
    assert pse.hub["n_reference"] == len(train_ids) and pse.reference().shape == (len(train_ids), 128)
    q = qs.sequence(qs.ids.index(sorted(train_ids)[0]))
    one = run_net(pse.midi_onnx, q[None], np.ones((1, len(q)), np.float32))[0]
    assert np.min(np.abs(pse.reference() - one).max(axis=1)) < 2e-3  # float16 storage
    # the DHS's: the hash words of the first training queries, in truth order
    from msdmatch.stages.embed import pack_bits

    dhs = load_model(out["dhs"])
    first = list(dict.fromkeys(p.query_id for p in collect_pairs(qs, ds, truth) if p.split == "train"))
    assert dhs.hub["n_reference"] == len(dhs.reference()) == min(len(first), DHS_HUB_N)
    q = qs.sequence(qs.ids.index(first[0]))
    h = run_net(dhs.midi_onnx, q[None], np.ones((1, len(q)), np.float32))[0][: -(-len(q) // dhs.downsample)]
    np.testing.assert_array_equal(dhs.reference()[0], pack_bits(h))


def test_random_search_writes_trials(corpus, tmp_path):
    qs, ds, truth = corpus
    out = train_models(qs, ds, truth, out_dir=tmp_path, kind="pse", max_steps=2, eval_every=2,
                       search=2, hparams={"pse": HParams(batch=4, audio_frames=64, midi_frames=96)},
                       configs={"pse": TINY["pse"]}, report=False)
    rows = (out["pse"] / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("trial,bc,lr,alpha,margin") and len(rows) == 3


def test_pooled_pse_trains_on_an_exported_dhs_and_searches_its_head(corpus, tmp_path):
    """`msdmatch train --kind pse` builds the PSE on the DHS model already in OUT (its weights.npz)."""
    from msdmatch.io.modelfile import load_model

    qs, ds, truth = corpus
    with pytest.raises(ModelError, match="needs a DHS model|model.json"):
        train_models(qs, ds, truth, out_dir=tmp_path, kind="pse", configs={"pse": TINY["pse-pooled"]},
                     report=False)
    dhs = train_models(qs, ds, truth, out_dir=tmp_path, kind="dhs", max_steps=4, eval_every=2,
                       configs=TINY, hparams={"dhs": HParams(batch=6, crop=32)}, report=False)["dhs"]
    assert (dhs / "weights.npz").is_file()
    out = train_models(qs, ds, truth, out_dir=tmp_path, kind="pse", max_steps=4, eval_every=2, search=2,
                       configs={"pse": TINY["pse-pooled"]}, hparams={"pse": HParams(batch=4, loss="nce",
                                                                                    negatives=2, pca_dims=6)},
                       report=False)
    rows = (out["pse"] / "trials.csv").read_text().splitlines()
    assert rows[0].split(",")[-5:] == ["attention", "pca_dims", "shrink", "steps", "seconds"] and len(rows) == 3
    info = load_model(out["pse"])
    assert info.embedding_dim == 128 and info.raw["architecture"]["lags"] == [1, 3]
    assert info.raw["parity"]["midi"]["max_abs_diff"] <= 1e-4


def test_train_models_refuses_swapped_stores(corpus, tmp_path):
    from msdmatch.errors import StoreError

    qs, ds, truth = corpus
    with pytest.raises(StoreError, match="in that order"):
        train_models(ds, qs, truth, out_dir=tmp_path)
    flat = MemoryStore(["a"], [np.zeros((5, 48), np.float32)], modality="midi-synth")
    assert flat.offsets.tolist() == [0, 5]


def test_attention_toy_learns_addition():
    from attention_toy import train_toy

    att = train_toy("addition", length=1000, attention=True, hidden=32, steps=250, batch=32)
    mean = train_toy("addition", length=1000, attention=False, hidden=32, steps=250, batch=32)
    assert att["test_mse"] < 0.05 * att["baseline_mse"]
    assert mean["test_mse"] > 5 * att["test_mse"]


def test_pooled_pse_pools_the_hand_worked_statistics():
    """Uniform attention: the mean step and, per lag, the symmetrised mean lagged product."""
    torch.manual_seed(0)
    net = build_net(TINY["pse-pooled"]).eval()
    h = np.random.default_rng(1).uniform(-1, 1, (1, 6, 32)).astype(np.float32)
    m = np.ones((1, 6), np.float32)
    padded = np.concatenate([h, np.zeros((1, 3, 32), np.float32)], 1)  # what a batch adds
    with torch.no_grad():
        got = net.pooled(torch.from_numpy(h), torch.from_numpy(m)).numpy()[0]
        got_padded = net.pooled(torch.from_numpy(padded), torch.from_numpy(np.pad(m, ((0, 0), (0, 3))))).numpy()[0]
    x = h[0].astype(np.float64)
    iu = np.triu_indices(32)
    expect = [x.mean(0)]
    for lag in (1, 3):
        c = sum(np.outer(x[t], x[t + lag]) for t in range(6 - lag)) / (6 - lag)
        expect.append(((c + c.T) / 2)[iu])
    expect = np.concatenate(expect)
    assert got.shape == (TINY["pse-pooled"].pooled_dim,) == (32 + 2 * 528,)
    np.testing.assert_allclose(got, expect, atol=1e-5)
    np.testing.assert_allclose(got_padded, expect, atol=1e-5)


def test_closed_form_head_is_the_discriminant_of_matched_differences():
    """fit_head: per output, (matched-difference variance) / (preview variance) is minimal, ascending.

    In the whitened space the j-th output's ratio is the j-th smallest
    eigenvalue of the matched differences' covariance, so no direction of
    the pooled statistics has a smaller ratio than the first output's.
    """
    from msdmatch.models.train import fit_head

    torch.manual_seed(0)
    rng = np.random.default_rng(2)
    net = build_net(TINY["pse-pooled"]).eval()
    songs = [np.sign(rng.standard_normal((12, 32))).astype(np.float32) for _ in range(60)]
    noisy = [np.where(rng.random(s.shape) < 0.15, -s, s) for s in songs]  # 15% of bits flipped
    fit_head(net, songs, noisy, dims=30, shrink=1.0)
    with torch.no_grad():
        pa = torch.cat([net.pooled(*map(torch.from_numpy, pad_batch([s], n_bins=32))) for s in songs]).numpy()
        pm = torch.cat([net.pooled(*map(torch.from_numpy, pad_batch([s], n_bins=32))) for s in noisy]).numpy()
    w, b = net.out.weight.detach().numpy().astype(np.float64), net.out.bias.detach().numpy()
    ya, ym = pa @ w.T + b, pm @ w.T + b

    def ratio(a, m):  # per column
        return ((m - a) ** 2).mean(0) / a.var(0)

    np.testing.assert_allclose(ya.mean(0), 0.0, atol=1e-3)
    r = ratio(ya[:, :30], ym[:, :30])
    assert np.all(np.diff(r) >= -1e-6 * r.max())
    assert np.all(w[30:] == 0)  # 30 PCA dimensions: the other outputs are unused
    z = rng.standard_normal((pa.shape[1], 200))  # random directions of the pooled statistics
    assert r[0] <= ratio(pa @ z, pm @ z).min() + 1e-6


def test_fit_pooled_keeps_the_dhs_front_and_shares_one_head(aligned):
    kept, _ = aligned
    train = [p for p in kept if p.split == "train"]
    valid = [p for p in kept if p.split == "valid"]
    dhs = fit("dhs", train, valid, config=TINY["dhs"], hparams=HParams(batch=6, crop=32), seed=1,
              max_steps=4, eval_every=2)
    before = {k: v.clone() for k, v in dhs.f.state_dict().items()}
    hp = default_hparams("pse", batch=4, negatives=2, pca_dims=6, lr=1e-3)
    runs = [fit("pse", train, valid, config=TINY["pse-pooled"], hparams=hp, seed=3, max_steps=6,
                eval_every=3, patience=5, dhs=(dhs.f, dhs.g)) for _ in range(2)]
    res = runs[0]
    assert res.history["val_step"][0] == 0 and 0.0 <= res.metrics["bc"] <= 1.0  # the closed form is scored
    assert res.g.out is res.f.out and res.g.att_v is res.f.att_v
    assert all(torch.equal(res.f.dhs.state_dict()[k], v) for k, v in before.items())
    sa, sb = runs[0].f.state_dict(), runs[1].f.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # same seed and steps: same nets
    with pytest.raises(ParameterError, match="front end"):
        fit("pse", train, valid, config=dataclasses.replace(TINY["pse-pooled"], dense=(16,)), hparams=hp,
            max_steps=2, dhs=(dhs.f, dhs.g))
    with pytest.raises(ParameterError, match="trained DHS nets"):
        fit("pse", train, valid, config=TINY["pse-pooled"], hparams=hp, max_steps=2)


def test_load_nets_round_trips_dhs_weights(tmp_path, corpus):
    from msdmatch.models.export import load_nets
    from msdmatch.params import DEFAULT_PARAMS

    torch.manual_seed(0)
    f, g = build_net(TINY["dhs"]), build_net(TINY["dhs"])
    f.front.set_stats(np.full(48, 0.1), np.full(48, 0.05))
    stats = {"audio": (np.zeros(48), np.ones(48)), "midi": (np.zeros(48), np.ones(48))}
    export_model(f, g, out_dir=tmp_path / "d", name="dhs-test", midi_modality="midi-synth",
                 params=DEFAULT_PARAMS, stats=stats, metrics={"bc": 0.4}, config=TINY["dhs"])
    lf, lg = load_nets(tmp_path / "d", modality="midi-synth", params=DEFAULT_PARAMS)
    x, m = pad_batch(_seqs(np.random.default_rng(0), [40]))
    with torch.no_grad():
        for a, b in ((f, lf), (g, lg)):
            assert torch.equal(a(torch.from_numpy(x), torch.from_numpy(m)), b(torch.from_numpy(x), torch.from_numpy(m)))
    from msdmatch.errors import FormatMismatchError

    with pytest.raises(FormatMismatchError, match="midi-pianoroll"):
        load_nets(tmp_path / "d", modality="midi-pianoroll", params=DEFAULT_PARAMS)
    (tmp_path / "d" / "weights.npz").unlink()
    with pytest.raises(ModelError, match="weights.npz is missing"):
        load_nets(tmp_path / "d", modality="midi-synth", params=DEFAULT_PARAMS)
