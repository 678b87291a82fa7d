"""Embed stage with the shipped ONNX models on a real LocalCluster."""
import json
import subprocess
import sys

import numpy as np
import pytest

from msdmatch.errors import FormatMismatchError
from msdmatch.io.modelfile import load_model, run_net
from msdmatch.io.store import Store
from msdmatch.kernels.hub import dhs_hub_scores, hub_scores
from msdmatch.kernels.screen import screen_frames
from msdmatch.stages import embed as stage


def _direct(model_name: str, modality: str, X: np.ndarray) -> np.ndarray:
    info = load_model(model_name)
    return run_net(info.onnx_for(modality), X[None], np.ones((1, len(X)), np.float32))[0]


@pytest.mark.parametrize("name", ["audio", "midi-synth", "midi-pianoroll"])
def test_embed_equals_unbatched_onnx(tiny_stores, copy_store, cluster_client, name):
    url = copy_store(tiny_stores[name])
    s = stage.run(url, client=cluster_client, partition_size=4, progress=False)
    assert s["complete"] and s["failures"] == 0
    store = Store(url)
    g = store.group
    mod = name if name != "audio" else "midi-synth"
    pse, dhs = f"pse-{mod}", f"dhs-{mod}"
    E = g[f"pse/{pse}"][:]
    off = g[f"dhs/{dhs}/offsets"][:]
    words = g[f"dhs/{dhs}/words"][:]
    assert E.shape == (store.n, 128) and np.all(np.isfinite(E))
    soff = g["screen/offsets"][:]
    np.testing.assert_array_equal(soff, off)  # one screen frame per hash word
    assert g["screen/frames"].attrs["pool"] == 8 and g["screen/frames"].attrs["complete"]
    np.testing.assert_array_equal(np.diff(off), -(-np.diff(store.offsets) // 8))
    for i in range(store.n):
        X = store.sequence(i)
        np.testing.assert_allclose(E[i], _direct(pse, store.modality, X), atol=1e-4, rtol=0)
        np.testing.assert_array_equal(words[off[i] : off[i + 1]],
                                      stage.pack_bits(_direct(dhs, store.modality, X)))
        np.testing.assert_array_equal(g["screen/frames"][soff[i] : soff[i + 1]], screen_frames(X))
    if name == "audio":  # an audio store gets every shipped model, and their hub scores
        assert {"pse-midi-synth", "pse-midi-pianoroll"} <= set(g["pse"].array_keys())
        for model in ("pse-midi-synth", "pse-midi-pianoroll"):
            info, hub = load_model(model), g[f"hub/{model}"]
            np.testing.assert_allclose(hub[:], hub_scores(g[f"pse/{model}"][:], info.reference(), k=info.hub["k"]),
                                       atol=1e-6)
            assert hub.attrs["weight"] == info.hub["weight"] and hub.attrs["complete"]
        for model in ("dhs-midi-synth", "dhs-midi-pianoroll"):  # and the rerank's hub terms
            info, hub = load_model(model), g[f"hub/{model}"]
            want = dhs_hub_scores(g[f"dhs/{model}/words"][:], g[f"dhs/{model}/offsets"][:], info.reference(),
                                  k=info.hub["k"])
            assert np.all(np.isfinite(want))
            np.testing.assert_allclose(hub[:], want, rtol=1e-6)
            assert hub.attrs["weight"] == info.hub["weight"] and hub.attrs["complete"]
    else:  # the penalty ranks previews: a query store has none
        assert "hub" not in g


def test_resume_after_interruption(tiny_stores, copy_store, cluster_client):
    full_dir, part = copy_store(tiny_stores["audio"], "full.zarr"), copy_store(tiny_stores["audio"])
    kw = dict(client=cluster_client, partition_size=2, progress=False)
    stage.run(full_dir, **kw)
    first = stage.run(part, max_parts=1, **kw)
    assert first["parts_run"] == 1 and not first["complete"]
    second = stage.run(part, **kw)
    assert (second["parts_run"], second["parts_skipped"]) == (2, 1) and second["complete"]
    third = stage.run(part, **kw)
    assert third["parts_run"] == 0
    a, b = Store(full_dir).group, Store(part).group
    for path in ("pse/pse-midi-synth", "dhs/dhs-midi-synth/words", "dhs/dhs-midi-synth/offsets",
                 "pse/pse-midi-pianoroll", "hub/pse-midi-synth", "hub/dhs-midi-synth", "screen/frames",
                 "screen/offsets"):
        np.testing.assert_array_equal(a[path][:], b[path][:])


def test_refuses_other_feature_parameters(tiny_corpus, tmp_path, cluster_client):
    from msdmatch.params import FeatureParams
    from msdmatch.stages import featurize

    url = str(tmp_path / "db60.zarr")
    featurize.run(str(tiny_corpus / "audio"), url, client=cluster_client, kind="audio",
                  params=FeatureParams(top_db=60.0), progress=False)
    with pytest.raises(FormatMismatchError, match=r"top_db=60.0 but model expects 80.0.*msdmatch featurize"):
        stage.run(url, client=cluster_client, progress=False)


def test_a_model_without_hub_reference_leaves_no_stale_hub_scores(tiny_stores, copy_store, cluster_client, tmp_path):
    """Re-embedding with a PSE model of the same name but no hub reference removes the old scores."""
    import shutil

    from msdmatch.io.modelfile import shipped_model_dir
    from msdmatch.io.store import prune_vectors

    url = copy_store(tiny_stores["audio"])
    model = tmp_path / "pse-midi-synth"
    shutil.copytree(shipped_model_dir() / "pse-midi-synth", model)
    stage.run(url, models=[str(model)], client=cluster_client, progress=False)
    assert "hub/pse-midi-synth" in Store(url).group
    doc = json.loads((model / "model.json").read_text())
    del doc["hub"]
    (model / "model.json").write_text(json.dumps(doc))
    stage.run(url, models=[str(model)], client=cluster_client, progress=False)
    g = Store(url).group
    assert "hub/pse-midi-synth" not in g
    np.testing.assert_array_equal(prune_vectors(g, "pse-midi-synth")[:, -1], 0.0)  # no penalty


def test_refuses_model_of_another_modality(tiny_stores, copy_store, cluster_client):
    from msdmatch.io.modelfile import shipped_model_dir

    url = copy_store(tiny_stores["midi-pianoroll"])
    with pytest.raises(FormatMismatchError, match="modality 'midi-pianoroll'.*'midi-synth'"):
        stage.run(url, models=[str(shipped_model_dir() / "pse-midi-synth")], client=cluster_client,
                  progress=False)


def test_embed_on_s3_read_back_in_another_process(tiny_corpus, s3, cluster_client):
    from msdmatch.stages import featurize

    url = f"s3://{s3['bucket']}/q.zarr"
    so = s3["storage_options"]
    featurize.run(str(tiny_corpus / "midi"), url, client=cluster_client, kind="midi", mode="pianoroll",
                  storage_options=so, progress=False)
    stage.run(url, client=cluster_client, storage_options=so, progress=False)
    code = ("import json, sys\nfrom msdmatch.io.store import Store\n"
            f"s = Store({url!r}, storage_options=json.loads(sys.argv[1]))\n"
            "print(json.dumps(s.group['pse/pse-midi-pianoroll'][:].tolist()))")
    r = subprocess.run([sys.executable, "-c", code, json.dumps(so)], capture_output=True, text=True,
                       timeout=120, check=True)
    remote = np.array(json.loads(r.stdout), dtype=np.float32)
    local = Store(url, storage_options=so).group["pse/pse-midi-pianoroll"][:]
    assert remote.shape == (6, 128)
    np.testing.assert_array_equal(remote, local)


def test_pack_bits_and_batches():
    h = np.array([[1.0, -1.0, 0.5] + [-1.0] * 29, [-0.1] * 31 + [0.2]], np.float32)
    np.testing.assert_array_equal(stage.pack_bits(h), np.array([0b101, 1 << 31], np.uint32))
    lengths = np.array([5, 100, 7, 90, 6, 3000])
    groups = stage.batches(lengths, max_frames=300)
    assert sorted(np.concatenate(groups).tolist()) == list(range(6))
    for g in groups:
        assert len(g) == 1 or lengths[g].max() * len(g) <= 300
