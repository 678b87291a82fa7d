"""Job specs: one YAML file per stage run, validated, and planned without touching data.

A spec names a stage and everything it reads and writes::

    spec_version: 1
    name: featurize-msd-previews
    stage: featurize              # featurize | embed | match | report
    workers: 100                  # planned Dask workers (1 thread each)
    expected_items: 994960        # declared input size, for the plan
    cpu_seconds_per_item: null    # measured per-item cost (benchmarks/), for the plan
    storage_options: {}           # fsspec options for every s3:// URL (optional)
    args:                         # the stage's own parameters
      src: s3://bucket/msd/previews/
      out: s3://bucket/stores/db.zarr
      kind: audio
      partition_size: 500

:func:`load` validates a spec: a misspelt key or a value of the wrong type
raises one :class:`~msdmatch.errors.ParameterError` line naming the file, the
key, the value and what was expected.  :func:`plan` turns a spec into the
dry-run plan (partitions, tasks, CPU-hours, outputs) from the declared
numbers only; it never lists inputs or opens stores.  :func:`redact` masks
credentials in anything printed.
"""
from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from typing import Any

from msdmatch.errors import ParameterError
from msdmatch.params import EMBED, FEATURIZE, MATCH

SPEC_VERSION = 1
STAGES = ("featurize", "embed", "match", "report")

#: Mapping keys whose values are credentials, masked by :func:`redact`.
SECRET_KEYS = ("key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key",
               "aws_session_token", "session_token", "secret_access_key", "access_key")
MASK = "***"


@dataclass(frozen=True)
class _Field:
    """One allowed key: its type(s), whether required, default and allowed values."""

    types: tuple[type, ...]
    required: bool = False
    default: Any = None
    choices: tuple = ()
    minimum: int | None = None
    nullable: bool = False
    doc: str = ""

    def expected(self) -> str:
        names = " or ".join(_TYPE_NAMES[t] for t in self.types)
        if self.choices:
            names = "one of " + ", ".join(repr(c) for c in self.choices)
        if self.minimum is not None:
            names += f" >= {self.minimum}"
        if self.nullable:
            names += " (or null)"
        return names


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true/false",
               dict: "a mapping", list: "a list of strings"}

_COMMON: dict[str, _Field] = {
    "spec_version": _Field((int,), required=True, choices=(SPEC_VERSION,), doc="format of this file"),
    "name": _Field((str,), required=True, doc="job name, used in task names and logs"),
    "stage": _Field((str,), required=True, choices=STAGES),
    "workers": _Field((int,), required=True, minimum=1,
                      doc="planned Dask workers of 1 thread (must match the cluster's replicas)"),
    "expected_items": _Field((int,), minimum=0, nullable=True,
                             doc="declared number of input items (files, or queries for match)"),
    "cpu_seconds_per_item": _Field((float, int), nullable=True,
                                   doc="measured CPU-seconds per item; from benchmarks/"),
    "storage_options": _Field((dict,), default=None, nullable=True, doc="fsspec options for s3:// URLs"),
    "description": _Field((str,), doc="free text"),
    "args": _Field((dict,), required=True, doc="the stage's parameters"),
}

_ARGS: dict[str, dict[str, _Field]] = {
    "featurize": {
        "src": _Field((str,), required=True),
        "out": _Field((str,), required=True),
        "kind": _Field((str,), required=True, choices=("audio", "midi")),
        "mode": _Field((str,), default="synth", choices=("synth", "pianoroll")),
        "soundfont": _Field((str,), nullable=True),
        "partition_size": _Field((int,), default=FEATURIZE.partition_size, minimum=1),
        "overwrite": _Field((bool,), default=False),
    },
    "embed": {
        "store": _Field((str,), required=True),
        "models": _Field((list,), nullable=True),
        "partition_size": _Field((int,), default=EMBED.partition_size, minimum=1),
    },
    "match": {
        "queries": _Field((str,), required=True),
        "db": _Field((str,), required=True),
        "out": _Field((str,), required=True),
        "db_items": _Field((int,), minimum=1, nullable=True, doc="declared DB size, for the plan"),
        "models": _Field((str,), nullable=True),
        "fusion": _Field((str,), nullable=True),
        "prune_k": _Field((int,), minimum=1, nullable=True),
        "rerank": _Field((int,), default=MATCH.rerank, minimum=1),
        "verify": _Field((int,), default=MATCH.verify, minimum=1),
        "keep": _Field((str,), default=MATCH.keep, choices=("rerank", "all")),
        "threshold": _Field((float, int), nullable=True,
                            doc="top-row confidence that counts as matched (default: the fusion model's)"),
        "batch_size": _Field((int,), default=MATCH.batch_size, minimum=1, doc="queries per committed batch"),
        "overwrite": _Field((bool,), default=False),
    },
    "report": {
        "matches": _Field((str,), required=True),
        "truth": _Field((str,), required=True),
        "out_dir": _Field((str,), nullable=True),
        "queries": _Field((str,), nullable=True),
        "db": _Field((str,), nullable=True),
        "brute_force": _Field((int,), default=0, minimum=0),
    },
}


@dataclass(frozen=True)
class JobSpec:
    """A validated job spec; ``args`` holds every stage parameter with defaults filled in."""

    path: str
    name: str
    stage: str
    workers: int
    args: dict
    expected_items: int | None = None
    cpu_seconds_per_item: float | None = None
    storage_options: dict | None = None
    description: str = ""


def _where(path: str, key: str) -> str:
    return f"{path}: {key}"


def _check_keys(data: dict, fields: dict[str, _Field], *, path: str, prefix: str) -> None:
    for k in data:
        if not isinstance(k, str) or k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(fields)}"
            raise ParameterError(f"{path}: unknown key {prefix}{k!r}{hint}")
    for k, f in fields.items():
        if f.required and k not in data:
            raise ParameterError(f"{path}: missing required key {prefix}{k!r} ({f.expected()})")


def _check_value(value: Any, f: _Field, *, path: str, key: str) -> Any:
    if value is None:
        if f.nullable or not f.required:
            return f.default
        raise ParameterError(f"{_where(path, key)} is null; expected {f.expected()}")
    ok = any(isinstance(value, t) and not (t is not bool and isinstance(value, bool)) for t in f.types)
    if ok and list in f.types:
        ok = all(isinstance(v, str) for v in value)
    if not ok:
        shown = redact_text(repr(value))
        raise ParameterError(f"{_where(path, key)} = {shown} ({type(value).__name__}); expected {f.expected()}")
    if f.choices and value not in f.choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in f.choices], n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ParameterError(f"{_where(path, key)} = {value!r}; expected {f.expected()}{hint}")
    if f.minimum is not None and value < f.minimum:
        raise ParameterError(f"{_where(path, key)} = {value!r}; expected {f.expected()}")
    return float(value) if float in f.types and not isinstance(value, bool) else value


def validate(data: Any, *, path: str = "<spec>") -> JobSpec:
    """Check a parsed spec and return it with defaults filled in.

    Raises
    ------
    ParameterError
        One line naming the key, the value and what was expected.
    """
    if not isinstance(data, dict):
        raise ParameterError(f"{path}: a job spec is a YAML mapping, got {type(data).__name__}")
    _check_keys(data, _COMMON, path=path, prefix="")
    top = {k: _check_value(data.get(k), f, path=path, key=k) for k, f in _COMMON.items()}
    stage = top["stage"]
    fields = _ARGS[stage]
    raw_args = data["args"]
    _check_keys(raw_args, fields, path=path, prefix="args.")
    args = {k: _check_value(raw_args.get(k), f, path=path, key=f"args.{k}") for k, f in fields.items()}
    if stage == "report" and bool(args["queries"]) != bool(args["db"]):
        raise ParameterError(f"{path}: args.queries and args.db go together; give both or neither")
    return JobSpec(path=path, name=top["name"], stage=stage, workers=top["workers"], args=args,
                   expected_items=top["expected_items"], cpu_seconds_per_item=top["cpu_seconds_per_item"],
                   storage_options=top["storage_options"], description=top["description"] or "")


def load(path: str | os.PathLike) -> JobSpec:
    """Read and validate the YAML spec at ``path`` (a local file)."""
    import yaml

    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ParameterError(f"job spec {path!r} does not exist") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParameterError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    return validate(data, path=path)


def json_schema() -> dict:
    """The spec format as a JSON Schema (for editors and offline checks)."""
    def prop(f: _Field) -> dict:
        kinds = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object",
                 list: "array"}
        t = sorted({kinds[x] for x in f.types})
        p: dict = {"type": t + (["null"] if f.nullable or not f.required else [])}
        if list in f.types:
            p["items"] = {"type": "string"}
        if f.choices:
            p["enum"] = list(f.choices) + ([None] if not f.required else [])
        if f.minimum is not None:
            p["minimum"] = f.minimum
        if f.doc:
            p["description"] = f.doc
        return p

    def obj(fields: dict[str, _Field]) -> dict:
        return {"type": "object", "additionalProperties": False,
                "properties": {k: prop(f) for k, f in fields.items()},
                "required": [k for k, f in fields.items() if f.required]}

    variants = []
    for stage, fields in _ARGS.items():
        v = obj(_COMMON)
        v["properties"]["stage"] = {"const": stage}
        v["properties"]["args"] = obj(fields)
        variants.append(v)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "msdmatch job spec",
            "oneOf": variants}


# -- the plan ---------------------------------------------------------------------------------------

def _n_match_tasks(n_queries: int | None, threads: int, batch_size: int) -> dict:
    shards = 2 * threads  # match.run: n_shards = 2 * total threads, loaded once
    merges, level = 0, shards
    while level > 1:
        level = math.ceil(level / 4)
        merges += level
    merges = max(merges, 1)
    if n_queries is None:
        return {"match-load-shard": shards, "match-batches": None}
    sizes = [min(batch_size, n_queries - a) for a in range(0, n_queries, batch_size)]
    nb = len(sizes)
    verify = sum(max(1, min(b, shards)) for b in sizes)  # match.run: min(batch, 2 * threads) verify tasks
    return {"match-load-shard": shards, "match-batches": nb, "match-prune": shards * nb,
            "match-merge": merges * nb, "match-rerank": shards * nb, "match-screen": shards * nb,
            "match-verify": verify, "match-commit": nb}


def plan(spec: JobSpec) -> dict:
    """The dry-run plan of a spec, from declared numbers only.

    Returns
    -------
    plan : dict
        ``stage``, ``name``, ``workers``, ``items``, ``partitions``,
        ``tasks`` (task name prefix to count; consolidation copies not
        counted), ``cpu_hours`` and ``wall_hours`` (``None`` when
        ``cpu_seconds_per_item`` or ``expected_items`` is not declared),
        ``inputs``, ``outputs`` and ``notes``.
    """
    a, n = spec.args, spec.expected_items
    notes: list[str] = []
    if n is None:
        notes.append("expected_items not declared: partitions and CPU-hours unknown")
    tasks: dict[str, int | None]
    if spec.stage == "featurize":
        parts = math.ceil(n / a["partition_size"]) if n is not None else None
        modality = "audio" if a["kind"] == "audio" else f"midi-{a['mode']}"
        tasks = {f"featurize-{modality}": parts}
        inputs, outputs = [a["src"]], [a["out"]]
    elif spec.stage == "embed":
        parts = math.ceil(n / a["partition_size"]) if n is not None else None
        tasks = {"embed": parts}
        inputs, outputs = [a["store"]], [f"{a['store']} (pse/<model>, dhs/<model>, screen)"]
    elif spec.stage == "match":
        parts = math.ceil(n / a["batch_size"]) if n is not None else None
        tasks = dict(_n_match_tasks(n, spec.workers, a["batch_size"]))
        if a["db_items"] is None:
            notes.append("args.db_items not declared: K defaults to max(1% of DB, 1000)")
        else:
            from msdmatch.kernels.prune import default_k

            k = min(a["db_items"], a["prune_k"] or default_k(a["db_items"]))
            notes.append(f"K={k}, R={min(a['rerank'], k)}, V={min(a['verify'], a['rerank'], k)}")
        inputs, outputs = [a["queries"], a["db"]], [a["out"]]
    else:
        parts = 0
        tasks = {"brute-force": 1 if a["brute_force"] else 0} if a["queries"] else {}
        inputs = [a["matches"], a["truth"]] + ([a["queries"], a["db"]] if a["queries"] else [])
        outputs = [a["out_dir"]] if a["out_dir"] else ["(printed only)"]
    cpu_h = wall_h = None
    if spec.cpu_seconds_per_item is None:
        notes.append("cpu_seconds_per_item not declared: fill it from benchmarks/ to get CPU-hours")
    elif n is not None:
        cpu_h = n * spec.cpu_seconds_per_item / 3600.0
        wall_h = cpu_h / spec.workers
    return {"name": spec.name, "stage": spec.stage, "spec": spec.path, "workers": spec.workers,
            "items": n, "partitions": parts, "tasks": tasks,
            "cpu_seconds_per_item": spec.cpu_seconds_per_item, "cpu_hours": cpu_h, "wall_hours": wall_h,
            "inputs": inputs, "outputs": outputs, "notes": notes,
            "storage_options": redact(spec.storage_options) if spec.storage_options else None}


def format_plan(p: dict) -> str:
    """The plan as the lines ``msdmatch run --dry-run`` prints."""
    def num(x, unit=""):
        return "unknown" if x is None else (f"{x:,.1f}{unit}" if isinstance(x, float) else f"{x:,}{unit}")

    tasks = ", ".join(f"{k}: {num(v)}" for k, v in p["tasks"].items()) or "none"
    lines = [
        f"plan for {p['name']} ({p['stage']}, {p['spec']}) on {p['workers']} workers x 1 thread",
        f"  items:      {num(p['items'])}",
        f"  partitions: {num(p['partitions'])}",
        f"  tasks:      {tasks}",
        f"  CPU-hours:  {num(p['cpu_hours'])}"
        + (f" ({p['cpu_seconds_per_item']} CPU-s per item)" if p["cpu_seconds_per_item"] is not None else ""),
        f"  wall hours: {num(p['wall_hours'])} on {p['workers']} workers (perfect scaling)",
        f"  inputs:     {', '.join(p['inputs'])}",
        f"  outputs:    {', '.join(p['outputs'])}",
    ]
    if p.get("storage_options"):
        lines.append(f"  storage_options: {p['storage_options']}")
    lines += [f"  note: {n}" for n in p["notes"]]
    return redact_text("\n".join(lines))


# -- credentials never printed ------------------------------------------------------------------------

def _env_secrets() -> list[str]:
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    return [v for v in (os.environ.get(n) for n in names) if v]


def _secret_values(obj: Any) -> list[str]:
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str) and k.lower() in SECRET_KEYS and isinstance(v, str) and v:
                out.append(v)
            else:
                out += _secret_values(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out += _secret_values(v)
    return out


def redact(obj: Any, *, extra: Any = None) -> Any:
    """A copy of ``obj`` with credentials masked as ``***``.

    Values under keys in :data:`SECRET_KEYS` are replaced, and every string
    has the secrets of the AWS environment and of ``extra`` (e.g. a spec's
    ``storage_options``) masked wherever they occur.
    """
    if isinstance(obj, dict):
        return {k: (MASK if isinstance(k, str) and k.lower() in SECRET_KEYS and v else redact(v, extra=extra))
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, extra=extra) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj, extra=extra)
    return obj


def redact_text(text: str, *, extra: Any = None) -> str:
    """``text`` with every known secret masked: the AWS environment and those found in ``extra``."""
    for s in sorted(set(_env_secrets() + _secret_values(extra)), key=len, reverse=True):
        if len(s) >= 4:
            text = text.replace(s, MASK)
    return text
