"""The ``pipeline`` command (Typer). No logic here: parse, call, report errors in one line."""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from pipeline import layout
from pipeline.weights_cli import weights_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build annotated face datasets.")
app.add_typer(weights_app, name="weights")

# What `pipeline run` assumes for an option given nowhere (RunConfig's defaults; a test keeps them equal).
RUN_DEFAULTS = {"source": "sample", "out": "out", "preset": "full", "shard_size": "1000", "executor": "auto"}


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    return str(exc)


def _fail(exc: BaseException, code: int = 2) -> None:
    typer.echo(f"error: {_message(exc)}", err=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        from pipeline.versions import describe

        typer.echo(describe())
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="Show the version of faceweave and its key dependencies.")) -> None:
    """Build annotated face datasets."""


@app.command()
def run(
    source: Optional[str] = typer.Option(None, help="Source name (see `pipeline sources`).",
                                         show_default=RUN_DEFAULTS["source"]),
    input: Optional[str] = typer.Option(None, "--input", help="Input folder of the source (unused by sample)."),
    out: Optional[str] = typer.Option(None, help="Output folder.", show_default=RUN_DEFAULTS["out"]),
    stages: Optional[str] = typer.Option(None, help="Comma-separated stages (see `pipeline stages`).",
                                         show_default="the preset's"),
    preset: Optional[str] = typer.Option(None, help="Preset (see `pipeline presets`).",
                                         show_default=RUN_DEFAULTS["preset"]),
    config: Optional[str] = typer.Option(None, "--config", help="YAML config file."),
    set_: list[str] = typer.Option([], "--set", help="STAGE.FIELD=VALUE override (repeatable).", show_default=False),
    shard_size: Optional[int] = typer.Option(None, help="Samples per shard (fixed once per output).",
                                             show_default=RUN_DEFAULTS["shard_size"]),
    weights_dir: Optional[str] = typer.Option(None, help="Weights directory.",
                                              show_default="$FACEWEAVE_WEIGHTS, else ~/.cache/faceweave/weights"),
    executor: Optional[str] = typer.Option(None, help="auto (Ray with a GPU or --ray-address, else processes), ray, processes (a worker process per core) or local (this process).",
                                          show_default=RUN_DEFAULTS["executor"]),
    ray_address: Optional[str] = typer.Option(None, help="Join an existing Ray cluster.",
                                              show_default="an embedded local Ray"),
    num_cpus: Optional[int] = typer.Option(None, help="CPU cap for the embedded Ray and the worker processes.", show_default="all cores"),
    num_gpus: Optional[float] = typer.Option(None, help="GPU cap for the embedded Ray.", show_default="all GPUs"),
    retry_errors: Optional[str] = typer.Option(
        None, help="Recompute the error rows of these stages (comma-separated, or 'all'); ok rows stay."),
    refresh: bool = typer.Option(
        False, "--refresh", help="Accept input files added, deleted or changed since planning: recompute just those."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Keep third-party log lines (Ray, mediapipe/TFLite) and show tracebacks."),
) -> None:
    """Run the pipeline: source step, stages, pack."""
    from contextlib import ExitStack

    from pipeline.logs import native_stderr_filtered, quiet_third_party
    from pipeline.preflight import check_output_folder

    flags = dict(source=source, input=input, out=out, stages=stages, shard_size=shard_size,
                 weights_dir=weights_dir, executor=executor, ray_address=ray_address,
                 num_cpus=num_cpus, num_gpus=num_gpus, retry_errors=retry_errors, refresh=refresh or None)
    try:
        with ExitStack() as stack:
            stack.enter_context(quiet_third_party(verbose))  # its environment reaches the fork server too
            early = not config and _fresh_run_on_workers(executor, ray_address, num_gpus, out)
            if early:  # the workers' imports (~4 s) start now, beside the config's; a failed run kills them
                from pipeline.core.forkserver import warm_up

                if not verbose:
                    stack.enter_context(native_stderr_filtered())  # first: the workers inherit this fd 2
                warm_up()
            from pipeline.config import resolve  # imports the stage registry: after the fork server's start

            cfg = resolve(preset=preset, config_file=config, flags=flags, sets=set_)
            if not quiet:
                _say_assumed(cfg, flags, preset, config)
            check_output_folder(cfg.out)
            from pipeline.config import choose_executor

            if choose_executor(cfg) in ("local", "processes") and not verbose and not early:
                stack.enter_context(native_stderr_filtered())  # models' C++ logs: this fd 2
            if choose_executor(cfg) == "processes" and not layout.run_json(cfg.out).exists():
                from pipeline.core.forkserver import warm_up

                warm_up()  # a fresh output has work to do (a no-op when started above)
            from pipeline.core.runner import run as run_pipeline  # heavy (models): only once the checks passed

            summary = run_pipeline(cfg, quiet=quiet)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        if verbose:
            raise
        _fail(exc, code=1 if getattr(exc, "errno", None) == errno.ENOSPC else 2)  # disk full: 1
    except KeyboardInterrupt:
        if verbose:
            raise
        typer.echo("interrupted: finished shards are kept; rerun the same command to go on", err=True)
        raise typer.Exit(130)
    errors = sum(s["status"].get("error", 0) for s in summary["stages"].values())
    if not quiet and not summary.get("nothing_to_do"):
        left_out = ", ".join(f"{n} {why}" for why, n in sorted(summary.get("skipped_files", {}).items()))
        typer.echo(f"done: {summary['packed']} of {summary['samples']} samples packed into "
                   f"{cfg.out}/shards ({errors} error rows in the manifests"
                   f"{'; input files left out: ' + left_out if left_out else ''})")
    failed = summary.get("failed_shards") or {}
    if failed:
        for why in failed.values():
            typer.echo(f"error: {why}", err=True)
        typer.echo(f"error: {len(failed)} shard(s) could not finish; the others did. Rerun the same command "
                   "to redo what is missing", err=True)
        raise typer.Exit(1)


def _fresh_run_on_workers(executor: Optional[str], ray_address: Optional[str], num_gpus: Optional[float],
                          out: Optional[str]) -> bool:
    """What the flags alone tell, before the config is read: a fresh output (no run.json) that
    will run on worker processes (``choose_executor``: auto without a GPU or a cluster)."""
    if ray_address or (executor or "auto") not in ("auto", "processes"):
        return False
    if (executor or "auto") == "auto" and (num_gpus > 0 if num_gpus is not None else os.path.exists("/dev/nvidiactl")):
        return False  # a GPU: auto may pick Ray; decided once the config is read
    return not layout.run_json(out or RUN_DEFAULTS["out"]).exists()


def _say_assumed(cfg, flags: dict, preset: Optional[str], config: Optional[str]) -> None:
    """One stderr line naming the --source/--out the run took without being told (and the preset then)."""
    from pipeline.config import load_yaml

    from_file = load_yaml(Path(config)) if config else {}
    assumed = []
    if flags["source"] is None and "source" not in from_file:
        what = " (the 9 bundled photos)" if cfg.source == "sample" else ""
        assumed.append(f"--source {cfg.source}{what}")
    if flags["out"] is None and "out" not in from_file:
        assumed.append(f"--out {cfg.out} ({Path(cfg.out).absolute()})")
    if assumed:
        extra = f" (preset {cfg.preset})" if preset is None and "preset" not in from_file else ""
        typer.echo(f"not given, assumed: {', '.join(assumed)}{extra}", err=True)


@app.command()
def verify(
    out: str = typer.Argument(..., help="Output folder."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only report; keep the done markers."),
) -> None:
    """Check every finished output against its recorded sha256; the next run redoes bad shards."""
    from pipeline.readers.verify import verify as verify_out

    try:
        problems, checked = verify_out(Path(out), dry_run=dry_run)
    except (OSError, ValueError) as exc:
        _fail(exc)
    for path, reason in {p.path: p.reason for p in reversed(problems)}.items():  # once per file
        typer.echo(f"BAD  {path}: {reason}")
    action = "" if dry_run or not problems else "; their done markers were removed, so the next run redoes them"
    typer.echo(f"{checked} done markers checked, {len(problems)} bad file(s){action}")
    if problems:
        raise typer.Exit(1)


@app.command("sources")
def list_sources() -> None:
    """List the sources."""
    from pipeline.sources import SOURCES

    for name, cls in sorted(SOURCES.items()):
        typer.echo(f"{name:<16} {(cls.__doc__ or '').strip().splitlines()[0]}")


@app.command("stages")
def list_stages() -> None:
    """List the stages in run order."""
    import stages as registry

    for name in registry.available():
        cls = registry.stage_class(name)
        kind = f"GPU {cls.gpus}" if cls.gpus else "CPU"
        doc = (cls.__doc__ or "").strip()
        if not doc or doc.startswith(f"{cls.__name__}("):  # a dataclass without a docstring
            doc = (sys.modules[cls.__module__].__doc__ or "").strip()
        doc = doc.splitlines()[0] if doc else ""
        reads = f" (reads {', '.join(cls.reads)})" if cls.reads else ""
        typer.echo(f"{name:<12} {kind:<8} {doc}{reads}")


@app.command("presets")
def list_presets() -> None:
    """List the presets (config files shipped in the package)."""
    from pipeline.config import load_yaml, presets

    for name, path in presets().items():
        data = load_yaml(path)
        typer.echo(f"{name:<8} stages: {', '.join(data.get('stages', []))}  ({path})")


@app.command("inspect")
def inspect_out(
    out: str = typer.Argument(..., help="Output folder of a run."),
    max_samples: int = typer.Option(200, help="Most packed samples in the gallery, spread over identities."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the report's path."),
) -> None:
    """Write OUT/report/index.html: run, provenance, errors, plots, consistency checks, gallery."""
    from pipeline.readers.inspect import build_report, print_summary

    try:
        report = build_report(out, max_samples=max_samples)
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        _fail(exc)
    if quiet:
        typer.echo(str(report.path))
    else:
        print_summary(report)


def _train_help() -> str:
    from training.catalog import describe

    models = "\n\n".join(describe().splitlines())
    return ("Train a model on the shards (training/ depends only on schemas/ and stages/models/).\n\n"
            "`pipeline train configs` lists the shipped configs; --config paper (default) / tiny pick the "
            "model's own. Models:\n\n" + models)


@app.command("train", help=_train_help())
def train_cmd(
    model: str = typer.Argument(..., help="Model: dense-face, portraitbooth, msid, face2diffusion, sefi-ide; "
                                          "or 'configs' to list the shipped configs."),
    shards: Optional[str] = typer.Option(None, help="Shards folder (OUT/shards). Required."),
    base: Optional[str] = typer.Option(None, help="Stable Diffusion: diffusers folder, hub id, or 'tiny' "
                                                  "(required except for msid)."),
    config: Optional[str] = typer.Option(None, "--config", help="Training YAML: path, shipped name, 'paper' "
                                                                "or 'tiny' (default: paper, the model's paper setup)."),
    set_: list[str] = typer.Option([], "--set", help="SECTION.FIELD=VALUE override (repeatable)."),
    resume: Optional[str] = typer.Option(None, help="Checkpoint to resume from, or 'last'."),
    runs_dir: Optional[str] = typer.Option(None, "--runs-dir", help="Folder of the runs (a run writes to "
                                           "RUNS_DIR/<trainer.root_dir>; default: OUT/runs, i.e. runs/ beside the shards folder)."),
    key: Optional[str] = typer.Option(None, help="sefi-ide: sample key of the one face to learn."),
    identity: Optional[str] = typer.Option(None, help="sefi-ide: identity whose reference face the pairs index picks."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Keep Lightning's own info lines and warnings."),
) -> None:
    from training.catalog import MODELS, describe

    if model == "configs":
        typer.echo(describe())
        return
    if model in MODELS and (shards is None or (MODELS[model].needs_base and base is None)):
        _fail(ValueError("--shards is required" if shards is None else f"--base is required for {model}"))
    from training.train import train

    try:
        summary = train(model, shards, base or "", config, set_, resume=resume, runs_dir=runs_dir, key=key,
                        identity=identity, verbose=verbose)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:
        _fail(exc)
    typer.echo(f"done: {summary['steps']} steps, checkpoint {summary['checkpoint']}")
    if summary.get("held_out_auc"):
        typer.echo("held-out AUC: " + ", ".join(f"{k} {v:.4f}" for k, v in summary["held_out_auc"].items()))
    if summary.get("tokens"):
        typer.echo(f"tokens: {summary['tokens']}")


@app.command("audit")
def audit(
    out: str = typer.Argument(..., help="Output folder of a run (needs the identity stage)."),
    threshold: Optional[float] = typer.Option(
        None, help="Outlier cosine; default: the embedding model's same-identity threshold (registry)."),
    near_duplicate: float = typer.Option(0.95, help="Cosine at which two images of one identity are near-duplicates."),
    against: list[str] = typer.Option([], "--against", help="Another output folder to check for shared "
                                      "identities and photos (repeatable) -> OUT/audit/leaks.parquet."),
) -> None:
    """Identity purity: outliers, duplicates, candidate merges; leaks into other folders (writes OUT/audit/ only)."""
    from pipeline.readers.audit import run_audit

    try:
        s = run_audit(out, threshold=threshold, near_duplicate=near_duplicate, against=against)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(f"{s['samples']} samples, {s['identities']} identities: {s['outliers']} outliers, "
               f"{s['duplicates']} duplicates, {s['near_duplicates']} near-duplicates, "
               f"{s['candidate_merges']} candidate merges (threshold {s['threshold']:.3f}, "
               f"{s['threshold_source']}) -> {out}/audit/")
    for f in s["leaks"]["against"] if against else []:
        typer.echo(f"leaks against {f['folder']}: {f['identities']} shared identities ({f['identity_pairs']} "
                   f"pairs), {f['exact_duplicates']} exact and {f['near_duplicates']} near-duplicate photos")
    if against:
        typer.echo(f"--exclude-leaks would drop {s['leaks']['excluded_samples']} samples "
                   f"(see {out}/audit/leaks.parquet, `pipeline sql OUT \"SELECT * FROM leaks\"`)")


@app.command("card")
def card(out: str = typer.Argument(..., help="Output folder of a run.")) -> None:
    """Write OUT/README.md: a Hugging Face dataset card made from what the output knows."""
    from pipeline.readers.card import write_card

    try:
        path = write_card(out)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(str(path))


@app.command("sql")
def sql_query(
    out: str = typer.Argument(..., help="Output folder of a run."),
    query: str = typer.Argument(..., help="SELECT over the views: samples, <stage>, audit, audit_merges, leaks."),
    fmt: str = typer.Option("table", "--format", help="table | csv | parquet."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write to FILE (needed for parquet)."),
) -> None:
    """Query the manifests with DuckDB (in memory, read-only)."""
    import duckdb

    from pipeline.readers import sql

    try:
        sql.write_result(sql.query(out, query), fmt, output, out=out)
    except (ValueError, FileNotFoundError, duckdb.Error) as exc:
        _fail(exc)


@app.command("export")
def export(
    out: str = typer.Argument(..., help="Output folder of a run."),
    fmt: str = typer.Option(..., "--format", help="hf | dense-face | pairs | f2d | ip-adapter-faceid | instantid."),
    to: str = typer.Option(..., "--to", help="Destination folder: new or empty, outside OUT."),
    where: Optional[str] = typer.Option(None, "--where", help="SQL condition on the samples view."),
    copy: bool = typer.Option(False, "--copy", help="Copy source images instead of hard-linking them."),
    exclude_leaks: bool = typer.Option(False, "--exclude-leaks",
                                       help="Drop leaked identities and photos (`pipeline audit OUT --against`)."),
) -> None:
    """Export samples in a trainer's layout (writes only under --to)."""
    import duckdb

    from pipeline.readers.export import export as run_export

    try:
        s = run_export(out, fmt, to, where=where, copy=copy, exclude_leaks=exclude_leaks)
    except (ValueError, KeyError, FileNotFoundError, duckdb.Error) as exc:
        _fail(exc)
    for warning in s["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    files = s["files"]
    typer.echo(f"exported {s.get('samples', 0)} samples as {fmt} to {to} ({files['linked']} linked, "
               f"{files['extracted']} images extracted, {files['written']} files written)")


def main() -> None:
    from pipeline import logs

    logs.NATIVE_FILTER_ALLOWED = True  # a real process: fd 2 may be filtered (never under CliRunner)
    try:
        app()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    _exit_now(code)


def _exit_now(code: object) -> None:
    """End the process without the interpreter's teardown of every module (about a second once
    torch is loaded): every output was renamed into place before this point, and the exit
    handlers (multiprocessing's among them) and stream flushes still run."""
    import atexit
    import logging

    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    from pipeline.core import forkserver

    forkserver.stop()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


if __name__ == "__main__":
    sys.exit(main())
