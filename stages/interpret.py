"""Stage `interpret`: data/models/<experiment> + cache + prepared prompts -> data/interpret/<experiment>/<variant>/."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import typer

from pipeline.cache import FeatureCache
from pipeline.interpret import interpret_experiment, make_backend
from stages import params as P

DEFAULT_VARIANTS = ["vanilla", "micro", "sparse"]


def backend_options(spec: str, *, llm_model: str, api_key_env: str, timeout: float, retries: int,
                    max_new_tokens: int, device: str, keywords: int) -> dict[str, Any]:
    """The constructor options that apply to one backend spec."""
    kind = spec.partition(":")[0]
    if kind == "openai":
        return {"model": llm_model, "api_key_env": api_key_env, "timeout": timeout, "retries": retries}
    if kind == "hf":
        return {"max_new_tokens": max_new_tokens, "device": device}
    if kind == "keywords":
        return {"num_terms": keywords}
    return {}


def main(
    experiment: str = typer.Argument(..., help="Experiment name: a key under `experiments` in params.yaml."),
    variants: list[str] = typer.Option(DEFAULT_VARIANTS, "--variant", "-v",
                                       help="Variants to interpret (repeatable). single and hyre are skipped."),
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="Params file."),
    describer: str = typer.Option(None, help="keywords | hf:<model or path> | openai:<base_url>. "
                                             "Default: params interpret.describer."),
    judge: str = typer.Option(None, help="keywords | hf:<model or path> | openai:<base_url>. "
                                         "Default: params interpret.judge."),
    top_n: int = typer.Option(None, help="Validation prompts per expert to describe it from (paper: 20). "
                                         "Default: params interpret.top_n."),
    per_stratum: int = typer.Option(None, help="Test prompts judged per stratum (top 10 % / rest; paper: 100). "
                                               "Default: params interpret.per_stratum."),
    seed: int = typer.Option(None, help="Seed of the stratified sample and of the random baseline. "
                                        "Default: params interpret.seed."),
    llm_model: str = typer.Option("gpt-4o-mini", help="Model name sent to an openai: endpoint."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the openai: API key."),
    timeout: float = typer.Option(30.0, help="openai: seconds per request."),
    retries: int = typer.Option(2, help="openai: extra attempts after a transient failure."),
    max_new_tokens: int = typer.Option(48, help="hf: tokens generated for a description."),
    device: str = typer.Option("auto", help="hf: device (auto | cpu | cuda)."),
    keywords: int = typer.Option(None, help="keywords: terms per description. Default: params interpret.keywords."),
    features: Path = typer.Option(None, help="Feature cache. Default: data/features/<experiment's dataset>."),
    models: Path = typer.Option(None, help="Trained heads. Default: data/models/<experiment>."),
    prepared: Path = typer.Option(None, help="Prepared pairs (prompt texts). "
                                             "Default: data/prepared/<experiment's dataset>/pairs.parquet."),
    out: Path = typer.Option(None, help="Output folder. Default: data/interpret/<experiment>."),
) -> None:
    """Describe each expert from its top validation prompts and measure description
    fidelity (Eq. 19-20) on the test split; writes <out>/<variant>/experts.{md,json}."""
    params = P.load(params_file)
    spec = P.experiment(params, experiment)
    cache = FeatureCache(features or Path("data/features") / spec["dataset"])
    # Command-line values win; the rest come from params.yaml's `interpret:` block, which
    # DVC tracks, so changing the describer or the sample size reruns this stage.
    settings = P.interpret_settings(params)
    describer = describer or settings["describer"]
    judge = judge or settings["judge"]
    top_n = top_n if top_n is not None else settings["top_n"]
    per_stratum = per_stratum if per_stratum is not None else settings["per_stratum"]
    seed = seed if seed is not None else settings["seed"]
    keywords = keywords if keywords is not None else settings["keywords"]
    options = dict(llm_model=llm_model, api_key_env=api_key_env, timeout=timeout, retries=retries,
                   max_new_tokens=max_new_tokens, device=device, keywords=keywords)
    try:
        describe_backend = make_backend(describer, **backend_options(describer, **options))
        judge_backend = (describe_backend if judge == describer
                         else make_backend(judge, **backend_options(judge, **options)))
    except ValueError as e:  # an unknown spec or a bad option value
        raise typer.BadParameter(str(e)) from None
    with tempfile.TemporaryDirectory(prefix="smoe-interpret-") as scratch:
        results = interpret_experiment(
            cache, prepared or Path("data/prepared") / spec["dataset"] / "pairs.parquet",
            models or Path("data/models") / experiment, variants, out or Path("data/interpret") / experiment,
            describe_backend, judge_backend, scratch=scratch, top_n=top_n, per_stratum=per_stratum, seed=seed,
            extra={"experiment": experiment, "dataset": spec["dataset"]})
    summary = {}
    for name, r in results.items():
        if "skipped" in r:
            typer.echo(f"{name}: skipped: {r['skipped']}", err=True)
            summary[name] = {"skipped": r["skipped"]}
        else:
            summary[name] = {k: round(r[k], 4) for k in ("description_fidelity", "description_fidelity_random",
                                                         "expert_specialization")}
    typer.echo(json.dumps(summary, indent=1))
