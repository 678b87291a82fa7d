"""The ``msdmatch`` command line: parse, call one library function, report.

Library errors (:class:`~msdmatch.errors.MsdmatchError`) and usage mistakes
become one line on stderr with exit code 2 (usage) or 1 (failure); no
traceback reaches the user for a mistake that is theirs.
"""
from __future__ import annotations

import json
import sys

import click

from .params import DEFAULT_PARAMS


def _fail(msg: str, code: int) -> None:
    click.echo(f"msdmatch: error: {msg}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """A click group whose errors are one line each."""

    def main(self, *args, **kwargs):  # noqa: D401
        from .errors import MsdmatchError

        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help() if e.ctx else str(e))
            sys.exit(2)
        except click.UsageError as e:
            cmd = e.ctx.command_path if e.ctx else "msdmatch"
            _fail(f"{cmd}: {e.format_message()} (see `{cmd} --help`)", 2)
        except click.Abort:
            _fail("interrupted; re-run the same command to resume", 130)
        except KeyboardInterrupt:
            _fail("interrupted; re-run the same command to resume", 130)
        except MsdmatchError as e:
            _fail(str(e), e.exit_code)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


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
def main() -> None:
    """Match MIDI files to the audio recordings they transcribe (Raffel & Ellis cascade)."""


@main.group()
def featurize() -> None:
    """Compute CQT features of audio previews or MIDI files into a Zarr store."""


def _featurize(kind, src, out, mode, soundfont, partition_size, scheduler, workers,
               storage_options, overwrite, quiet):
    from . import featurize as stage

    summary = stage.run(src, out, scheduler=scheduler, n_workers=workers, kind=kind, mode=mode,
                        soundfont=soundfont, partition_size=partition_size,
                        storage_options=storage_options, overwrite=overwrite, progress=not quiet)
    click.echo(summary.line())


def _featurize_options(f):
    for opt in reversed([
        click.argument("src"),
        click.option("--out", required=True, metavar="STORE", help="Store path or s3:// URL."),
        click.option("--partition-size", type=click.IntRange(min=1), default=100, show_default=True,
                     help="Files per task."),
        click.option("--overwrite", is_flag=True, help="Start the store afresh instead of resuming."),
        scheduler_opt, workers_opt, so_opt, quiet_opt,
    ]):
        f = opt(f)
    return f


@featurize.command("audio")
@_featurize_options
def featurize_audio(src, out, partition_size, overwrite, scheduler, workers, storage_options, quiet):
    """Featurize audio files (mp3, wav, flac, ogg) from SRC into STORE.

    SRC is a directory (recursive), a glob, a manifest (.txt/.csv) or an s3:// prefix.
    """
    _featurize("audio", src, out, "synth", None, partition_size, scheduler, workers,
               storage_options, overwrite, quiet)


@featurize.command("midi")
@_featurize_options
@click.option("--mode", type=click.Choice(["synth", "pianoroll"]), default="synth", show_default=True,
              help="Synthesize with fluidsynth, or use the piano roll.")
@click.option("--soundfont", default=None, help="Soundfont for --mode synth (default: TimGM6mb).")
def featurize_midi(src, out, partition_size, overwrite, scheduler, workers, storage_options, quiet,
                   mode, soundfont):
    """Featurize MIDI files from SRC into STORE.

    SRC is a directory (recursive), a glob, a manifest (.txt/.csv) or an s3:// prefix.
    """
    _featurize("midi", src, out, mode, soundfont, partition_size, scheduler, workers,
               storage_options, overwrite, quiet)


@main.command("demo-data")
@click.argument("out")
@click.option("--songs", type=click.IntRange(min=1), default=400, show_default=True,
              help="Songs with a MIDI query.")
@click.option("--distractors", type=click.IntRange(min=0), default=1600, show_default=True,
              help="Previews of songs without a query.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Processes (default: cores).")
def demo_data(out, songs, distractors, seed, workers):
    """Build the demo corpus in OUT: midi/, audio/, truth.csv, split.csv."""
    import os

    from .demo import build_corpus

    s = build_corpus(out, songs=songs, distractors=distractors, seed=seed,
                     n_workers=workers or os.cpu_count() or 1)
    click.echo(f"demo corpus: {json.dumps(s)}")


if __name__ == "__main__":  # pragma: no cover
    main()
