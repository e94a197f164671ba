"""`smoe serve`: an HTTP reward server (OpenRLHF's /get_reward, native /score) for one
backbone and one or more trained or personalized heads. The server is pipeline/serve.py."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline import backbone as bb
from stages import common as P


def main(
    model: list[str] = typer.Option(..., "--model", "-m",
                                    help="A head to serve, NAME=FOLDER or FOLDER (named after the folder); repeat "
                                         "for several, e.g. --model sparse=data/models/categories/sparse "
                                         "--model alice=out/alice. The first answers requests that name no model."),
    backbone: str = typer.Option("data/backbone", help="Backbone folder or hub id the heads were trained on."),
    params_file: Path = typer.Option(P.PARAMS, "--params",
                                     help="Params whose `backbone` block (system prompt, template date, max "
                                          "length) featurize used; skipped when the file does not exist."),
    default: str = typer.Option(None, help="Name of the head that answers when a request names none "
                                           "(default: the first --model)."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="TCP port."),
    max_pairs: int = typer.Option(256, help="Most pairs (queries) one request may carry (413 above)."),
    max_body_mb: float = typer.Option(8.0, help="Most request body size in MiB (413 above)."),
    max_queue: int = typer.Option(4096, help="Most pairs waiting to be scored; new requests get 503 above."),
    batch_pairs: int = typer.Option(256, help="Most pairs scored together in one batcher step."),
    batch_wait_ms: float = typer.Option(5.0, help="How long a request waits for others to join its batch."),
    timeout: float = typer.Option(120.0, help="Seconds a request may wait for its scores (504 after)."),
    token_budget: int = typer.Option(4096, help="Padded tokens per backbone forward pass (memory bound)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
) -> None:
    """Serve reward models over HTTP until SIGTERM/SIGINT (in-flight requests finish first).

    Endpoints: POST /get_reward (OpenRLHF: --remote_rm_url http://HOST:PORT/get_reward,
    add ?model=NAME for another head), POST /score ({"pairs": [{"prompt", "response"}],
    "model"?, "routing_weights"?}), GET /health, GET /models. Concurrent requests are
    batched into shared forward passes."""
    from pipeline.serve import RewardServer, ServeConfig, load_models, parse_model_specs, run

    heads = parse_model_specs(model)
    config = None
    if params_file.exists():  # the formatting options featurize used (system prompt, template date...)
        config = P.build(bb.BackboneConfig, P.section(P.load(params_file), "backbone"), "backbone",
                         ignore=("source",), model=backbone)
    try:
        serve_config = ServeConfig(max_pairs_per_request=max_pairs, max_body_bytes=int(max_body_mb * 2 ** 20),
                                   max_queued_pairs=max_queue, max_batch_pairs=batch_pairs,
                                   batch_wait_ms=batch_wait_ms, request_timeout_s=timeout)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    models = load_models(heads, config or bb.BackboneConfig(model=backbone), token_budget=token_budget)
    server = RewardServer(models, default=default, config=serve_config, paths=heads)
    typer.echo(f"serving {', '.join(heads)} (default {server.default}) on http://{host}:{port}", err=True)
    run(server, host=host, port=port, log_level=log_level)


if __name__ == "__main__":
    P.run(main)
