"""``pipeline weights list|path|verify|fetch``: the weights registry from the command line."""
from __future__ import annotations

from typing import Optional

import typer

weights_app = typer.Typer(no_args_is_help=True, help="List, fetch and verify model weights.")


def _fail(exc: BaseException, code: int = 2) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code)


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
