"""The released entries (`zoo/manifest.json`) as one typed object: reading, writing, order, repository and tag
names, what `zoo.load` serves, merging a family's release and retiring a version.

Every part of the zoo that reads or writes the manifest goes through `Manifest`; nothing else parses the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from zoo.entry import version_key
from zoo.errors import EntryNotFound, InputError, ZooError
from zoo.registry import LEVEL_RANGE, METRICS, check_metric, get_arch

MANIFEST_FORMAT = 1
DEFAULT_ORG = "zoo-codecs"


def tag_for(version: str) -> str:
    """The git tag (Hub revision) of an entry version."""
    return f"v{version}"


def repo_for(arch: str, quality: int, metric: str, org: str = DEFAULT_ORG, variable_rate: bool = False) -> str:
    """The Hub repository of an entry family: one per (architecture, quality, metric); one per (architecture,
    metric) for a variable-rate entry, which holds every level."""
    return f"{org}/{arch}-{metric}" if variable_rate else f"{org}/{arch}-q{quality}-{metric}"


@dataclass(frozen=True)
class ManifestEntry:
    arch: str
    quality: int
    metric: str
    version: str
    repo: str
    revision: str
    files: dict[str, str]  # file name -> sha256
    kodak: dict[str, float] = field(default_factory=dict)
    path: str = ""  # where the released folder lives in this repository (model_store/entries/...)
    # Set when the entry is retired: its folder left the working tree, and this commit of the repository holds
    # its files at `path` (the embedded mirror serves them from there; see model_store/README.md).
    commit: str = ""
    # variable-rate entries: level -> Kodak figures, and the integer qualities of the base architecture for
    # which this entry is the current one (what `zoo.load(base, quality=q)` returns)
    levels: dict[str, dict[str, float]] = field(default_factory=dict)
    current_for: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.quality == 0:
            return f"{self.arch}@{self.version}"
        return f"{self.arch}/q{self.quality}-{self.metric}@{self.version}"

    @property
    def key(self) -> tuple[str, int, str, str]:
        """What makes a line unique: a release of the same key replaces it."""
        return (self.arch, self.quality, self.metric, self.version)

    def sort_key(self) -> tuple[Any, ...]:
        return (self.arch, self.metric, self.quality, version_key(self.version))

    def to_json(self) -> dict[str, Any]:
        """The line as the file stores it: the optional fields only where they say something."""
        d = asdict(self)
        line = {k: d[k] for k in ("arch", "quality", "metric", "version", "repo", "revision", "files", "kodak", "path")}
        if self.levels:
            line["levels"] = d["levels"]
            line["current_for"] = d["current_for"]
        if self.commit:
            line["commit"] = self.commit
        return line


@dataclass(frozen=True)
class Resolved:
    """A manifest entry and, for a variable-rate one, the level to run it at."""

    entry: ManifestEntry
    level: float | None = None


def package_manifest_path() -> Path:
    """The manifest inside the installed package (`zoo/manifest.json`)."""
    return Path(str(resources.files("zoo").joinpath("manifest.json")))


@dataclass
class Manifest:
    """The list of released entries, kept in the one order the file uses (architecture, metric, quality,
    version). `path` is where it was read from and where `write()` puts it back."""

    entries: list[ManifestEntry] = field(default_factory=list)
    org: str = DEFAULT_ORG
    format: int = MANIFEST_FORMAT
    path: Path | None = None

    # reading and writing

    @classmethod
    def read(cls, path: str | Path | None = None) -> Manifest:
        """A manifest file; by default ZOO_MANIFEST (an internal zoo) or else the installed package's."""
        source = Path(path or os.environ.get("ZOO_MANIFEST") or package_manifest_path())
        try:
            text = source.read_text()
        except OSError as exc:
            raise EntryNotFound(f"cannot read the manifest {source}: {exc.strerror or exc}") from None
        manifest = cls.loads(text, str(source))
        manifest.path = source
        return manifest

    @classmethod
    def loads(cls, text: str, where: str = "the manifest") -> Manifest:
        try:
            data = json.loads(text)
            entries = [ManifestEntry(**line) for line in data.get("entries", [])]
        except (ValueError, TypeError, AttributeError) as exc:
            raise ZooError(f"{where} is not a zoo manifest ({type(exc).__name__}: {exc})") from None
        return cls(entries, data.get("org", DEFAULT_ORG), data.get("format", MANIFEST_FORMAT))

    def dumps(self) -> str:
        data = {"format": self.format, "org": self.org, "entries": [e.to_json() for e in self.sorted().entries]}
        return json.dumps(data, indent=1) + "\n"

    def write(self, path: str | Path | None = None) -> Path:
        target = Path(path) if path is not None else self.path
        if target is None:
            raise InputError("this manifest was not read from a file: say where to write it")
        target.write_text(self.dumps())
        return target

    def sorted(self) -> Manifest:
        return replace(self, entries=sorted(self.entries, key=ManifestEntry.sort_key))

    def __iter__(self) -> Iterator[ManifestEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    # naming

    def repo_for(self, arch: str, quality: int, metric: str) -> str:
        return repo_for(arch, quality, metric, self.org, get_arch(arch).variable_rate)

    # changes: each returns a new Manifest (same path), leaving this one as it was

    def add(self, entry: ManifestEntry) -> Manifest:
        """With `entry` added, replacing a line of the same (arch, quality, metric, version)."""
        kept = [e for e in self.entries if e.key != entry.key]
        return replace(self, entries=[*kept, entry]).sorted()

    def take_family(self, other: Manifest, arch: str) -> Manifest:
        """With `arch`'s lines taken from `other` (a copy of this manifest that one release wrote into), refusing
        if `other` also changed any other architecture's lines: how parallel releases of several families, each
        into its own copy, merge back."""
        mine = [e for e in self.entries if e.arch != arch]
        if sorted(mine, key=ManifestEntry.sort_key) != sorted(
            (e for e in other.entries if e.arch != arch), key=ManifestEntry.sort_key
        ):
            raise ZooError(f"the release of {arch} changed other architectures' lines too: not merged")
        return replace(self, entries=[*mine, *(e for e in other.entries if e.arch == arch)]).sorted()

    def find(self, name: str) -> ManifestEntry:
        """A line by its name (`ARCH/qQ-METRIC@VERSION`, or `ARCH@VERSION` for a variable-rate entry)."""
        lines = [e for e in self.entries if e.name == name]
        if len(lines) != 1:
            raise EntryNotFound(f"{name} is not in the manifest; names look like bmshj2018-hyperprior/q3-mse@1.0")
        return lines[0]

    def retire(self, name: str, commit: str) -> Manifest:
        """With `name` marked retired: its files are read from `commit` from now on."""
        e = self.find(name)
        if e.commit:
            raise ZooError(f"{name} is already retired (commit {e.commit[:12]})")
        return replace(self, entries=[replace(x, commit=commit) if x is e else x for x in self.entries])

    # queries

    def select(self, arch: str | None = None, metric: str | None = None) -> list[ManifestEntry]:
        return [e for e in self.entries if arch in (None, e.arch) and metric in (None, e.metric)]

    def resolve(
        self, arch: str, quality: int | None = None, metric: str = "mse", version: str | None = None
    ) -> ManifestEntry:
        """The fixed-rate line for a name, or EntryNotFound saying what exists."""
        spec = get_arch(arch)
        check_metric(metric)
        entries = self.select(arch)
        if quality is None:
            raise InputError(f"{arch} needs a quality: {', '.join(map(str, spec.qualities))}")
        spec.check_quality(quality)
        released = sorted({(e.quality, e.metric) for e in entries})
        matching = [e for e in entries if e.quality == quality and e.metric == metric]
        if not matching:
            have = ", ".join(f"q{q}-{m}" for q, m in released) or "none yet"
            raise EntryNotFound(f"no released entry for {arch} quality {quality} ({metric}); released: {have}")
        return _pick_version(matching, version, f"{arch} q{quality} {metric}")

    def resolve_point(
        self, arch: str, quality: float | None = None, metric: str = "mse", version: str | None = None
    ) -> Resolved:
        """What `zoo.load(arch, quality=...)` runs: for a fixed-rate architecture without a pinned version, the
        variable-rate entry the manifest marks current for that quality (at that level) if there is one, else the
        newest fixed-rate entry; for a variable-rate architecture, its entry at the level `quality`."""
        spec = get_arch(arch)
        if spec.variable_rate:
            if quality is None:
                raise InputError(f"{arch} needs a quality: any level in {LEVEL_RANGE}")
            level = spec.check_level(quality)
            check_metric(metric)
            matching = self.select(arch, metric)
            if not matching:
                raise EntryNotFound(f"no released {arch} entry ({metric})")
            return Resolved(_pick_version(matching, version, f"{arch} {metric}"), level)
        if version is None and quality is not None and metric in METRICS and int(quality) == quality:
            current = [
                e
                for e in self.entries
                if e.metric == metric and int(quality) in e.current_for and get_arch(e.arch).base == arch
            ]
            if current:
                return Resolved(max(current, key=lambda e: version_key(e.version)), float(quality))
        return Resolved(self.resolve(arch, quality, metric, version))  # type: ignore[arg-type]

    def current(self, arch: str, quality: float, metric: str = "mse") -> Resolved:
        """The entry (and level) that `zoo.load(arch, quality=quality, metric=metric)` serves today."""
        return self.resolve_point(arch, quality, metric)


def _pick_version(matching: Iterable[ManifestEntry], version: str | None, what: str) -> ManifestEntry:
    matching = list(matching)
    if version is None:
        return max(matching, key=lambda e: version_key(e.version))
    for e in matching:
        if e.version == str(version):
            return e
    raise EntryNotFound(
        f"{what} has no version {version}; versions: "
        + ", ".join(sorted((e.version for e in matching), key=version_key))
    )
