"""Retire released entries from the working tree, keeping them loadable through the embedded mirror.

    python scripts/retire_entry.py bmshj2018-hyperprior/q3-mse@1.0 [more names...]

For each name: checks the committed files at HEAD against zoo/manifest.json, records HEAD as the entry's `commit`
in the manifest and `git rm`s its folder. Commit the result (manifest + removals) in one commit; `zoo hub serve`
then serves the entry from that recorded commit (see model_store/README.md). Run from a clean checkout.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoo.errors import ZooError  # noqa: E402
from zoo.retire import retire_entry  # noqa: E402


def main(names: list[str]) -> int:
    if not names:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    for name in names:
        try:
            e = retire_entry(name, ROOT / "zoo" / "manifest.json", ROOT)
        except ZooError as exc:
            print(f"retire_entry: error: {exc}", file=sys.stderr)
            return 2
        print(f"retired {e.name}: {e.path} removed (git rm), served from commit {e.commit[:12]}")
    print("now commit zoo/manifest.json and the removals together")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
