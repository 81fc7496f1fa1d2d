"""Importing this puts the repository's jobs/ folder on sys.path (the entry points are scripts)."""
import sys
from pathlib import Path

JOBS = str(Path(__file__).resolve().parents[1] / "jobs")
if JOBS not in sys.path:
    sys.path.insert(0, JOBS)
