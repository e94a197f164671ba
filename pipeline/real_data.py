"""The real, public preference datasets: where each file comes from, and its checksum.

Nothing of these files is committed to the project. Each is published in a public Git
repository; :data:`FILES` pins every one of them: its path under the data location (as in
``SHA256SUMS`` beside the files), the repository, the commit, the path in that repository
and the sha256 of its bytes. So

* online, :func:`fetch` downloads exactly those bytes with DVC's own mechanism for files
  in Git repositories (``dvc get <repo> <path> --rev <commit> -o <dest>``, run in-process
  through ``dvc.repo.Repo.get``; one clone per repository), and refuses a download whose
  sha256 differs;
* offline (tests, CI, this machine) the same location holds a copy, and :func:`verify`
  checks every file against the same sha256 before the data is read.

The location: ``--location`` where a command takes one, else ``$SMOE_SHARED_DATASETS``,
else ``../shared/datasets`` beside the repository root (:func:`location`).

HH-RLHF: upstream (anthropics/hh-rlhf) stores ``helpful-base/test.jsonl.gz`` with Git LFS,
so a plain Git checkout of it holds a pointer, not the data. The registry fetches it from
DaehanKim/EasyRLHF, which commits the same bytes as an ordinary blob (its sha256 equals
the upstream LFS object's). RMB: the publisher's ``Pairwise_set/`` also holds three files
over 4 MiB that the shared copy lacks (Harmlessness/S11, Helpfulness/Brainstorming/Idea
Development, Helpfulness/Generation/Creative Writing); they are not registered, so
``fetch`` brings the same 46 files the copy has.

Stdlib and DVC only; errors are :class:`~pipeline.errors.UserError` one-liners.
"""

from __future__ import annotations

import fnmatch
import os
import shlex
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.cache import sha256_file
from pipeline.errors import UserError

ENV = "SMOE_SHARED_DATASETS"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOCATION = REPO_ROOT.parent / "shared" / "datasets"

__all__ = ["RealFile", "FILES", "DATASETS", "ENV", "DEFAULT_LOCATION", "location", "locate", "select", "sha256_file",
           "verify", "fetch", "dvc_get_args", "fetch_commands", "RealDataError", "LocationError", "MissingFileError",
           "ChecksumError", "FetchError"]


@dataclass(frozen=True)
class RealFile:
    """One published file. ``repo``: ``owner/name`` on GitHub, or any URL or path Git can
    clone (what tests point at a local repository)."""

    local: str  # path under the data location, as in SHA256SUMS (without "./")
    repo: str
    commit: str  # full sha: DVC reuses its clone for a known sha instead of pulling again
    path: str  # path inside the repository at that commit
    sha256: str

    @property
    def dataset(self) -> str:
        return self.local.split("/", 1)[0]

    @property
    def url(self) -> str:
        return repo_url(self.repo)


class RealDataError(UserError):
    """Base of this module's one-line errors."""


class LocationError(RealDataError, FileNotFoundError):
    pass


class MissingFileError(RealDataError, FileNotFoundError):
    pass


class ChecksumError(RealDataError, ValueError):
    pass


class FetchError(RealDataError, RuntimeError):
    pass


# same bytes as anthropics/hh-rlhf's LFS object (see the module docstring)
_HH = ("DaehanKim/EasyRLHF", "45eccb72ddb8c18aa52dc2a184516380e06582fe")
_AUTOJ = ("GAIR-NLP/auto-j", "2ae17a3965d933232e9cd50302aa0f176249c83b")
_TLDR = ("redwoodresearch/mlab", "b117473d3321887cfab9325782542016c9a996be")  # OpenAI summarize-from-feedback
_HANNA = ("thu-coai/HPSS", "7a03f6f87c75353b091f287f3607130501dc6dad")  # HANNA (dig-team/hanna-benchmark-asg)
_RMB = ("Zhou-Zoey/RMB-Reward-Model-Benchmark", "2be3180857f2190b7ffa929d43190835627f1f4d")

# Transcribed from ../shared/datasets/README.md (repository @ commit : path; commits
# expanded to full shas) and SHA256SUMS (hashes copied verbatim); tests/test_real_data.py
# checks this table against SHA256SUMS whenever the folder is there.
FILES: tuple[RealFile, ...] = (
    RealFile("auto-j/testdata_pairwise.jsonl",
             *_AUTOJ, "data/test/testdata_pairwise.jsonl",
             "56f32fad71d9b6b33bc4d51794c324981e26355bcbf3ce4908d7f8ddcc61f80e"),
    RealFile("auto-j/utils_constants.py",
             *_AUTOJ, "codes/leaderboard/utils_constants.py",
             "3a2e4730845055dc09a123a9140b5c2c8892bed3b44060f648037ddc3849cb48"),
    RealFile("hanna/hanna_test_qwen_2_5_14b.json",
             *_HANNA, "data/hanna/hanna_test_qwen_2_5_14b.json",
             "9e14558b5b018cfe28c6e3430de86b179f80e7cd8d7420240edaaaa51cbd3b15"),
    RealFile("hanna/hanna_valid_qwen_2_5_14b.json",
             *_HANNA, "data/hanna/hanna_valid_qwen_2_5_14b.json",
             "e446359308d26b1d4cdc97f781fc284630a24455405d65a00e7d72f26f90c9fb"),
    RealFile("hh-rlhf-helpful/helpful-base/test.jsonl.gz",
             *_HH, "data/helpful-base/test.jsonl.gz",
             "8be3fc1a13b27901631696f2be6f184c799f1baeaf145f53ac5db24960adc37b"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Harmlessness/S1.json",
             *_RMB, "RMB_dataset/Pairwise_set/Harmlessness/S1.json",
             "032f19ad3729d86ec167b2c3eb86ec422d3f2377579aa746b0455472bd995080"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Harmlessness/S10.json",
             *_RMB, "RMB_dataset/Pairwise_set/Harmlessness/S10.json",
             "c1fa5f90d8657eb07dcdfc912a442861f3b15a1dbace9a41445bda3c0cccde56"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Harmlessness/S2.json",
             *_RMB, "RMB_dataset/Pairwise_set/Harmlessness/S2.json",
             "dbf3c3ac79a63e7c52be78545353c55d16fa5928590fef6762c271e6af062517"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Harmlessness/S3.json",
             *_RMB, "RMB_dataset/Pairwise_set/Harmlessness/S3.json",
             "006d68eb804823f3f08998767d9bf2c53200d1814f86a0fd94daf4ccc8b3f123"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Harmlessness/S4.json",
             *_RMB, "RMB_dataset/Pairwise_set/Harmlessness/S4.json",
             "ea1c062b1f6718ac89bac2cedc13c2e703e43b9bf1bc63fa34570759dbd826bc"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Harmlessness/S5.json",
             *_RMB, "RMB_dataset/Pairwise_set/Harmlessness/S5.json",
             "33047604a901e79bddfda7ec2df173c2ebf0afec112c4a05dd88a0d04f9bf35d"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Harmlessness/S6.json",
             *_RMB, "RMB_dataset/Pairwise_set/Harmlessness/S6.json",
             "2a2e08618a33bc22ca4bad776f1dda9840a4c88dc7240104429b0bb77a2ef6a5"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Harmlessness/S7.json",
             *_RMB, "RMB_dataset/Pairwise_set/Harmlessness/S7.json",
             "ac09c9cfde7149c39c9dcb86c7f76d4ab6a36cb4fb94bb9542683f4714efca02"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Harmlessness/S8.json",
             *_RMB, "RMB_dataset/Pairwise_set/Harmlessness/S8.json",
             "0b44f9249a51d6e0d3bc947e866a14bff956aa98bc63118b6430be6f9bee579d"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Harmlessness/S9.json",
             *_RMB, "RMB_dataset/Pairwise_set/Harmlessness/S9.json",
             "e2e207eeb9b60a6f62cb2b130761ff27b37b1512cc86d3c8a933ccd9b9bf9f74"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Harmlessness/multi.json",
             *_RMB, "RMB_dataset/Pairwise_set/Harmlessness/multi.json",
             "84c88c81f9ca3810b80af372df51de844c25c898490b9707067a28b1e03177ba"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Brainstorming/Problem Solving.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Brainstorming/Problem Solving.json",
             "e6416e15e6c978d54510333ce681ec36f33777b4d79877c5b9e81ff49ade560c"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Chat/Casual Conversation.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Chat/Casual Conversation.json",
             "8845fa20aaf93f786d591873a47b9e8b9972147f65a829e7c30298e0ae0c871a"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Chat/Discussion.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Chat/Discussion.json",
             "9c750d2ac66b1f80af78b341705526838736b446219afeaf83884e5b346861b2"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Chat/Supportive Conversation.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Chat/Supportive Conversation.json",
             "2b3d024c4f17454b6f34a9de30bd437191826fc66d60cc08d2bc23de9961d8c9"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Classification/Content Categorization.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Classification/Content Categorization.json",
             "fbb360d6fcdc93511ef34042e586e7caee16530f11f055214e24d55e8daf2d0d"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Classification/Quality and Compliance Assessment.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Classification/Quality and Compliance Assessment.json",
             "ce511eac5cd23383b2af4c5657a0195d5c1acece7cbb112e6daa218c7192c701"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Closed QA/ContextBased.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Closed QA/ContextBased.json",
             "c3fe6e95b4cf0a867bc42f07a6ac9648e9793255820b5697a98a3480a168900f"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Closed QA/OptionBased.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Closed QA/OptionBased.json",
             "93d9bf400440b78416d283de0e7c833b2f4a320e7ff496b41836c4c72412eb37"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Code/Data Management.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Code/Data Management.json",
             "9cc7547ff8c16ad2fb144bc017568bb3ad9ad06731a48446e8e70cd431d4bbd2"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Code/Development and Implementation.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Code/Development and Implementation.json",
             "e038109c78130de3e0bc79275b22b8b528b0c33868d49ba376715cdcc4535596"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Code/Documentation.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Code/Documentation.json",
             "817bcd0d478c9ff714c0011b92ab0a28f2c729d31aaad1d7c5e676ece656eb78"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Code/Quality and Optimization.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Code/Quality and Optimization.json",
             "28b0ddf70a2dcde61102ca29c0e734f70928501940026677c4ad9cb6a757039d"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Generation/Professional Content Generation.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Generation/Professional Content Generation.json",
             "2fac46e67ef8a2bb4b9798482e38d65d63f939a266d5344aac250ee1a043dd8a"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Open QA/Factual.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Open QA/Factual.json",
             "d6345a4f155fe1e42373f0cc7df322f7c53f9383d52ce523e5d1877d58983426"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Open QA/General Explanation.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Open QA/General Explanation.json",
             "35a802d86cb2b9b1ddb51c8f470cb0b9206c73cc41a422457a1d640ee8a2934f"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Open QA/Hypothetical Scenarios.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Open QA/Hypothetical Scenarios.json",
             "372103346a3f33d7865d2895fbe7db2600a1a7a83d4f7dde68b5796c8755834c"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Open QA/Interpretative Analysis.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Open QA/Interpretative Analysis.json",
             "0d2cf293676e0e510332caebaf5b4139e6b52081e919605c549436020bbe08ee"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Open QA/Personal Opinion and Advice.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Open QA/Personal Opinion and Advice.json",
             "d2f4a85993fa433956dcacbb61559465f1d92402dd007fb03df9bba555d0813b"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Open QA/Technical and Practical Support.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Open QA/Technical and Practical Support.json",
             "90f3de28522fd0c34a9e9e3f59bca8c8dfbb822d1f749b94aeb2458bd9118ffe"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Reasoning/Analytical Reasoning.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Reasoning/Analytical Reasoning.json",
             "17f69653ea4a7b3022ca5732f30d66b86a6334d64778dd3a55c5f82079cc93be"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Reasoning/Critical Thinking.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Reasoning/Critical Thinking.json",
             "fed5aed85019e563b2df4d3e6e89647f27de04f8b0b72fc0f7b556714324440a"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Reasoning/Human Decision Making.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Reasoning/Human Decision Making.json",
             "4ab1e6a5f30e36267e844e22d466f4d25800ffbe6649ab94d36299b23adb1f9b"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Reasoning/Logical Deduction.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Reasoning/Logical Deduction.json",
             "62eedf90b698609ad9466fb93269d42cb4c5f2bf816da349afa66ffce89a8d78"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Reasoning/Pattern Recognition.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Reasoning/Pattern Recognition.json",
             "bf866f0bf748adadbdd3df79db86f8d0d8034a9c285209d2c0c1c0724a13ceb3"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Rewrite/Paraphrasing.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Rewrite/Paraphrasing.json",
             "7de5954fc3c227c488321252c5ca4c9b19200a6d4cb697f7e342475dd4db07fa"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Rewrite/PostQuality Assessment Rewriting.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Rewrite/PostQuality Assessment Rewriting.json",
             "19e1484d2da0e590db8057fa58a50ce80ba68c185572919451551b2682d8cb05"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Rewrite/Textual ExpansionReduction.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Rewrite/Textual ExpansionReduction.json",
             "d172f0a026291cfab407d8289aa258f03ae1abff72b394d4af61ea5bbf1cef82"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Rewrite/Tone Adjustment.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Rewrite/Tone Adjustment.json",
             "4316594272d4d5d83a272eeebce19b4318322cb29caaa6983fe1c44d57fa3915"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Role Playing/General Character.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Role Playing/General Character.json",
             "1be349e066b6442302080d5fea5a179bb11fb703c3dea0a1ebd5c682533e2e10"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Role Playing/Specific Character.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Role Playing/Specific Character.json",
             "e4bea240a0277727ba4c5b83096405abd29fcaf911ea8b79221d32e1c3dc14ac"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Summarization/Specialized Summaries.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Summarization/Specialized Summaries.json",
             "9810fe2de4ba88bac2f82bc8b62b2dff6e8f0f8079aae075ab0d050e8d34656b"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Summarization/Standard Summaries.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Summarization/Standard Summaries.json",
             "79e8985b4a066e59c38716a25ae24e45dcd9612d7cc501fdf51941b619471411"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Translation/GeneralExcerpt Language Translation.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Translation/GeneralExcerpt Language Translation.json",
             "d930d2dad11e9f769dc36118deb8f636f22d38350dcdd690584170e5bdc150ec"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Translation/Literary and Cultural Translation.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Translation/Literary and Cultural Translation.json",
             "e5cff28b5d0745d0fdc328eedf21581b799881cd127fd338c3eb60dde9a9d7ff"),
    RealFile("rmb/RMB_dataset/Pairwise_set/Helpfulness/Translation/Technical and Scientific Translation.json",
             *_RMB, "RMB_dataset/Pairwise_set/Helpfulness/Translation/Technical and Scientific Translation.json",
             "97f20f59c5ef080acdd4294e32edc9330af66aad9ecde9c9ac9b1e9bde100d97"),
    RealFile("tldr-comparisons/batch13.json",
             *_TLDR, "comparisons/batch13.json",
             "e4f4de3ad8763b801c4b45ff277e1ead75e9c4105f1b0837793c4b51477ec122"),
    RealFile("tldr-comparisons/batch18.json",
             *_TLDR, "comparisons/batch18.json",
             "5008e223e287b4c38e434e270cf77301993adba70e1f87362f35fb928f83863a"),
    RealFile("tldr-comparisons/cnndm0.json",
             *_TLDR, "comparisons/cnndm0.json",
             "be936926b85b8d42d708529bb4fae2470918cb0bd7d8d3eb3c7a4b4cb986225b"),
)

DATASETS: tuple[str, ...] = tuple(dict.fromkeys(f.dataset for f in FILES))


def repo_url(repo: str) -> str:
    """What ``dvc get`` clones: ``owner/name`` -> its GitHub URL; a URL or a path as is."""
    if "://" in repo or repo.startswith(("/", ".", "~", "git@", "file:")) or os.path.isdir(repo):
        return repo
    return f"https://github.com/{repo}"


def location(override: str | os.PathLike | None = None) -> Path:
    """The data location: ``override`` (a ``--location``), else ``$SMOE_SHARED_DATASETS``,
    else ``../shared/datasets`` beside the repository root."""
    if override is not None and str(override) != "":
        return Path(override).expanduser()
    env = os.environ.get(ENV)
    return Path(env).expanduser() if env else DEFAULT_LOCATION


def select(names: Iterable[str] | None = None, registry: Sequence[RealFile] = FILES) -> list[RealFile]:
    """The registered files of ``names`` (a dataset folder such as ``auto-j``, or one file's
    local path); every file when ``names`` is None or empty."""
    names = [n.strip("/").removeprefix("./") for n in (names or [])]
    if not names:
        return list(registry)
    chosen: dict[str, RealFile] = {}
    for name in names:
        hits = [f for f in registry if f.dataset == name or f.local == name]
        if not hits:
            known = ", ".join(dict.fromkeys(f.dataset for f in registry))
            raise RealDataError(f"no real dataset or file {name!r}; known datasets: {known} (or a file path under one)")
        chosen.update((f.local, f) for f in hits)
    return list(chosen.values())


def locate(local: str, where: str | os.PathLike | None = None) -> Path:
    """The path of one registered file under the data location (not checked: see :func:`verify`)."""
    local = local.strip("/").removeprefix("./")
    if not any(f.local == local for f in FILES):
        raise RealDataError(f"{local!r} is not a registered real-data file (see pipeline/real_data.py FILES)")
    return location(where) / local


def _fix(root: Path, entry: RealFile) -> str:
    return f"fetch it with `smoe data fetch --location {shlex.quote(str(root))} {shlex.quote(entry.dataset)}`"


def verify(where: str | os.PathLike | None = None, names: Iterable[str] | None = None, *,
           registry: Sequence[RealFile] = FILES) -> list[Path]:
    """Check every registered file of ``names`` (default: all) under the location against
    its sha256. Returns the verified paths; raises on the first missing or different file,
    one line naming it and the command that fetches it. Stateless: hashing all 84 MB of the
    shared copy takes well under a second."""
    root = location(where)
    if not root.is_dir():
        raise LocationError(f"real-data location {root} does not exist (set --location or ${ENV}); "
                            f"fetch the files there with `smoe data fetch --location {shlex.quote(str(root))}`")
    done = []
    for entry in select(names, registry):
        path = root / entry.local
        if not path.is_file():
            raise MissingFileError(f"real data: {entry.local} is missing under {root}; {_fix(root, entry)}")
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise ChecksumError(f"real data: {entry.local} under {root} has sha256 {digest[:12]}..., expected "
                                f"{entry.sha256[:12]}... (modified or truncated copy); re-{_fix(root, entry)}")
        done.append(path)
    return done


def resolve(rel: str, where: str | os.PathLike | None = None) -> Path:
    """``shared:<rel>`` of a dataset source: the path under the data location of one
    registered file, a folder or a glob of them (``tldr-comparisons/batch*.json``), after
    verifying the sha256 of every registered file it covers. A prepare stage therefore
    never reads a modified or truncated copy, wherever the location is."""
    rel = rel.strip("/").removeprefix("./")
    covered = [f for f in FILES if f.local == rel or f.local.startswith(rel + "/") or fnmatch.fnmatchcase(f.local, rel)]
    if not covered:
        raise RealDataError(f"shared:{rel} names no registered real-data file; known datasets: "
                            f"{', '.join(dict.fromkeys(f.dataset for f in FILES))}")
    verify(where, [f.local for f in covered])
    return location(where) / rel


def dvc_get_args(entry: RealFile, out: str | os.PathLike) -> dict[str, str]:
    """The one mapping from a registry entry to DVC's download: the arguments of
    ``dvc.repo.Repo.get`` and, in the same order, of ``dvc get URL PATH --rev REV -o OUT``."""
    return {"url": entry.url, "path": entry.path, "rev": entry.commit, "out": str(out)}


def fetch_commands(where: str | os.PathLike | None = None, names: Iterable[str] | None = None, *,
                   registry: Sequence[RealFile] = FILES) -> list[str]:
    """The shell ``dvc get`` line of each selected file (what :func:`fetch` runs in-process)."""
    root = location(where)
    lines = []
    for entry in select(names, registry):
        a = dvc_get_args(entry, root / entry.local)
        lines.append(shlex.join(["dvc", "get", a["url"], a["path"], "--rev", a["rev"], "-o", a["out"]]))
    return lines


def _download(entry: RealFile, dest: Path) -> None:
    """``dvc get`` one file into a scratch path beside ``dest``; move it into place only when
    its sha256 is the registered one, else delete it and raise."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    where = f"{entry.url} @ {entry.commit[:8]} : {entry.path}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.fetch-{os.getpid()}")
    args = dvc_get_args(entry, tmp)
    try:
        try:
            Repo.get(args["url"], args["path"], out=args["out"], rev=args["rev"])
        except FileNotFoundError:
            raise FetchError(f"could not fetch {entry.local}: {where} does not exist") from None
        except DvcException as err:
            why = " ".join(str(err).split())
            if err.__cause__ is not None and str(err.__cause__) not in why:
                why += f" ({' '.join(str(err.__cause__).split())})"
            raise FetchError(f"could not fetch {entry.local} from {where}: {why}") from None
        if not tmp.is_file():
            raise FetchError(f"could not fetch {entry.local}: {where} is not a file")
        digest = sha256_file(tmp)
        if digest != entry.sha256:
            raise ChecksumError(f"refused {entry.local}: {where} has sha256 {digest}, expected {entry.sha256} "
                                f"(download deleted)")
        os.replace(tmp, dest)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp)
        else:
            tmp.unlink(missing_ok=True)


def fetch(where: str | os.PathLike | None = None, names: Iterable[str] | None = None, *,
          registry: Sequence[RealFile] = FILES,
          on_file: Callable[[RealFile, str], None] | None = None) -> list[tuple[RealFile, str]]:
    """Download each selected file (default: all) into the location with ``dvc get`` at its
    pinned commit, check its sha256 and only then move it into place; a download whose sha256
    differs is deleted and refused (one line). A file already there with the right sha256 is
    kept; one with another sha256 is replaced by a verified download. Returns ``(entry,
    "present" | "fetched")`` per file; ``on_file`` is called with the same as each completes."""
    from dvc.repo.open_repo import clean_repos

    root = location(where)
    done: list[tuple[RealFile, str]] = []
    try:
        for entry in select(names, registry):
            dest = root / entry.local
            if dest.is_file() and sha256_file(dest) == entry.sha256:
                status = "present"
            else:
                _download(entry, dest)
                status = "fetched"
            done.append((entry, status))
            if on_file is not None:
                on_file(entry, status)
    finally:
        clean_repos()  # the temporary clones DVC keeps per process (one per repository)
    return done
