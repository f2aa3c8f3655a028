"""Recipes: how a released entry family is made, as data (a TOML file, `recipes/<family>.toml`).

A recipe holds the architecture and widths, the data (dataset folders and file patterns under a data root), the
schedule, precision, budget and starting point; `zoo train --recipe FILE` runs it and the model card names it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.errors import InputError
from zoo.train.config import TrainConfig

# Sections group the keys for the reader; inside them every key is a TrainConfig field, except these.
SECTIONS = ("model", "data", "schedule", "precision", "budget", "start", "run", "release")
# How a run of the recipe is released (zoo release --recipe): which checkpoint, fp16 weights, the dataset folder
# under the data root that the card's figures are measured on.
RELEASE_KEYS = {"checkpoint": "best.pt", "half": True, "eval": "kodak"}
EXTRA_KEYS = {"threads", "first_init"}  # torch CPU threads; the start before the family's first release
# A starting point that names the newest release of the recipe's own family in the manifest: each cycle goes on
# from what the last one released.
NEWEST_RELEASE = "newest-release"
BUDGET_KEYS = ("steps", "epochs", "max_minutes", "more_minutes")


@dataclass(frozen=True)
class DataSource:
    folder: str  # relative to the data root
    pattern: str  # a glob of file names inside it


@dataclass(frozen=True)
class Recipe:
    path: Path
    sha256: str  # of the file's bytes: what a model card records
    settings: dict[str, Any]  # TrainConfig fields and EXTRA_KEYS, flattened from the sections
    data_root: str  # as written, relative to the checkout holding recipes/ unless absolute
    train: tuple[DataSource, ...]
    val: tuple[DataSource, ...]
    dataset_name: str  # how model cards name the training data
    release: dict[str, Any]  # RELEASE_KEYS, as the recipe sets them

    @property
    def family(self) -> str:
        return str(self.settings["arch"])

    @property
    def checkout(self) -> Path:
        """The folder relative paths in the recipe are read from: the one that holds recipes/."""
        return self.path.resolve().parent.parent

    def card(self, repo_root: Path | None = None) -> dict[str, str]:
        """What a model card records of the recipe: its file (relative to the checkout) and its content hash."""
        root = (repo_root or self.checkout).resolve()
        where = self.path.resolve()
        name = where.relative_to(root).as_posix() if where.is_relative_to(root) else where.name
        return {"recipe": name, "recipe_sha256": self.sha256}


def _sources(value: Any, where: str) -> tuple[DataSource, ...]:
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: a list of {{folder = ..., pattern = ...}} tables")
    out = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"folder", "pattern"}:
            raise InputError(f"{where}: each source is {{folder = ..., pattern = ...}}, not {item!r}")
        out.append(DataSource(str(item["folder"]), str(item["pattern"])))
    return tuple(out)


# The extra keys' types; TrainConfig's come from its annotations.
EXTRA_TYPES: dict[str, Any] = {"threads": int, "first_init": str}


def _fits(value: Any, kind: Any) -> bool:
    """Whether a TOML value can stand for a setting of this type (an int for a float, an array for a tuple)."""
    if kind is Any:
        return True
    args = typing.get_args(kind)
    origin = typing.get_origin(kind)
    if origin in (tuple, list):
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_fits(v, args[1]) for v in value.values())
    if args:  # a union: X | None, str | tuple[str, ...]
        return any(_fits(value, a) for a in args if a is not type(None))
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def read_recipe(path: str | Path) -> Recipe:
    """Parse and check a recipe file; an unknown key or section is an InputError naming it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        doc = tomllib.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: not a readable recipe ({exc})") from None
    unknown = set(doc) - set(SECTIONS)
    if unknown:
        raise InputError(f"{path}: unknown sections {sorted(unknown)} (known: {', '.join(SECTIONS)})")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    types = config_types()
    settings: dict[str, Any] = {}
    for section, table in doc.items():
        if not isinstance(table, dict):
            raise InputError(f"{path}: [{section}] is a table")
        if section in ("data", "release"):
            continue
        for key, value in table.items():
            if key not in fields | EXTRA_KEYS or key in ("train_dir", "val_dir", "out"):
                raise InputError(f"{path}: [{section}] {key} is not a recipe setting")
            if key in settings:
                raise InputError(f"{path}: {key} is set twice")
            kind = EXTRA_TYPES.get(key) or types[key]
            if not _fits(value, kind):
                raise InputError(f"{path}: [{section}] {key} = {value!r} is not a {kind}")
            settings[key] = value
    if "arch" not in settings:
        raise InputError(f"{path}: [model] arch is missing")
    data = doc.get("data", {})
    extra = set(data) - {"root", "name", "train", "val"}
    if extra:
        raise InputError(f"{path}: [data] {sorted(extra)} are not data settings (root, name, train, val)")
    release = {**RELEASE_KEYS, **doc.get("release", {})}
    if set(release) - set(RELEASE_KEYS):
        raise InputError(f"{path}: [release] {sorted(set(release) - set(RELEASE_KEYS))} are not release settings")
    if "root" not in data:
        raise InputError(f"{path}: [data] root is missing")
    return Recipe(
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        settings=settings,
        data_root=str(data["root"]),
        train=_sources(data.get("train"), f"{path}: [data] train"),
        val=_sources(data.get("val"), f"{path}: [data] val"),
        dataset_name=str(data.get("name", "")),
        release=release,
    )


def root_of(recipe: Recipe, override: str | Path | None = None) -> Path:
    """The folder a recipe's data sources are under: `override` (relative to the current folder), else the
    recipe's root (relative to its checkout)."""
    if override:
        return Path(override).resolve()
    root = Path(recipe.data_root)
    return root if root.is_absolute() else recipe.checkout / root


def resolve_files(recipe: Recipe, sources: tuple[DataSource, ...], data_root: str | Path | None = None) -> list[str]:
    """The image files a recipe's sources name under the data root (`data_root` overrides the recipe's), sorted
    per source; a source that matches no image is an InputError (a wrong root should not train on less)."""
    from zoo.evaluation.runner import IMAGE_SUFFIXES

    root = root_of(recipe, data_root)
    files: list[str] = []
    for s in sources:
        folder = root / s.folder
        found = sorted(p for p in folder.glob(s.pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise InputError(f"no images match {s.pattern} in {folder} (set the data root with --data-root)")
        files += [str(p) for p in found]
    return files


def newest_release(arch: str, metric: str = "mse") -> str | None:
    """The manifest path of the newest released version of an entry family, or None before its first release.
    A retired version's folder has left the working tree; `--init` reads it from the history the manifest names."""
    from zoo.entry import version_key
    from zoo.hub import load_manifest

    mine = [e for e in load_manifest() if e.arch == arch and e.metric == metric]
    return max(mine, key=lambda e: version_key(e.version)).path if mine else None


def starting_point(recipe: Recipe, settings: dict[str, Any]) -> str | None:
    """The `init` a run of the recipe starts from: as written, or for `newest-release` the family's newest
    release (else `first_init`). An entry path stays as the manifest writes it (`model_store/entries/...`), which
    `--init` finds in the working tree or, once retired, in the history the manifest names."""
    init = settings.get("init")
    if init == NEWEST_RELEASE:
        init = newest_release(str(settings["arch"]), str(settings.get("metric", "mse"))) or settings.get("first_init")
        if not init:
            raise InputError(f"{recipe.path}: {recipe.family} has no release yet; give [start] first_init")
    return init


def config_types() -> dict[str, Any]:
    """TrainConfig's field types, resolved (its annotations are strings)."""
    return typing.get_type_hints(TrainConfig)
