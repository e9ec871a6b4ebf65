"""The labelled seed data shipped inside the package (Twitter Financial News, MIT).

Package data rather than a folder beside the source tree, so an installed wheel can
bootstrap its first model, calibrate inference engines and feed the demo exactly as a
checkout does. The licence and attribution travel with the files (their README.md).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

TWITTER_FINANCIAL_NEWS = "twitter-financial-news"


def seed_dir(name: str = TWITTER_FINANCIAL_NEWS) -> Path:
    """The folder of a shipped data set, as a real path.

    Callers record file paths and checksums in model metadata and settings, so a
    path on disk is needed; setuptools installs package data as plain files (never
    zipped), which is what this relies on.
    """
    folder = files(__name__) / name
    if not isinstance(folder, Path):
        raise RuntimeError(f"sentiflow is not installed as files on disk: {folder}")
    return folder
