"""Fail unless the wheel holds exactly the package: every file git tracks under
django_lightspeed_oauth/ (code, templates, migrations, py.typed, translations), and nothing else
besides its .dist-info (no tests, testproject, benchmarks or docs).

    python .ci/check_wheel.py dist/django_lightspeed_oauth-*.whl
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE = "django_lightspeed_oauth"


def main(wheel: str) -> int:
    root = Path(__file__).resolve().parent.parent
    tracked = subprocess.run(
        ["git", "ls-files", "--", PACKAGE], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    expected = {name for name in tracked if (root / name).is_file()}
    with zipfile.ZipFile(wheel) as archive:
        names = [name for name in archive.namelist() if not name.endswith("/")]
    metadata = {name for name in names if name.split("/")[0].endswith(".dist-info")}
    shipped = set(names) - metadata
    missing, extra = sorted(expected - shipped), sorted(shipped - expected)
    for name in missing:
        print(f"missing from the wheel: {name}", file=sys.stderr)
    for name in extra:
        print(f"in the wheel but not part of the package: {name}", file=sys.stderr)
    if missing or extra:
        return 1
    print(f"{Path(wheel).name}: the package's {len(shipped)} files and its metadata, nothing else.")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
