"""Sharing the pipeline's outputs through a DVC remote: a `dvc pull` that, when the remote
lacks part of what this commit records, says which outputs and who must push them.

DVC's own message for a teammate who forgot `dvc push` names a hash, not an output:

    WARNING: Some of the cache files do not exist neither locally nor on remote.
    Missing cache files: md5: c37f8bc8917fdf64a45bb6010380cdab.dir
    ERROR: failed to pull data from the cloud - Checkout failed for following targets: ...

and `dvc pull --allow-missing` hides even that, after which `dvc repro` quietly recomputes
the missing outputs, i.e. reruns the backbone (featurize) on whatever machine it is on.
:func:`pull` runs the same `dvc pull`, and if it fails asks DVC which recorded outputs are
neither in the local cache nor on the remote, maps each to the stage that produces it (from
``dvc.lock``, or the ``.dvc`` file of an added one) and to the git commit that recorded its
hash: that commit's author ran the stage and holds the data.

Everything goes through the `dvc` and `git` command lines (their ``--json`` output is the
stable interface; DVC's Python internals are not).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from pipeline.errors import UserError


class PullError(UserError, RuntimeError):
    """`dvc pull` failed; the message says why (DVC's own error is printed above it)."""


class RemoteMissingError(PullError):
    """The remote lacks outputs this commit records; the message names them and their authors."""


@dataclass(frozen=True)
class MissingOutput:
    path: str                  # workspace path, e.g. data/features/users
    stage: str | None          # the dvc.lock stage that writes it; None for a `dvc add`ed path
    md5: str | None            # the hash this commit records for it
    dvcfile: str               # dvc.lock or the .dvc file that records it
    recorded_by: str | None    # "<sha> <author> <email> <date> <subject>" of the commit that recorded md5

    @property
    def push_target(self) -> str:
        """What to pass to `dvc push` to send exactly this output."""
        return self.stage or self.dvcfile


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _dvc(*args: str) -> list[str]:
    # The dvc of this interpreter's environment: the one `pip install -e .` put beside smoe.
    return [sys.executable, "-m", "dvc", *args]


def recorded_outputs(repo: str | Path) -> dict[str, tuple[str | None, str | None, str]]:
    """Workspace path -> (stage, md5, recording file) for every output the checked-out
    ``dvc.lock`` files and ``.dvc`` files record."""
    repo = Path(repo)
    listed = _run(["git", "ls-files", "--", "*dvc.lock", "*.dvc"], repo).stdout.split()
    if (repo / "dvc.lock").exists() and "dvc.lock" not in listed:  # recorded but not yet committed
        listed.append("dvc.lock")
    outputs: dict[str, tuple[str | None, str | None, str]] = {}
    for rel in listed:
        path = repo / rel
        if not path.is_file():
            continue
        doc = yaml.safe_load(path.read_text()) or {}
        base = Path(rel).parent
        if path.name == "dvc.lock":
            for stage, entry in (doc.get("stages") or {}).items():
                for out in entry.get("outs") or []:
                    outputs[(base / out["path"]).as_posix()] = (stage, out.get("md5"), rel)
        else:
            for out in doc.get("outs") or []:
                outputs[(base / out["path"]).as_posix()] = (None, out.get("md5"), rel)
    return outputs


def who_recorded(repo: str | Path, md5: str | None, dvcfile: str) -> str | None:
    """The first commit that wrote ``md5`` into ``dvcfile`` (`git log -S`), as
    "<sha> <author> <email> <date> "<subject>"", or None when it is not committed."""
    if not md5:
        return None
    log = _run(["git", "log", "--reverse", f"-S{md5}", "--format=%h %an <%ae> %ad \"%s\"", "--date=short",
                "--", dvcfile], Path(repo))
    lines = log.stdout.strip().splitlines()
    return lines[0] if log.returncode == 0 and lines else None


def missing_outputs(repo: str | Path, targets: list[str] | None = None,
                    remote: str | None = None) -> list[MissingOutput]:
    """Recorded outputs that are neither in the local DVC cache nor on the remote (what a
    pull cannot check out). Raises :class:`PullError` when DVC cannot answer (no remote, no access)."""
    repo = Path(repo)
    cmd = _dvc("data", "status", "--not-in-remote", "--json", *(["--remote", remote] if remote else []),
               *(targets or []))
    proc = _run(cmd, repo)
    if proc.returncode != 0:
        raise PullError(f"`dvc data status --not-in-remote` failed:\n{proc.stderr.strip() or proc.stdout.strip()}")
    status = json.loads(proc.stdout or "{}")
    absent = {p.rstrip("/") for p in status.get("not_in_remote", [])} & {p.rstrip("/") for p in status.get("not_in_cache", [])}
    recorded = recorded_outputs(repo)
    missing = []
    for path in sorted(absent):
        stage, md5, dvcfile = recorded.get(path, (None, None, "dvc.lock"))
        missing.append(MissingOutput(path, stage, md5, dvcfile, who_recorded(repo, md5, dvcfile)))
    return missing


def remote_description(repo: str | Path, remote: str | None = None) -> str:
    """"'name' (url)" of ``remote`` or of the default remote, for messages. Raises
    :class:`PullError` when there is no such remote (nothing to pull from)."""
    listed = _run(_dvc("remote", "list"), Path(repo)).stdout.splitlines()
    urls = {parts[0]: parts[1] for parts in (line.split() for line in listed) if len(parts) >= 2}
    default = _run(_dvc("remote", "default"), Path(repo))
    name = remote or (default.stdout.strip() if default.returncode == 0 else None)
    if name not in urls:
        known = ", ".join(urls) or "none"
        raise PullError(f"no DVC remote {('named ' + repr(name)) if remote else 'is set as the default'} "
                        f"(configured: {known}). Add the team's: `dvc remote add -d store <url>` "
                        "(README, 'Share the cache'), or pass --remote NAME")
    return f"'{name}' ({urls[name]})"


def missing_message(missing: list[MissingOutput], remote: str) -> str:
    """The explanation :func:`pull` prints before its one-line error: what is missing, who
    recorded it, what to run."""
    lines = [f"The DVC remote {remote} lacks {len(missing)} output(s) that this commit records, "
             "so they were not checked out:"]
    for m in missing:
        what = f"stage {m.stage}" if m.stage else f"added by {m.dvcfile}"
        lines.append(f"  {m.path}  ({what}, md5 {m.md5 or '?'})")
        lines.append(f"      recorded by {m.recorded_by}" if m.recorded_by else
                     f"      recorded in {m.dvcfile}, not yet committed by anyone")
    targets = " ".join(dict.fromkeys(m.push_target for m in missing))
    lines += ["Whoever recorded them has the data: ask them to run",
              f"    dvc push {targets}",
              "then run `smoe pull` again. Everything else was pulled.",
              "Do not work around this with `dvc pull --allow-missing` then `dvc repro`: that silently "
              "recomputes the missing outputs on this machine (featurize reruns the backbone)."]
    return "\n".join(lines)


def pull(repo: str | Path = ".", targets: list[str] | None = None, remote: str | None = None,
         jobs: int | None = None) -> None:
    """`dvc pull`, its progress and messages on the terminal as usual; when it fails, raise
    :class:`RemoteMissingError` naming the outputs the remote lacks, or :class:`PullError` when
    something else went wrong (DVC's own error is then the one printed above)."""
    repo = Path(repo)
    where = remote_description(repo, remote)  # first: no remote at all is its own, simpler message
    cmd = _dvc("pull", *(["--remote", remote] if remote else []), *(["--jobs", str(jobs)] if jobs else []),
               *(targets or []))
    code = subprocess.run(cmd, cwd=repo).returncode
    if code == 0:
        return
    missing = missing_outputs(repo, targets, remote)
    if missing:
        # the listing is a report, printed as such; the error itself stays one line
        print(missing_message(missing, where), file=sys.stderr)
        targets = " ".join(dict.fromkeys(m.push_target for m in missing))
        raise RemoteMissingError(f"the DVC remote {where} lacks {len(missing)} output(s) (listed above); "
                                 f"whoever recorded them runs `dvc push {targets}`, then run `smoe pull` again")
    raise PullError(f"`dvc pull` failed (exit {code}) with nothing missing from the remote; see DVC's error above")
