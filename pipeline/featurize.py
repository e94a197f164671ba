"""Run the frozen backbone once per unique sequence and write the feature cache.

Phases, all deterministic given the prepared pairs and the config:

1. tokenize: every unique (prompt, response) is formatted and tokenized once; pairs
   reference sequences by id. Token ids go to a memory-mapped Arrow file, so memory
   does not grow with the dataset (only ids and lengths are kept in RAM).
2. plan: sequences that share a prompt prefix are packed into one row (decoders),
   rows are sorted by length, cut into shards of at most ``shard_max_mb`` of vectors
   (and at most ``shard_max_sequences`` sequences), and each shard into batches under a padded-token budget. The plan does
   not depend on the number of processes, so 1 and N processes write identical shards.
3. run: rank r computes shards r, r+N, r+2N, ... skipping shards that are already
   complete and intact (resume), while a writer thread stores the previous shard.
4. finish (rank 0): pairs.parquet + manifest.json, stale files removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections import Counter, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from annotated_types import Ge

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline import cache, pairs
from pipeline.backbone import Backbone, Encoded
from pipeline.progress import Progress, progress

FEATURE_DTYPES = ("float16", "float32")


@dataclass
class FeaturizeConfig:
    """Plain data: how to run featurization (mirrors ``params.yaml: featurize``)."""

    dtype: Literal["float16", "float32"] = "float16"  # storage dtype of the vectors
    token_budget: Annotated[int, Ge(1)] = 4096  # padded tokens per forward batch
    max_responses_per_row: Annotated[int, Ge(1)] = 16  # responses packed after one shared prompt
    shard_max_mb: Annotated[int, Ge(1)] = 256  # uncompressed vector bytes per shard: few large files push fast
    shard_max_sequences: Annotated[int, Ge(1)] = 1_000_000
    padding_side: Literal["right", "left"] = "right"
    integrity_samples: Annotated[int, Ge(0)] = 0  # >0: check score_head . h == model reward on this many
    seed: Annotated[int, Ge(0)] = 0


@dataclass
class Plan:
    seq_ids: list[str]
    shards: list[list[list[tuple[int, list[int]]]]]  # shard -> batch -> row = (first seq idx, [seq idx])
    plan_hash: str
    prompt_keys: list[bytes]      # per sequence: the key of its prompt state (cache.prompt_state_id)
    prompt_owners: set[int]       # first seq idx of the one row (in plan order) that stores each prompt state


# --------------------------------------------------------------------------- distributed


def _dist_context() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        # Ranks finish their shards at different times; the final barrier must wait.
        torch.distributed.init_process_group(backend=backend, timeout=timedelta(hours=12))
    if world > 1:
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


# --------------------------------------------------------------------------- phase 1


def tokenize(prepared: Path, backbone: Backbone, workdir: Path, show_progress: bool = True):
    """Tokenize unique sequences; return (seq_ids, token table, group keys, pairs info)."""
    pf = pq.ParquetFile(prepared)
    pairs.validate_table(pf.schema_arrow.empty_table(), str(prepared))
    meta_cols = [c for c in pairs.METADATA_COLUMNS if c in pf.schema_arrow.names]
    seq_index: dict[str, int] = {}
    seq_ids: list[str] = []
    seq_drop: dict[int, str] = {}
    group_keys: list[bytes] = []
    truncated: list[bool] = []
    kept: dict[str, list] = defaultdict(list)
    dropped: list[dict[str, str]] = []
    token_path = workdir / "tokens.arrow"
    schema = pa.schema([("prefix", pa.list_(pa.int32())), ("response", pa.list_(pa.int32()))])
    buffer: dict[str, list] = {"prefix": [], "response": []}
    bar = progress(pf.metadata.num_rows, "tokenize", "pair", enabled=show_progress)
    with pa.OSFile(str(token_path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        def flush():
            if buffer["prefix"]:
                writer.write_table(pa.table(buffer, schema=schema))
                buffer["prefix"], buffer["response"] = [], []

        def sequence(prompt, response) -> int:
            sid = pairs.sequence_id(prompt, response)
            if sid in seq_index:
                return seq_index[sid]
            idx = len(seq_ids)
            seq_index[sid] = idx
            seq_ids.append(sid)
            try:
                enc = backbone.encode(prompt, response)
            except ValueError as err:  # over-length under the "drop" policy
                seq_drop[idx] = str(err)
                enc = Encoded([], [])
            buffer["prefix"].append(enc.prefix)
            buffer["response"].append(enc.response)
            truncated.append(enc.truncated)
            key = bytes(np.asarray(enc.prefix, dtype=np.int32)) if backbone.shares_prefix else sid.encode()
            group_keys.append(hashlib.sha1(key).digest())
            if len(buffer["prefix"]) >= 4096:
                flush()
            return idx

        for batch in pf.iter_batches(batch_size=2048, columns=["pair_id", "prompt", "chosen", "rejected", "split", *meta_cols]):
            for row in batch.to_pylist():
                prompt = row["prompt"]
                c, r = sequence(prompt, row["chosen"]), sequence(prompt, row["rejected"])
                reason = seq_drop.get(c) or seq_drop.get(r)
                if reason:
                    dropped.append({"id": row["pair_id"], "reason": reason})
                    continue
                kept["pair_id"].append(row["pair_id"])
                kept["split"].append(row["split"])
                kept["chosen_id"].append(seq_ids[c])
                kept["rejected_id"].append(seq_ids[r])
                # The router input: the prompt state of the smaller sequence id (by id,
                # never by label); the two differ only if truncation cut their prompts apart.
                kept["prompt_state_id"].append(cache.prompt_state_id(group_keys[min((c, r), key=seq_ids.__getitem__)]))
                for k in meta_cols:
                    kept[k].append(row[k])
            bar.update(batch.num_rows)
        flush()
    bar.close()
    tokens = pa.ipc.open_file(pa.memory_map(str(token_path))).read_all()
    used = {seq_index[s] for k in ("chosen_id", "rejected_id") for s in kept[k]}
    return seq_ids, tokens, group_keys, truncated, used, kept, dropped, meta_cols


# --------------------------------------------------------------------------- phase 2


def shard_limit(config: FeaturizeConfig, hidden_size: int) -> int:
    """Sequences per shard: at most two vectors each (its response state and at most one
    prompt state), capped by ``shard_max_mb``."""
    per_sequence = 2 * hidden_size * (2 if config.dtype == "float16" else 4)
    return max(1, min(config.shard_max_sequences, config.shard_max_mb * 2**20 // per_sequence))


def make_plan(seq_ids: list[str], lengths: np.ndarray, prefix_lengths: np.ndarray, group_keys: list[bytes],
              used: set[int], config: FeaturizeConfig, max_per_shard: int, fingerprint: dict[str, Any]) -> Plan:
    """Pack, sort, shard and batch. Depends only on the data and the config."""
    groups: dict[bytes, list[int]] = {}
    for idx in sorted(used):
        groups.setdefault(group_keys[idx], []).append(idx)
    rows: list[tuple[int, int, list[int]]] = []  # (row length, first idx, seq idx list)
    for members in groups.values():
        start = 0
        while start < len(members):
            take = [members[start]]
            length = int(lengths[members[start]])
            for idx in members[start + 1:]:
                extra = int(lengths[idx] - prefix_lengths[idx])
                if len(take) >= config.max_responses_per_row or length + extra > config.token_budget:
                    break
                take.append(idx)
                length += extra
            rows.append((length, take[0], take))
            start += len(take)
    rows.sort(key=lambda r: (r[0], r[1]))
    shards, shard, count = [], [], 0
    for row in rows:
        shard.append(row)
        count += len(row[2])
        if count >= max_per_shard:
            shards.append(shard)
            shard, count = [], 0
    if shard:
        shards.append(shard)
    batched = []
    for shard in shards:
        batches, batch = [], []
        for row in shard:  # rows are sorted, so the last row sets the padded width
            if batch and (len(batch) + 1) * row[0] > config.token_budget:
                batches.append(batch)
                batch = []
            batch.append((row[1], row[2]))
        if batch:
            batches.append(batch)
        batched.append(batches)
    digest = hashlib.sha256(json.dumps({**fingerprint, "format_version": cache.FORMAT_VERSION},
                                       sort_keys=True).encode())
    owners, seen = set(), set()
    for shard in batched:
        for batch in shard:
            for first, members in batch:
                digest.update(",".join(seq_ids[i] for i in members).encode() + b";")
                # A prompt whose responses fill several rows is computed in each of them
                # (the row needs it), but stored by the first only: once per prompt.
                if group_keys[first] not in seen:
                    seen.add(group_keys[first])
                    owners.add(first)
    return Plan(seq_ids=seq_ids, shards=batched, plan_hash=digest.hexdigest()[:16], prompt_keys=group_keys,
                prompt_owners=owners)


# --------------------------------------------------------------------------- phase 3


def compute_shard(backbone: Backbone, tokens: pa.Table, plan: Plan, shard: list, truncated: list[bool],
                  config: FeaturizeConfig, bar: Progress) -> pa.Table:
    ids, n_tokens, trunc, resp_states = [], [], [], []
    prompt_ids, prompt_tokens, prompt_trunc, prompt_states = [], [], [], []
    for batch in shard:
        members = [m for _, ms in batch for m in ms]
        rows_tok = tokens.take(pa.array(members, type=pa.int64())).to_pydict()
        cursor, rows, row_first = 0, [], []  # row_first: a member of each row, for its prompt key
        for _, ms in batch:
            prefix = rows_tok["prefix"][cursor]
            responses = rows_tok["response"][cursor:cursor + len(ms)]
            if backbone.shares_prefix:
                rows.append((prefix, responses))
                row_first.append(ms[0])
            else:
                rows += [(p, [r]) for p, r in zip(rows_tok["prefix"][cursor:cursor + len(ms)], responses)]
                row_first += ms
            cursor += len(ms)
        prompt, response = backbone.embed_rows(rows, padding_side=config.padding_side)
        for j, m in enumerate(members):
            ids.append(plan.seq_ids[m])
            n_tokens.append(len(rows_tok["prefix"][j]) + len(rows_tok["response"][j]))
            trunc.append(truncated[m])
        keep = [r for r, m in enumerate(row_first) if m in plan.prompt_owners]
        for r in keep:
            prompt_ids.append(cache.prompt_state_id(plan.prompt_keys[row_first[r]]))
            prompt_tokens.append(len(rows[r][0]))
            prompt_trunc.append(truncated[row_first[r]])
        resp_states.append(response.numpy())
        prompt_states.append(prompt[keep].numpy())
        bar.update(len(members))
    states = np.concatenate(resp_states + prompt_states)
    if not np.isfinite(states).all():
        kind = "response" if not np.isfinite(states[:len(ids)]).all() else "prompt"
        raise FloatingPointError(f"backbone produced non-finite {kind} states")
    return pa.table({
        "state_id": pa.array(ids + prompt_ids, pa.string()),
        "kind": pa.array(["response"] * len(ids) + ["prompt"] * len(prompt_ids), pa.string()),
        "n_tokens": pa.array(n_tokens + prompt_tokens, pa.int32()),
        "truncated": pa.array(trunc + prompt_trunc, pa.bool_()),
        "state": cache.vectors_to_arrow(states, config.dtype),
    }, schema=cache.shard_schema(backbone.hidden_size, config.dtype))


def featurize(prepared: str | Path, out_dir: str | Path, backbone: Backbone, config: FeaturizeConfig,
              dataset: str | None = None, show_progress: bool = True) -> dict[str, Any] | None:
    """Featurize ``prepared`` (a canonical pairs Parquet) into ``out_dir``.

    Safe to kill at any moment and to rerun: completed, intact shards are kept.
    Under torchrun each rank takes a disjoint set of shards; rank 0 writes the manifest
    and returns it (other ranks return None).
    """
    if config.dtype not in FEATURE_DTYPES:
        raise ValueError(f"featurize.dtype must be one of {FEATURE_DTYPES}, got {config.dtype!r}")
    prepared, out_dir = Path(prepared), Path(out_dir)
    if prepared.is_dir():  # a `prepare` output folder
        prepared = prepared / "pairs.parquet"
    rank, world = _dist_context()
    show_progress = show_progress and rank == 0
    shard_dir = out_dir / cache.SHARD_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    old_manifest = {}
    if (out_dir / cache.MANIFEST).exists():
        try:
            old_manifest = json.loads((out_dir / cache.MANIFEST).read_text())
        except json.JSONDecodeError:
            old_manifest = {}

    with tempfile.TemporaryDirectory(prefix="smoe-featurize-") as tmp:
        seq_ids, tokens, group_keys, truncated, used, kept, dropped, meta_cols = tokenize(
            prepared, backbone, Path(tmp), show_progress)
        prefix_len = pa.compute.list_value_length(tokens.column("prefix")).to_numpy(zero_copy_only=False)
        resp_len = pa.compute.list_value_length(tokens.column("response")).to_numpy(zero_copy_only=False)
        fingerprint = {**backbone.identity, "template_hash": backbone.template_hash, "pooling": backbone.pooling,
                       "compute_dtype": str(backbone.dtype), "max_length": backbone.config.max_length,
                       "truncation": backbone.config.truncation, "dtype": config.dtype,
                       "token_budget": config.token_budget, "max_responses_per_row": config.max_responses_per_row,
                       "max_per_shard": shard_limit(config, backbone.hidden_size), "padding_side": config.padding_side,
                       "attention": backbone.config.attention}
        plan = make_plan(seq_ids, prefix_len + resp_len, prefix_len, group_keys, used, config,
                         shard_limit(config, backbone.hidden_size), fingerprint)
        previous = {}
        # An older format's shards are never reused (its plan hash differs anyway: the
        # format version is part of the fingerprint).
        if old_manifest.get("plan_hash") == plan.plan_hash and old_manifest.get("format_version") == cache.FORMAT_VERSION:
            previous = {s["file"]: {**s, "plan_hash": plan.plan_hash} for s in old_manifest.get("shards", [])}

        mine = [i for i in range(len(plan.shards)) if i % world == rank]
        todo = [i for i in mine if cache.completed_shard(shard_dir, i, plan.plan_hash,
                                                         previous.get(cache.shard_name(i))) is None]
        total = sum(len(ms) for i in todo for b in plan.shards[i] for _, ms in b)
        bar = progress(total, f"featurize ({len(mine) - len(todo)}/{len(mine)} shards cached)", "seq",
                       enabled=show_progress)
        pending: Future | None = None
        with ThreadPoolExecutor(max_workers=1) as writer:  # storage overlaps the next shard's compute
            for i in todo:
                table = compute_shard(backbone, tokens, plan, plan.shards[i], truncated, config, bar)
                if pending is not None:
                    pending.result()
                pending = writer.submit(cache.write_shard, shard_dir, i, table, plan.plan_hash)
            if pending is not None:
                pending.result()
        bar.close()
        _barrier(world)
        if rank != 0:
            return None

        records = []
        for i in range(len(plan.shards)):
            rec = cache.completed_shard(shard_dir, i, plan.plan_hash, previous.get(cache.shard_name(i)))
            if rec is None:
                raise cache.CacheError(f"shard {cache.shard_name(i)} is missing or corrupt after featurization")
            records.append(rec)
        pair_table = pa.table({k: pa.array(v, pa.string()) for k, v in kept.items()}) if kept else pa.table(
            {k: pa.array([], pa.string()) for k in ("pair_id", "split", "chosen_id", "rejected_id", "prompt_state_id")})
        pq.write_table(pair_table, out_dir / f".{cache.PAIRS}.tmp")
        os.replace(out_dir / f".{cache.PAIRS}.tmp", out_dir / cache.PAIRS)
        prepare_manifest = prepared.parent / "manifest.json"
        prepare_drops = json.loads(prepare_manifest.read_text()).get("dropped", {}) if prepare_manifest.exists() else {}
        truncated_ids = sorted(plan.seq_ids[i] for i in used if truncated[i])
        manifest = {
            "format_version": cache.FORMAT_VERSION,
            "dataset": dataset or prepared.parent.name,
            **backbone.identity,
            "hidden_size": backbone.hidden_size,
            "dtype": config.dtype,
            "compute_dtype": str(backbone.dtype).replace("torch.", ""),
            "attention": backbone.config.attention,
            "pooling": backbone.pooling,
            "template_hash": backbone.template_hash,
            "template_kwargs": backbone.template_kwargs,
            # The params that shape the rendered template, so that training (which never
            # loads the backbone) can refuse a cache made with another one.
            "template_params": {"system_prompt": backbone.config.system_prompt,
                                "template_date": backbone.config.template_date},
            "max_length": backbone.config.max_length,
            "truncation_policy": backbone.config.truncation,
            "num_sequences": len(used),
            "num_prompt_states": len(plan.prompt_owners),
            "num_pairs": pair_table.num_rows,
            "pairs_sha256": cache.sha256_file(out_dir / cache.PAIRS),
            "pairs_by_split": dict(sorted(Counter(kept.get("split", [])).items())),
            "metadata_columns": meta_cols,
            "dropped": {"counts": dict(sorted(Counter(d["reason"] for d in dropped).items())),
                        "pairs": dropped, "prepare": prepare_drops},
            "truncated": {"count": len(truncated_ids), "seq_ids": truncated_ids},
            "plan_hash": plan.plan_hash,
            "config": asdict(config),
            "shards": [r.__dict__ for r in records],
        }
        if config.integrity_samples > 0:
            manifest["integrity"] = integrity_check(backbone, tokens, plan, out_dir, config, records)
        cache.write_json(out_dir / cache.MANIFEST, manifest)
        keep = {r.file for r in records}
        for path in shard_dir.iterdir():  # sidecars, temp files, shards of an older plan
            if path.name not in keep:
                path.unlink()
        return manifest


# --------------------------------------------------------------------------- integrity


_COMPUTE_TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def integrity_check(backbone: Backbone, tokens: pa.Table, plan: Plan, out_dir: Path,
                    config: FeaturizeConfig, records: list) -> dict[str, Any]:
    """For score-head backbones (GRM): on a seeded sample of cached sequences, the
    model's own reward must equal ``score_head . h_cached`` within a tolerance set by
    the compute dtype plus the rounding of the storage dtype. Raises on failure."""
    if backbone.score_head is None:
        raise cache.CacheError("featurize.integrity_samples > 0 needs a backbone with a linear score head "
                               "(a *ForSequenceClassification model such as GRM)")
    index = {sid: i for i, sid in enumerate(plan.seq_ids)}
    states = {}
    for rec in records:
        table = pq.ParquetFile(out_dir / cache.SHARD_DIR / rec.file).read(columns=["state_id", "kind", "state"],
                                                                           use_threads=False)
        table = table.filter(pa.compute.equal(table.column("kind"), "response"))
        vecs = cache.arrow_to_vectors(table.column("state")).astype(np.float64)
        states.update(zip(table.column("state_id").to_pylist(), vecs))
    sample = random.Random(config.seed).sample(sorted(states), min(config.integrity_samples, len(states)))
    w = backbone.score_head.weight.detach().float().cpu().numpy().astype(np.float64)[0]
    worst = 0.0
    storage_eps = 2.0 ** -10 if config.dtype == "float16" else 2.0 ** -23
    for sid in sample:
        row = tokens.slice(index[sid], 1).to_pylist()[0]
        reward = backbone.own_reward(Encoded(row["prefix"], row["response"]))
        h = states[sid]
        predicted = float(w @ h)
        tol = _COMPUTE_TOL[backbone.dtype] * (1 + abs(reward)) + storage_eps * float(np.abs(w * h).sum())
        worst = max(worst, abs(predicted - reward) / tol)
        if abs(predicted - reward) > tol:
            raise cache.CacheError(f"integrity check failed for {sid}: score_head . h = {predicted:.6f}, "
                                   f"model reward = {reward:.6f} (tolerance {tol:.2e})")
    return {"samples": len(sample), "max_error_over_tolerance": round(worst, 4), "passed": True}
