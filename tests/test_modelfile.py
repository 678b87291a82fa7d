"""model.json loading, validation and refusal messages; cached ONNX sessions (no torch)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from msdmatch.errors import FormatMismatchError, ModelError, ParameterError
from msdmatch.io.modelfile import (
    check_compatible,
    default_models,
    load_model,
    run_net,
    session,
    shipped_model_dir,
)
from msdmatch.params import DEFAULT_PARAMS, FORMAT_VERSION, FeatureParams


def _masked_sum_onnx(path, scale: float) -> None:
    """A tiny 'embedding' net: scale * sum_t mask_t * features_t, shape (B, 48)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Unsqueeze", ["mask", "axis2"], ["m3"]),
        helper.make_node("Mul", ["features", "m3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("Mul", ["summed", "scale"], ["embedding"]),
    ]
    inits = [
        helper.make_tensor("axis2", TensorProto.INT64, [1], [2]),
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
    ]
    graph = helper.make_graph(
        nodes, "masked_sum",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "time", 48]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", "time"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 48])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _doc(**over):
    doc = {
        "msdmatch_format": FORMAT_VERSION, "kind": "pse", "name": "pse-test",
        "audio_modality": "audio", "midi_modality": "midi-synth",
        "feature_params": DEFAULT_PARAMS.to_dict(),
        "zscore": {"audio": {"mean": [0.0] * 48, "std": [1.0] * 48},
                   "midi": {"mean": [0.0] * 48, "std": [1.0] * 48}},
        "n_bits": None, "downsample": None, "embedding_dim": 48,
        "inputs": ["features", "mask"], "output": "embedding",
        "files": {"audio": "audio.onnx", "midi": "midi.onnx"},
        "metrics": {"bc": 0.3},
    }
    doc.update(over)
    return doc


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "pse-test"
    d.mkdir()
    _masked_sum_onnx(d / "audio.onnx", 1.0)
    _masked_sum_onnx(d / "midi.onnx", 2.0)
    (d / "model.json").write_text(json.dumps(_doc()))
    return d


def test_load_model_fields(model_dir):
    info = load_model(model_dir)
    assert info.kind == "pse" and info.name == "pse-test" and info.embedding_dim == 48
    assert info.params == DEFAULT_PARAMS
    assert info.audio_onnx == model_dir / "audio.onnx"
    assert load_model(model_dir / "model.json").midi_onnx == model_dir / "midi.onnx"
    assert info.metrics["bc"] == 0.3


def test_run_net_and_cached_session(model_dir, rng):
    info = load_model(model_dir)
    x = rng.random((2, 7, 48)).astype(np.float32)
    m = np.ones((2, 7), np.float32)
    m[1, 4:] = 0
    out = run_net(info.midi_onnx, x, m)
    np.testing.assert_allclose(out[1], 2.0 * x[1, :4].sum(0), rtol=1e-5)
    assert session(str(info.midi_onnx)) is session(str(info.midi_onnx))
    opts = session(str(info.audio_onnx), 2).get_session_options()
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    with pytest.raises(ParameterError, match=r"must be \(B, T, bins\)"):
        run_net(info.audio_onnx, x[0], m[0])


def test_check_compatible_names_the_parameter(model_dir):
    info = load_model(model_dir)
    assert check_compatible(info, store_params=DEFAULT_PARAMS, store_modality="audio") == info.audio_onnx
    other = FeatureParams(n_bins=36)
    with pytest.raises(FormatMismatchError,
                       match=r"store has n_bins=36 but model expects 48; re-run `msdmatch featurize`"):
        check_compatible(info, store_params=other, store_modality="audio")


def test_check_compatible_refuses_wrong_modality(model_dir):
    info = load_model(model_dir)
    with pytest.raises(FormatMismatchError, match=r"modality 'midi-pianoroll'.*--mode synth"):
        check_compatible(info, store_params=DEFAULT_PARAMS, store_modality="midi-pianoroll")
    with pytest.raises(FormatMismatchError, match="not 'midi-pianoroll'"):
        info.onnx_for("midi-pianoroll")


@pytest.mark.parametrize("over, error, message", [
    ({"msdmatch_format": FORMAT_VERSION + 1}, FormatMismatchError, "msdmatch_format=2"),
    ({"kind": "lsh"}, ModelError, "kind='lsh'"),
    ({"output": "hashes"}, ModelError, "must map inputs"),
    ({"midi_modality": "audio"}, ModelError, "modalities"),
    ({"embedding_dim": None}, ModelError, "needs embedding_dim"),
    ({"kind": "dhs", "output": "hashes"}, ModelError, "needs n_bits and downsample"),
    ({"feature_params": dict(DEFAULT_PARAMS.to_dict(), cqt_filter="x")}, FormatMismatchError,
     "unknown feature parameters"),
    ({"hub": {"k": 5, "weight": 1.5}}, ModelError, "needs k, weight and reference"),
    ({"hub": {"k": 5, "weight": 1.5, "reference": "reference.npy"}}, ModelError, "hub reference .* is missing"),
])
def test_malformed_model_json_is_refused(model_dir, over, error, message):
    (model_dir / "model.json").write_text(json.dumps(_doc(**over)))
    with pytest.raises(error, match=message):
        load_model(model_dir)


def test_missing_fields_files_and_names(model_dir, tmp_path):
    doc = _doc()
    del doc["zscore"]
    (model_dir / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=r"lacks fields \['zscore'\]"):
        load_model(model_dir)
    (model_dir / "model.json").write_text(json.dumps(_doc()))
    (model_dir / "midi.onnx").unlink()
    with pytest.raises(ModelError, match="midi net .* is missing"):
        load_model(model_dir)
    (model_dir / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read model.json"):
        load_model(model_dir)
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nowhere")


def test_shipped_models_location():
    assert shipped_model_dir().name == "shipped"
    assert shipped_model_dir().parent.name == "msdmatch"
    with pytest.raises(ParameterError, match="midi_modality='audio'"):
        default_models("audio")
    if (shipped_model_dir() / "pse-midi-synth" / "model.json").is_file():
        pse, dhs = default_models("midi-synth")
        assert load_model(pse).kind == "pse" and load_model(dhs).kind == "dhs"
    else:
        with pytest.raises(ModelError, match="no shipped model"):
            default_models("midi-synth")


def test_modelfile_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, msdmatch.io.modelfile, msdmatch.models; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
