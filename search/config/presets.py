"""The presets: the spec files of ``spaces/`` (the seed papers as specs, the main space, the
smoke search...), shipped inside the package, so that a spec can be named instead of found:
``resnet-search run cifar_5m`` works from any folder after a plain ``pip install``.

There is one copy of each file: ``spaces/`` at the top of the repository. A wheel carries it as
``search/spaces/`` (pyproject's ``package-dir`` maps it there); a clone or an editable install
reads it where it is."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from search.config.errors import UserError

SUFFIX = ".yaml"
DESCRIPTION_CHARS = 100
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)%])\.(?=\s+[A-Z(])")  # not "et al. 2015", not "3.5"
_PACKAGE = Path(__file__).resolve().parent.parent
_FOLDERS = (_PACKAGE / "spaces", _PACKAGE.parent / "spaces")  # in a wheel; in a clone


def preset_folder() -> Path:
    """The folder of the presets: the package's own copy, else the clone's ``spaces/``.

    Raises:
        UserError: neither exists (a broken install).
    """
    for folder in _FOLDERS:
        if folder.is_dir():
            return folder
    raise UserError(f"no presets in this install of resnet-search (looked in {', '.join(map(str, _FOLDERS))})")


def preset_names() -> list[str]:
    """The presets' names, sorted: their file names without ``.yaml``."""
    return sorted(path.stem for path in preset_folder().glob(f"*{SUFFIX}"))


def find_preset(name: str | Path) -> Path | None:
    """The preset a missing spec path names: ``cifar_5m``, ``cifar_5m.yaml`` or
    ``spaces/cifar_5m.yaml`` (the README's spelling, from a folder without ``spaces/``); None
    when it names none."""
    path = Path(name)
    if path.parent not in (Path("."), Path("spaces")) or path.suffix not in ("", SUFFIX):
        return None
    try:
        candidate = preset_folder() / f"{path.stem}{SUFFIX}"
    except UserError:
        return None
    return candidate if path.stem in preset_names() else None


def preset_description(path: Path) -> str:
    """A preset's one-line description: the first sentence of its leading comment, shortened to
    :data:`DESCRIPTION_CHARS` at a word."""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#") or line.startswith("#  ") or not line.strip("# "):
            break  # the comment's end, an indented example command, or a blank comment line
        words.append(line.lstrip("#").strip())
    sentence = _SENTENCE_END.split(" ".join(words), maxsplit=1)[0].rstrip(".:,; ")
    if len(sentence) <= DESCRIPTION_CHARS:
        return sentence
    return sentence[: DESCRIPTION_CHARS - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."


def copy_preset(name: str, out_dir: str | Path) -> Path:
    """Copy the preset ``name`` into ``out_dir`` as ``<name>.yaml``, to edit; never over a file.

    Raises:
        UserError: no such preset, or the copy's file exists already.
    """
    source = find_preset(name)
    if source is None:
        raise UserError(f"{name}: no such preset; presets: {', '.join(preset_names())}")
    target = Path(out_dir) / source.name
    if target.exists():
        raise UserError(f"{target} exists; edit it, remove it, or copy into another folder with --out")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    except OSError as error:
        raise UserError(f"{target}: cannot write the copy ({error.strerror or error})") from None
    return target
