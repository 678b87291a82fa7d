"""The command line: one-line errors with exit code 2, summaries, no torch at --help."""
import subprocess
import sys

import pytest


def msdmatch(*args, **kw):
    return subprocess.run([sys.executable, "-m", "msdmatch.cli", *args], capture_output=True,
                          text=True, timeout=300, **kw)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["featurize", "audio", "--out", "x.zarr"], "Missing argument 'SRC'"),
        (["featurize", "midi", "somewhere", "--out", "x.zarr", "--mode", "violin"], "'violin' is not one of"),
        (["featurize", "audio", "/no/such/dir", "--out", "x.zarr"], "does not exist"),
        (["featurize", "audio", ".", "--out", "x.zarr", "--partition-size", "0"], "0 is not in the range"),
        (["featurize", "audio", ".", "--out", "x.zarr", "--storage-options", "{bad"], "expected a JSON object"),
        (["frobnicate"], "No such command 'frobnicate'"),
    ],
)
def test_bad_usage_is_one_line_exit_2(args, fragment, tmp_path):
    r = msdmatch(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert fragment in lines[0] and "Traceback" not in r.stderr


def test_unwritable_out_is_one_line_exit_2(tiny_corpus, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "file").write_text("x")
    r = msdmatch("featurize", "audio", str(tiny_corpus / "audio"), "--out", str(ro / "file" / "db.zarr"),
                 "--workers", "1", "--quiet")
    assert r.returncode == 2, r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("msdmatch: error")]
    assert len(err) == 1 and "is a file, not a folder" in err[0] and "Traceback" not in r.stderr


def test_unknown_storage_option_is_one_line_exit_2(tiny_corpus, tmp_path):
    r = msdmatch("featurize", "audio", str(tiny_corpus / "audio"), "--out", "s3://bucket/db.zarr",
                 "--storage-options", '{"bogus_key": 1}', "--workers", "1", "--quiet", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--storage-options" in lines[0] and "bogus_key" in lines[0], r.stderr


def test_featurize_with_bad_files_exits_0_with_summary(tiny_corpus, tmp_path):
    import shutil

    src = tmp_path / "a"
    shutil.copytree(tiny_corpus / "audio", src)
    (src / "junk.mp3").write_bytes(b"\x00" * 100)
    r = msdmatch("featurize", "audio", str(src), "--out", str(tmp_path / "db.zarr"), "--workers", "1")
    assert r.returncode == 0, r.stderr
    assert "featurized 6 items" in r.stdout and "1 failures" in r.stdout
    assert "dashboard http://" in r.stderr


@pytest.mark.parametrize("args", [["--help"], ["featurize", "--help"], ["featurize", "midi", "--help"]])
def test_help_does_not_import_torch(args):
    code = ("import sys\nfrom msdmatch.cli import main\nsys.argv = ['msdmatch', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "assert 'dask' not in sys.modules, 'dask imported'\nprint('clean')")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip().endswith("clean"), r.stderr
