"""Run one job spec (``jobs/*.yaml``) on a Dask cluster: ``msdmatch run SPEC``.

The spec is validated and planned by :mod:`msdmatch.jobspec`; this module
picks the cluster through :func:`msdmatch.executor.client_for` (``--scheduler``,
then ``DASK_SCHEDULER_ADDRESS``, else a LocalCluster, whose dashboard link is
printed when the stage starts) and calls the stage's own ``run`` function.

Stage outputs that the stage writes only to local paths (the MATCHES table
and the report directory) are written to a temporary directory and copied
to their ``s3://`` URL with the spec's ``storage_options``.  Everything this
module returns or raises has its credentials masked (:func:`msdmatch.jobspec.redact`).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from msdmatch import jobspec
from msdmatch.errors import MsdmatchError


def _remote(url: str | None) -> bool:
    return bool(url) and "://" in url and not url.startswith("file://")  # type: ignore[operator]


def _fs(url: str, storage_options: dict | None):
    import fsspec

    fs, _, _ = fsspec.get_fs_token_paths(url, storage_options=storage_options or {})
    return fs


def _fetch(url: str, tmp: str, storage_options: dict | None) -> str:
    """A local path holding ``url``'s content (``url`` itself when it is local)."""
    if not _remote(url):
        return url
    local = os.path.join(tmp, "in-" + url.rstrip("/").rsplit("/", 1)[-1])
    _fs(url, storage_options).get(url, local)
    return local


@contextlib.contextmanager
def _output(url: str | None, tmp: str, storage_options: dict | None, *, is_dir: bool) -> Iterator[str | None]:
    """A local path to write to; copied to ``url`` afterwards when ``url`` is remote."""
    if not _remote(url):
        yield url
        return
    assert url is not None
    name = url.rstrip("/").rsplit("/", 1)[-1]
    local = os.path.join(tmp, "out-" + name)
    yield local
    fs = _fs(url, storage_options)
    if is_dir:
        fs.put(local, url.rstrip("/"), recursive=True)
    else:
        fs.put(local, url)


def _featurize(spec: jobspec.JobSpec, client, progress: bool, tmp: str) -> tuple[dict, str]:
    from msdmatch.stages import featurize

    a = spec.args
    s = featurize.run(a["src"], a["out"], client=client, kind=a["kind"], mode=a["mode"],
                      soundfont=a["soundfont"], partition_size=a["partition_size"],
                      storage_options=spec.storage_options, overwrite=a["overwrite"], progress=progress)
    summary = {k: getattr(s, k) for k in ("items", "failures", "frames", "seconds", "threads",
                                          "parts_run", "parts_skipped", "out")}
    return summary, s.line()


def _embed(spec: jobspec.JobSpec, client, progress: bool, tmp: str) -> tuple[dict, str]:
    from msdmatch.stages import embed

    a = spec.args
    s = embed.run(a["store"], models=a["models"], client=client, partition_size=a["partition_size"],
                  storage_options=spec.storage_options, progress=progress)
    return s, embed.summary_line(s, a["store"])


def _match(spec: jobspec.JobSpec, client, progress: bool, tmp: str) -> tuple[dict, str]:
    from msdmatch.stages.match import job as match

    a = spec.args
    # match commits its batches to `out` itself, locally or on S3, so that a re-run resumes
    s = match.run(a["queries"], a["db"], a["out"], models=a["models"], fusion=a["fusion"],
                  prune_k=a["prune_k"], rerank=a["rerank"], verify=a["verify"], keep=a["keep"],
                  threshold=a["threshold"], batch_size=a["batch_size"], overwrite=a["overwrite"],
                  client=client, storage_options=spec.storage_options, progress=progress)
    s = {k: v for k, v in s.items() if k not in ("table", "failures_table")}
    return s, match.summary_line(s)


def _report(spec: jobspec.JobSpec, client, progress: bool, tmp: str) -> tuple[dict, str]:
    from msdmatch.evaluation.metrics import rank_table
    from msdmatch.stages.report import run_report

    a = spec.args
    matches = _fetch(a["matches"], tmp, spec.storage_options)
    truth = _fetch(a["truth"], tmp, spec.storage_options)
    with _output(a["out_dir"], tmp, spec.storage_options, is_dir=True) as out_dir:
        m = run_report(matches, truth, out_dir=out_dir, queries=a["queries"], db=a["db"],
                       brute_force=a["brute_force"], client=client, storage_options=spec.storage_options)
    return m, rank_table(m).rstrip("\n") + (f"\nreport -> {a['out_dir']}" if a["out_dir"] else "")


_STAGES: dict[str, Callable[..., tuple[dict, str]]] = {
    "featurize": _featurize, "embed": _embed, "match": _match, "report": _report,
}


def _needs_cluster(spec: jobspec.JobSpec) -> bool:
    return spec.stage != "report" or bool(spec.args["queries"])


def run_spec(path: str | os.PathLike, *, scheduler: str | None = None, dry_run: bool = False,
             progress: bool = True) -> dict:
    """Validate, plan and (unless ``dry_run``) run the job spec at ``path``.

    Parameters
    ----------
    path : str or PathLike
        A YAML job spec (see :mod:`msdmatch.jobspec`).
    scheduler : str, optional
        ``tcp://host:port``; default ``DASK_SCHEDULER_ADDRESS``, else a LocalCluster.
    dry_run : bool
        Only validate and plan; no cluster is started and no data is read.
    progress : bool
        Print the dashboard link and progress bars (stderr).

    Returns
    -------
    result : dict
        ``plan`` (see :func:`msdmatch.jobspec.plan`), ``text`` (the lines to
        print), and after a run ``summary`` (the stage's summary).  Credentials
        are masked throughout.

    Raises
    ------
    ParameterError
        The spec is invalid (one line, exit code 2).
    MsdmatchError
        The stage failed; the message has its credentials masked.
    """
    spec = jobspec.load(path)
    plan = jobspec.plan(spec)
    if dry_run:
        return {"plan": plan, "text": jobspec.format_plan(plan), "dry_run": True}
    so = spec.storage_options

    def clean(x: Any) -> Any:
        return jobspec.redact(x, extra=so)

    try:
        with tempfile.TemporaryDirectory(prefix="msdmatch-run-") as tmp:
            if _needs_cluster(spec):
                from msdmatch.executor import client_for

                with client_for(scheduler, quiet=not progress) as client:
                    summary, line = _STAGES[spec.stage](spec, client, progress, tmp)
            else:
                summary, line = _STAGES[spec.stage](spec, None, progress, tmp)
    except MsdmatchError as e:
        err = type(e).__new__(type(e))
        err.args = (clean(f"{spec.name}: {e}"),)
        raise err from None
    except Exception as e:  # a stage's own failure: keep the type's name, never the credentials
        raise MsdmatchError(clean(f"{spec.name}: {type(e).__name__}: {e}")) from None
    return {"plan": plan, "summary": clean(summary), "text": clean(f"{spec.name}: {line}"), "dry_run": False}
