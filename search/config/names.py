"""Names that become file names: the alphabet a study name may use.

A study name names its default storage file (``studies/<name>.db``) and its folder
(``studies/<name>/``), so it must stay one plain path component: no separators, no ``..``,
nothing empty. The spec's ``study.name`` is checked here when the spec is read; names that
come from elsewhere (``--study``, a storage made by another tool) are checked by
:func:`search.study.storage.safe_study_name`, which uses the same rule.
"""

from __future__ import annotations

import re

STUDY_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
STUDY_NAME_ALLOWED = "1 to 100 letters, digits, '_', '-' or '.', starting with a letter or digit"


def study_name_problem(name: object) -> str | None:
    """What is wrong with ``name`` as a study name, or ``None`` when it is safe.

    Args:
        name: A candidate study name.

    Returns:
        A message naming what is allowed, or ``None``.
    """
    if isinstance(name, str) and STUDY_NAME_PATTERN.fullmatch(name):
        return None
    return f"{name!r} cannot name a study's file and folder; use {STUDY_NAME_ALLOWED}"
