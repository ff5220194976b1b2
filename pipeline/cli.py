"""The ``pipeline`` command (Typer). No logic here: parse, call, report errors in one line."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build annotated face datasets.")
weights_app = typer.Typer(no_args_is_help=True, help="List, fetch and verify model weights.")
app.add_typer(weights_app, name="weights")


def _fail(exc: BaseException) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


@app.command()
def run(
    source: Optional[str] = typer.Option(None, help="Source name (see `pipeline sources`)."),
    input: Optional[str] = typer.Option(None, "--input", help="Input folder of the source."),
    out: Optional[str] = typer.Option(None, help="Output folder."),
    stages: Optional[str] = typer.Option(None, help="Comma-separated stages (see `pipeline stages`)."),
    preset: Optional[str] = typer.Option(None, help="Preset (see `pipeline presets`)."),
    config: Optional[str] = typer.Option(None, "--config", help="YAML config file."),
    set_: list[str] = typer.Option([], "--set", help="STAGE.FIELD=VALUE override (repeatable)."),
    shard_size: Optional[int] = typer.Option(None, help="Samples per shard (fixed once per output)."),
    weights_dir: Optional[str] = typer.Option(None, help="Weights directory."),
    executor: Optional[str] = typer.Option(None, help="ray (default) or local."),
    ray_address: Optional[str] = typer.Option(None, help="Join an existing Ray cluster."),
    num_cpus: Optional[int] = typer.Option(None, help="CPU cap for the embedded Ray."),
    num_gpus: Optional[float] = typer.Option(None, help="GPU cap for the embedded Ray."),
    retry_errors: Optional[str] = typer.Option(
        None, help="Recompute the error rows of these stages (comma-separated, or 'all'); ok rows stay."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Run the pipeline: source step, stages, pack."""
    from pipeline.config import resolve
    from pipeline.runner import run as run_pipeline

    flags = dict(source=source, input=input, out=out, stages=stages, shard_size=shard_size,
                 weights_dir=weights_dir, executor=executor, ray_address=ray_address,
                 num_cpus=num_cpus, num_gpus=num_gpus, retry_errors=retry_errors)
    try:
        cfg = resolve(preset=preset, config_file=config, flags=flags, sets=set_)
        summary = run_pipeline(cfg, quiet=quiet)
    except (ValueError, KeyError, FileNotFoundError, NotADirectoryError, RuntimeError) as exc:
        _fail(exc)
    errors = sum(s["status"].get("error", 0) for s in summary["stages"].values())
    if not quiet:
        typer.echo(f"done: {summary['packed']} of {summary['samples']} samples packed into "
                   f"{cfg.out}/shards ({errors} error rows in the manifests)", err=True)


@app.command()
def verify(
    out: str = typer.Argument(..., help="Output folder."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only report; keep the done markers."),
) -> None:
    """Check every finished output against its recorded sha256; the next run redoes bad shards."""
    from pipeline.verify import verify as verify_out

    try:
        problems, checked = verify_out(Path(out), dry_run=dry_run)
    except (OSError, ValueError) as exc:
        _fail(exc)
    for p in problems:
        typer.echo(f"BAD  {p.path}: {p.reason}")
    action = "" if dry_run or not problems else "; their done markers were removed, so the next run redoes them"
    typer.echo(f"{checked} done markers checked, {len(problems)} bad file(s){action}", err=True)
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
    from pipeline.inspect import build_report, print_summary

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
) -> None:
    """Identity purity: outliers, duplicates, candidate merges (writes OUT/audit/ only)."""
    from pipeline.audit import run_audit

    try:
        s = run_audit(out, threshold=threshold, near_duplicate=near_duplicate)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(f"{s['samples']} samples, {s['identities']} identities: {s['outliers']} outliers, "
               f"{s['duplicates']} duplicates, {s['near_duplicates']} near-duplicates, "
               f"{s['candidate_merges']} candidate merges (threshold {s['threshold']:.3f}, "
               f"{s['threshold_source']}) -> {out}/audit/", err=True)


@app.command("sql")
def sql_query(
    out: str = typer.Argument(..., help="Output folder of a run."),
    query: str = typer.Argument(..., help="SELECT over the views: samples, <stage>, audit, audit_merges."),
    fmt: str = typer.Option("table", "--format", help="table | csv | parquet."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Write to FILE (needed for parquet)."),
) -> None:
    """Query the manifests with DuckDB (in memory, read-only)."""
    import duckdb

    from pipeline import sql

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
) -> None:
    """Export samples in a trainer's layout (writes only under --to)."""
    import duckdb

    from pipeline.export import export as run_export

    try:
        s = run_export(out, fmt, to, where=where, copy=copy)
    except (ValueError, KeyError, FileNotFoundError, duckdb.Error) as exc:
        _fail(exc)
    for warning in s["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    files = s["files"]
    typer.echo(f"exported {s.get('samples', 0)} samples as {fmt} to {to} ({files['linked']} linked, "
               f"{files['extracted']} images extracted, {files['written']} files written)", err=True)


@weights_app.command("list")
def weights_list(weights_dir: Optional[str] = typer.Option(None, help="Weights directory.")) -> None:
    """Registered weights, where each is expected and whether it is there."""
    from stages.models import registry

    _load_families()
    for name, spec in sorted(registry.REGISTRY.items()):
        path = registry.path_of(name, weights_dir)
        state = "present" if path.exists() else "missing"
        typer.echo(f"{name:<28} {spec.family:<14} {state:<8} {path}")


@weights_app.command("path")
def weights_path(name: str, weights_dir: Optional[str] = typer.Option(None)) -> None:
    """Where the file of NAME is expected."""
    from stages.models import registry

    _load_families()
    try:
        typer.echo(str(registry.path_of(name, weights_dir)))
    except KeyError as exc:
        _fail(exc)


@weights_app.command("verify")
def weights_verify(weights_dir: Optional[str] = typer.Option(None)) -> None:
    """Check the sha256 of every present weights file."""
    from stages.models import registry

    _load_families()
    bad = 0
    for name in sorted(registry.REGISTRY):
        try:
            registry.resolve(name, weights_dir)
            typer.echo(f"{name:<28} ok")
        except registry.MissingWeights:
            typer.echo(f"{name:<28} missing")
        except (registry.BadChecksum, ValueError) as exc:
            bad += 1
            typer.echo(f"{name:<28} BAD: {exc}")
    if bad:
        raise typer.Exit(1)


@weights_app.command("fetch")
def weights_fetch(names: list[str] = typer.Argument(None), weights_dir: Optional[str] = typer.Option(None)) -> None:
    """Download weights from their upstream URLs (needs internet) and verify them."""
    from stages.models import registry

    _load_families()
    try:
        registry.fetch(names or sorted(n for n, s in registry.REGISTRY.items() if not s.bundled), weights_dir)
    except (OSError, ValueError, KeyError) as exc:
        _fail(exc)


def _load_families() -> None:
    """Import the model families and the stages so every weights entry is registered."""
    import stages
    import stages.models  # noqa: F401  (the package imports its families)

    for name in stages.available():
        stages.stage_class(name)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
