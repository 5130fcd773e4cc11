#!/usr/bin/env python
"""Run the demo site's management commands (``python testproject/manage.py runserver``)."""

import os
import sys
from pathlib import Path


def main() -> None:
    # Make both the demo site and the app importable without installing anything.
    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent)]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
