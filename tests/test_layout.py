"""The package's layering, checked on its source: kernels stay pure, one module owns Dask."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "msdmatch"


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at any depth of the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _modules(sub: str = "") -> list[Path]:
    return sorted((PKG / sub).rglob("*.py"))


def test_only_the_executor_imports_distributed():
    users = [p.relative_to(PKG).as_posix() for p in _modules()
             if any(m.split(".")[0] == "distributed" or m.startswith("dask.distributed") for m in _imports(p))]
    assert users == ["executor.py"]


@pytest.mark.parametrize("path", _modules("kernels"), ids=lambda p: p.name)
def test_kernels_do_no_io_and_no_dask(path):
    banned = {"dask", "distributed", "zarr", "click", "fsspec", "s3fs", "onnxruntime", "msdmatch.io",
              "msdmatch.stages", "msdmatch.executor"}
    bad = {m for m in _imports(path) if any(m == b or m.startswith(b + ".") for b in banned)}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_every_stage_of_the_cascade_has_its_module():
    for rel in ("stages/featurize.py", "stages/embed.py", "kernels/prune.py", "stages/match/prune.py",
                "stages/match/rerank.py", "stages/match/screen.py", "stages/match/verify.py", "kernels/fusion.py",
                "stages/report.py", "stages/align/pair.py", "stages/align/batch.py"):
        assert (PKG / rel).is_file(), rel
