"""The ``msdmatch`` command line: parse, call one library function, report.

Library errors (:class:`~msdmatch.errors.MsdmatchError`) and usage mistakes
become one line on stderr with exit code 2 (usage) or 1 (failure); no
traceback reaches the user for a mistake that is theirs.
"""
from __future__ import annotations

import json
import sys
import time

import click

from msdmatch.params import EMBED, FEATURIZE, MATCH


def _fail(msg: str, code: int) -> None:
    msg = msg.removeprefix("msdmatch: ").removeprefix("error: ")
    click.echo(f"msdmatch: error: {msg}", err=True)
    sys.exit(code)


def _user_error(e: BaseException) -> str | None:
    """The one line for an error that is the user's to fix (exit 2), or None.

    Library errors carry their own exit code; these are the kinds raised by
    the libraries underneath for a user's mistake: missing or unusable
    credentials and endpoints, unreadable or non-UTF-8 inputs, unwritable
    outputs.
    """
    name, mod = type(e).__name__, type(e).__module__.split(".")[0]
    if mod in ("botocore", "aiobotocore") and ("Credentials" in name or "Region" in name
                                                    or "Profile" in name):
        return ("no usable S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or pass "
                f"--storage-options): {e}")
    if mod in ("botocore", "aiobotocore") and "Endpoint" in name:
        return f"cannot reach the storage endpoint: {e}"
    if isinstance(e, UnicodeDecodeError):
        return f"an input file is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8"
    if isinstance(e, PermissionError):
        return f"permission denied: {e.filename or e}"
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError)) and e.filename:
        return f"{e.strerror.lower() if e.strerror else 'not found'}: {e.filename}"
    return None


class _Group(click.Group):
    """A click group whose errors are one line each."""

    def main(self, *args, **kwargs):  # noqa: D401
        import logging

        from msdmatch.errors import MsdmatchError

        # aiohttp/s3fs tasks orphaned by a storage outage are reported as one line below,
        # not as asyncio's "Task exception was never retrieved" tracebacks
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help() if e.ctx else str(e))
            sys.exit(2)
        except click.UsageError as e:
            cmd = e.ctx.command_path if e.ctx else "msdmatch"
            _fail(f"{cmd}: {e.format_message()} (see `{cmd} --help`)", 2)
        except (click.Abort, KeyboardInterrupt):
            _quiet_exit("interrupted; re-run the same command to resume", 130)
        except MsdmatchError as e:
            _fail(str(e), e.exit_code)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except Exception as e:
            msg = _user_error(e)
            if msg is None:
                raise
            _fail(msg, 2)
        sys.exit(rv if isinstance(rv, int) else 0)


def _quiet_exit(msg: str, code: int) -> None:
    """Print one line and leave at once: no shutdown noise from threads or workers."""
    import os

    click.echo(f"msdmatch: {msg}", err=True)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)


def _storage_options(value: str | None) -> dict | None:
    if not value:
        return None
    try:
        opts = json.loads(value)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"expected a JSON object, got {value!r} ({e.msg})") from None
    if not isinstance(opts, dict):
        raise click.BadParameter(f"expected a JSON object, got {type(opts).__name__}")
    return opts


scheduler_opt = click.option(
    "--scheduler", default=None, metavar="ADDR",
    help="Dask scheduler address (default: $DASK_SCHEDULER_ADDRESS, else a LocalCluster).")
workers_opt = click.option(
    "--workers", type=click.IntRange(min=1), default=None,
    help="LocalCluster workers (default: one per core).")
so_opt = click.option(
    "--storage-options", "storage_options", default=None, metavar="JSON",
    callback=lambda c, p, v: _storage_options(v),
    help="fsspec options for s3:// stores as JSON, e.g. '{\"endpoint_url\": \"http://...\"}'. "
         "Credentials default to the standard AWS environment and config.")
quiet_opt = click.option("--quiet", is_flag=True, help="No progress bar.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="msdmatch")
@click.option("--verbose", is_flag=True, help="Show library warnings (hidden by default).")
def main(verbose: bool) -> None:
    """Match MIDI files to the audio recordings they transcribe (Raffel & Ellis cascade)."""
    if not verbose:  # library warnings stay off the user's terminal, here and in the workers
        import os
        import warnings

        warnings.simplefilter("ignore")
        os.environ["PYTHONWARNINGS"] = "ignore"


@main.group()
def featurize() -> None:
    """Compute CQT features of audio previews or MIDI files into a Zarr store."""


def _featurize(kind: str, *, quiet: bool, workers: int | None, **options) -> None:
    from msdmatch.stages import featurize as stage

    summary = stage.run(kind=kind, n_workers=workers, progress=not quiet, **options)
    click.echo(summary.line())


def _featurize_options(f):
    for opt in reversed([
        click.argument("src"),
        click.option("--out", required=True, metavar="STORE", help="Store path or s3:// URL."),
        click.option("--partition-size", type=click.IntRange(min=1), default=FEATURIZE.partition_size,
                     show_default=True, help="Files per task."),
        click.option("--overwrite", is_flag=True,
                     help="Replace the msdmatch store at STORE instead of resuming it (never anything else)."),
        click.option("--append", is_flag=True,
                     help="Add SRC's new items to the complete store STORE (ids already there are skipped)."),
        scheduler_opt, workers_opt, so_opt, quiet_opt,
    ]):
        f = opt(f)
    return f


@featurize.command("audio")
@_featurize_options
def featurize_audio(**options):
    """Featurize audio files (mp3, wav, flac, ogg) from SRC into STORE.

    SRC is a directory (recursive), a glob, a manifest (.txt/.csv) or an s3:// prefix.
    """
    _featurize("audio", **options)


@featurize.command("midi")
@_featurize_options
@click.option("--mode", type=click.Choice(["synth", "pianoroll"]), default="synth", show_default=True,
              help="Synthesize with fluidsynth, or use the piano roll.")
@click.option("--soundfont", default=None, help="Soundfont for --mode synth (default: TimGM6mb).")
def featurize_midi(**options):
    """Featurize MIDI files from SRC into STORE.

    SRC is a directory (recursive), a glob, a manifest (.txt/.csv) or an s3:// prefix.
    """
    _featurize("midi", **options)


@main.command("demo-data")
@click.argument("out")
@click.option("--songs", type=click.IntRange(min=1), default=400, show_default=True,
              help="Songs with a MIDI query.")
@click.option("--distractors", type=click.IntRange(min=0), default=1600, show_default=True,
              help="Previews of songs without a query.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--balanced", is_flag=True,
              help="Draw music21 works evenly from its collections (training corpora).")
@click.option("--style", type=click.Choice(["default", "realistic"]), default="default", show_default=True,
              help="Recording style: realistic drops parts (the melody too), changes structure, "
                   "humanizes timing, mixes drums loud (training corpora).")
@click.option("--fm-share", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Share of previews rendered by the built-in FM synthesizer instead of fluidsynth "
                   "(training corpora).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes (default: cores).")
def demo_data(out, songs, distractors, seed, balanced, style, fm_share, workers):
    """Build the demo corpus in OUT: midi/, audio/, truth.csv, split.csv."""
    import os

    from msdmatch.demo import build_corpus

    s = build_corpus(out, songs=songs, distractors=distractors, seed=seed, balanced=balanced,
                     style=style, fm_share=fm_share, n_workers=workers or os.cpu_count() or 1)
    click.echo(f"demo corpus: {json.dumps(s)}")


@main.command()
@click.argument("store")
@click.option("--models", multiple=True, metavar="DIR",
              help="Model directory, or a directory of them (default: the shipped models). Repeatable.")
@click.option("--partition-size", type=click.IntRange(min=1), default=EMBED.partition_size, show_default=True,
              help="Items per task.")
@scheduler_opt
@workers_opt
@so_opt
@quiet_opt
def embed(store, models, partition_size, scheduler, workers, storage_options, quiet):
    """Write PSE embeddings and packed DHS hashes for every item of STORE."""
    from msdmatch.stages import embed as stage

    s = stage.run(store, models=list(models) or None, scheduler=scheduler, n_workers=workers,
                  partition_size=partition_size, storage_options=storage_options, progress=not quiet)
    click.echo(stage.summary_line(s, store))


@main.command()
@click.argument("queries")
@click.argument("db")
@click.option("--out", required=True, metavar="MATCHES",
              help="A .csv or .parquet file, a .zarr group, or a folder name without an extension "
                   "(a Parquet dataset, one part per batch); local or s3://.")
@click.option("--models", default=None, metavar="DIR", help="Models used by embed (default: shipped).")
@click.option("--fusion", default=None, metavar="JSON", help="Fusion model (default: shipped).")
@click.option("--prune-k", type=click.IntRange(min=1), default=None,
              help="PSE survivors K (default: max(1% of DB, 1000)).")
@click.option("--rerank", type=click.IntRange(min=1), default=MATCH.rerank, show_default=True,
              help="DHS survivors R, screened with a coarse DTW.")
@click.option("--verify", type=click.IntRange(min=1), default=MATCH.verify, show_default=True,
              help="Candidates verified with full DTW (V).")
@click.option("--keep", type=click.Choice(["rerank", "all"]), default=MATCH.keep, show_default=True,
              help="Rows per query: the R reranked, or all K pruned.")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="A query's top row is `matched` when its confidence reaches this "
                   "[default: the fusion model's threshold, else 0.5].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help=f"Queries per batch, the unit of work and of commit [default: {MATCH.batch_size}].")
@click.option("--overwrite", is_flag=True,
              help="Replace msdmatch matches of another run at MATCHES (never anything else).")
@scheduler_opt
@workers_opt
@so_opt
@quiet_opt
def match(queries, db, out, models, fusion, prune_k, rerank, verify, keep, threshold, batch_size, overwrite,
          scheduler, workers, storage_options, quiet):
    """Find each MIDI query's recording in DB: prune, rerank, screen, verify.

    Query batches are committed to MATCHES as they finish; re-running the
    same command skips them.
    """
    from msdmatch.stages.match import job as stage

    s = stage.run(queries, db, out, models=models, fusion=fusion, prune_k=prune_k, rerank=rerank,
                  verify=verify, keep=keep, threshold=threshold, overwrite=overwrite,
                  batch_size=batch_size or stage.DEFAULT_BATCH_SIZE, scheduler=scheduler, n_workers=workers,
                  storage_options=storage_options, progress=not quiet)
    click.echo(stage.summary_line(s))


@main.command()
@click.argument("matches")
@click.option("--truth", required=True, metavar="CSV",
              help="query_id,track_id: several rows per query allowed; an empty track_id = no match exists.")
@click.option("--out", default=None, metavar="DIR",
              help="Write metrics.json, rank_table.txt and plots (rank CDF, distances, reliability, ROC).")
@click.option("--queries", default=None, metavar="STORE",
              help="Query store: adds the PSE-vs-mean/std-baseline comparison.")
@click.option("--db", default=None, metavar="STORE", help="Database store (with --queries).")
@click.option("--brute-force", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also match this many queries by brute-force DTW against the whole DB.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Accept a top-1 at this confidence [default: the `matched` column, else 0.5].")
@scheduler_opt
@workers_opt
@so_opt
def report(matches, truth, out, queries, db, brute_force, threshold, scheduler, workers, storage_options):
    """Rank table, MRR, per-stage recall, calibration, open-set decisions and plots for MATCHES."""
    from msdmatch.evaluation.metrics import rank_table
    from msdmatch.stages.report import run_report

    if bool(queries) != bool(db):
        raise click.UsageError("--queries and --db go together")
    metrics = run_report(matches, truth, out_dir=out, queries=queries, db=db, brute_force=brute_force,
                         threshold=threshold, scheduler=scheduler, n_workers=workers,
                         storage_options=storage_options,
                         warn=lambda w: click.echo(f"msdmatch: warning: {w}", err=True))
    click.echo(rank_table(metrics) + _comparison_lines(metrics), nl=False)


def _comparison_lines(m: dict) -> str:
    lines = []
    if "baseline_top_1pct" in m:
        lines.append(f"pruning at 1% ({m['one_pct']} of {m['db_size']}): PSE keeps "
                     f"{m.get('pse_top_1pct', float('nan')):.3f}, mean/std baseline "
                     f"{m['baseline_top_1pct']:.3f}; at K={m['prune_k']}: PSE "
                     f"{m.get('pse_top_k', float('nan')):.3f}, baseline {m['baseline_top_k']:.3f}")
    if "brute_force_top_1" in m:
        lines.append(f"brute-force DTW on {m['brute_force_queries']} queries: top-1 "
                     f"{m['brute_force_top_1']:.3f} at {m['brute_force_seconds_per_query_core']:.2f} "
                     f"s/query/core (bin-standardised: {m['brute_force_std_top_1']:.3f} at "
                     f"{m['brute_force_std_seconds_per_query_core']:.2f} s); cascade on the same "
                     f"queries: top-1 {m['cascade_top_1_same_queries']:.3f}")
    return "".join(line + "\n" for line in lines)


@main.command()
@click.argument("out", default="demo_out")
@click.option("--songs", type=click.IntRange(min=5), default=200, show_default=True)
@click.option("--distractors", type=click.IntRange(min=0), default=800, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mode", type=click.Choice(["synth", "pianoroll"]), default="synth", show_default=True)
@click.option("--brute-force", type=click.IntRange(min=0), default=10, show_default=True,
              help="Test queries also matched by brute-force DTW, for comparison.")
@scheduler_opt
@workers_opt
def demo(out, songs, distractors, seed, mode, brute_force, scheduler, workers):
    """Build the demo corpus in OUT and run the whole cascade on it."""
    from msdmatch.demo.pipeline import run_demo

    t0 = time.perf_counter()
    m = run_demo(out, songs=songs, distractors=distractors, seed=seed, mode=mode,
                 brute_force=brute_force, scheduler=scheduler, n_workers=workers,
                 say=lambda s: click.echo(s, err=True))
    from msdmatch.evaluation.metrics import rank_table

    pq = m["match_per_query_seconds"]
    click.echo(f"\ntest split of the demo corpus ({m['n_queries']} queries, {m.get('db_size', '?')} previews):")
    click.echo(rank_table(m) + _comparison_lines(m), nl=False)
    click.echo(f"time per query on {m['match_threads']} threads: prune {pq['prune'] * 1e3:.1f} ms, "
               f"rerank {pq['rerank'] * 1e3:.1f} ms, screen {pq['screen'] * 1e3:.1f} ms, "
               f"verify {pq['verify'] * 1e3:.1f} ms, "
               f"total {pq['total'] * 1e3:.1f} ms")
    click.echo(f"demo finished in {time.perf_counter() - t0:.0f} s; report in {out}/report")


@main.command()
@click.argument("matches", nargs=-1, required=True)
@click.option("--truth", required=True, multiple=True, metavar="CSV",
              help="query_id,track_id[,split]; an empty track_id = no match exists. One for all MATCHES, "
                   "or one per MATCHES in the same order.")
@click.option("--split", default="valid", show_default=True,
              help="Use only these truth rows when the CSV has a split column.")
@click.option("--target-false-accept", type=click.FloatRange(0, 1), default=0.02, show_default=True,
              help="The threshold accepts at most this share of the queries with no match (cross-validated).")
@click.option("--verify-veto", type=click.FloatRange(0, None), default=None, metavar="S",
              help="Confidence 0 where verify_score >= S (synthesized queries: 1.0, the thesis's c = 0).")
@click.option("--out", required=True, metavar="JSON", help="Fusion model to write.")
def calibrate(matches, truth, split, target_false_accept, verify_veto, out):
    """Fit the fused, calibrated confidence and its threshold on MATCHES of validation queries.

    Give open-set runs (see `python -m msdmatch.evaluation.openset`): queries matched
    against a database without their recording, their truth track_id empty.
    """
    from msdmatch.stages.calibrate import calibrate_files

    model = calibrate_files(list(matches), list(truth), split=split, out=out,
                            target_false_accept=target_false_accept, verify_veto=verify_veto)
    fa = "n/a" if model.false_accept_rate is None else f"{model.false_accept_rate:.3f}"
    ta = "n/a" if model.true_accept_rate is None else f"{model.true_accept_rate:.3f}"
    click.echo(f"fusion model -> {out}: threshold {model.threshold:.2f} (false accepts {fa}, true accepts "
               f"{ta}, cross-validated); {json.dumps(model.metrics)}")


@main.command()
@click.argument("query_midi")
@click.argument("track_audio")
@click.option("--out", required=True, metavar="ALIGNED.mid")
@click.option("--soundfont", default=None, help="Soundfont for the MIDI synthesis.")
@click.option("--mode", type=click.Choice(["auto", "full", "excerpt"]), default="auto", show_default=True,
              help="The recording is the whole piece or an excerpt (auto: by its length).")
@click.option("--overwrite", is_flag=True, help="Replace an aligned MIDI file msdmatch wrote before.")
def align(query_midi, track_audio, out, soundfont, mode, overwrite):
    """Retime QUERY_MIDI to TRACK_AUDIO with a compact tempo map.

    Every track and event is kept; for an excerpt, notes outside the aligned span
    are dropped and the file records the span.
    """
    from msdmatch.errors import InputError, ParameterError
    from msdmatch.stages.align.pair import align_files, check_align_out

    check_align_out(out, overwrite=overwrite)
    try:
        s = align_files(query_midi, track_audio, out, soundfont=soundfont, mode=mode)
    except InputError as e:
        raise ParameterError(f"cannot align {query_midi!r} to {track_audio!r}: {e}") from None
    a, b = s["midi_span"]
    click.echo(f"aligned {query_midi} to {track_audio}: confidence {s['confidence']:.3f}, "
               f"{'excerpt' if s['excerpt'] else 'full'} ({a:.1f}-{b:.1f} s of the MIDI), "
               f"{s['tempo_events']} tempo events for {s['beats']} beats -> {out}")


@main.command()
@click.argument("queries")
@click.argument("db")
@click.option("--truth", required=True, metavar="CSV",
              help="truth.csv or split.csv (query_id,track_id[,split]).")
@click.option("--out", required=True, metavar="MODELDIR")
@click.option("--kind", type=click.Choice(["both", "dhs", "pse"]), default="both", show_default=True)
@click.option("--search", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random-search trials per model (0: the default hyper-parameters).")
@click.option("--minutes", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Wall-clock budget for all training.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--align-with", default=None, metavar="STORE",
              help="Synth-CQT store of the same MIDI, to align DHS pairs when QUERIES is a piano roll.")
@click.option("--dhs", "dhs_dir", default=None, metavar="MODELDIR",
              help="With --kind pse: the DHS model the PSE is built on [default: OUT/dhs-<modality>].")
@click.option("--recordings", multiple=True, type=click.Path(exists=True, dir_okay=False), metavar="JSONL",
              help="A generated corpus's recordings.jsonl: its previews' known alignments replace DTW "
                   "(repeatable).")
def train(queries, db, truth, out, kind, search, minutes, seed, align_with, dhs_dir, recordings):
    """Train the DHS and PSE nets (torch) and export them to ONNX."""
    try:
        from msdmatch.models.train import train_models
    except ImportError as e:
        from msdmatch.errors import ParameterError

        raise ParameterError(f"training needs torch: pip install 'msdmatch[train]' ({e})") from None
    from msdmatch.demo.corpus import time_maps

    dirs = train_models(queries, db, truth, out_dir=out, kind=kind, seed=seed, max_minutes=minutes,
                        search=search, align_store=align_with, dhs_dir=dhs_dir,
                        known=time_maps(recordings) if recordings else None,
                        progress=lambda m: click.echo(m, err=True))
    for k, d in dirs.items():
        click.echo(f"{k}: {d}")


@main.command("align-matches")
@click.argument("matches")
@click.option("--queries", required=True, metavar="STORE", help="The MIDI store MATCHES was computed from.")
@click.option("--db", required=True, metavar="STORE", help="The audio store MATCHES was computed from.")
@click.option("--out", required=True, metavar="DIR", help="Folder for <query_id>.mid files and failures.csv.")
@click.option("--min-confidence", type=click.FloatRange(0.0, 1.0), default=None,
              help="Align top rows with at least this confidence [default: the `matched` column, else 0.5].")
@click.option("--soundfont", default=None, help="Soundfont for the MIDI synthesis.")
@scheduler_opt
@workers_opt
@so_opt
@quiet_opt
def align_matches(matches, queries, db, out, min_confidence, soundfont, scheduler, workers, storage_options,
                  quiet):
    """Write an aligned MIDI file for every confident match in MATCHES (resumable)."""
    from msdmatch.stages.align import batch as align_batch

    s = align_batch.run(matches, queries=queries, db=db, out=out, min_confidence=min_confidence,
                        soundfont=soundfont, scheduler=scheduler, n_workers=workers,
                        storage_options=storage_options, progress=not quiet)
    click.echo(align_batch.summary_line(s))


@main.command("run")
@click.argument("spec", metavar="SPEC")
@scheduler_opt
@click.option("--dry-run", is_flag=True, help="Validate SPEC and print the plan; start nothing, read no data.")
@quiet_opt
def run(spec, scheduler, dry_run, quiet):
    """Run the job spec SPEC (jobs/*.yaml): featurize, embed, match or report.

    --dry-run prints partitions, tasks, CPU-hours and outputs without touching data.
    """
    from msdmatch.runner import run_spec

    result = run_spec(spec, scheduler=scheduler, dry_run=dry_run, progress=not quiet)
    click.echo(result["text"])


if __name__ == "__main__":  # pragma: no cover
    main()
