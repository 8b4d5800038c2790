"""The offline pretraining corpus: Python's own documentation and standard-library source.

Every CPython installation carries the same three kinds of text, so the corpus needs no network:

* ``pydoc_data.topics`` -- the language reference topics that ``help()`` prints (prose);
* the docstrings of every standard-library module, class and function (prose, read with ``ast``,
  never imported);
* the standard-library source itself (code).

Each file or topic is one *document*. A stable hash of the document's module (or topic) name (not Python's salted
``hash()``) puts 1 document in ``HELDOUT_EVERY`` into the held-out split, so the split is the same
on every machine and in every process. The held-out documents are also shipped inside labkit
(``assets/heldout.jsonl.gz``) so that forgetting can be measured even where the stdlib differs.

The text is licensed under the Python Software Foundation License; see ``book/provenance.md``.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from labkit.paths import HELDOUT_FILE

HELDOUT_EVERY = 40
"""One document in this many (by stable hash of its name) is held out of pretraining."""

DOC_SEPARATOR = "<|endoftext|>"
"""Written between documents when the corpus is flattened into one token stream."""


# Tests and generated codec tables (pages of hex literals) are not text worth learning from.
_SKIPPED_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "lib2to3", "encodings"}


@dataclass(frozen=True)
class Document:
    name: str
    """Where the text came from, e.g. ``source:json/decoder.py`` or ``topic:assignment``."""
    text: str

    @property
    def kind(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def group(self) -> str:
        """The split key: a module's docstrings and its source share one, so neither leaks."""
        key = self.name.split(":", 1)[1]
        if self.kind == "source":
            key = key.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        return f"topic:{key}" if self.kind == "topic" else key


def stable_bucket(name: str, buckets: int = HELDOUT_EVERY) -> int:
    """A bucket for ``name`` that is identical on every machine and in every process."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % buckets


def is_heldout(doc: Document) -> bool:
    return stable_bucket(doc.group) == 0


def _stdlib_files(stdlib: Path) -> list[Path]:
    files = [p for p in stdlib.rglob("*.py") if not _SKIPPED_DIRS.intersection(p.relative_to(stdlib).parts)]
    return sorted(files, key=lambda p: p.relative_to(stdlib).as_posix())


def _docstrings(tree: ast.Module) -> list[str]:
    """Module, class and function docstrings in source order, each headed by its qualified name."""
    found: list[str] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qualname = f"{prefix}{child.name}"
                doc = ast.get_docstring(child)
                if doc and len(doc) >= 40:
                    found.append(f"{qualname}\n{doc}")
                visit(child, qualname + ".")

    module_doc = ast.get_docstring(tree)
    if module_doc:
        found.append(module_doc)
    visit(tree, "")
    return found


def stdlib_documents(stdlib: str | Path | None = None) -> list[Document]:
    """All documents of the corpus, in a fixed order (topics, then docstrings, then source)."""
    import pydoc_data.topics

    stdlib = Path(stdlib or sysconfig.get_paths()["stdlib"])
    docs = [Document(f"topic:{k}", v.strip()) for k, v in sorted(pydoc_data.topics.topics.items())]
    sources: list[Document] = []
    for path in _stdlib_files(stdlib):
        rel = path.relative_to(stdlib).as_posix()
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (UnicodeDecodeError, SyntaxError):
            continue  # a handful of files are deliberately malformed; they are not teaching text
        module = rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        strings = _docstrings(tree)
        if strings:
            docs.append(Document(f"docstring:{module}", "\n\n".join(strings)))
        sources.append(Document(f"source:{rel}", source))
    return docs + sources


def split_documents(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    """(train, heldout) by the stable hash of each document's name."""
    train = [d for d in docs if not is_heldout(d)]
    heldout = [d for d in docs if is_heldout(d)]
    return train, heldout


def write_heldout(docs: list[Document], path: Path = HELDOUT_FILE) -> None:
    """Ship held-out documents as gzipped JSON lines ``{"name": ..., "text": ...}``."""
    body = "".join(json.dumps({"name": d.name, "text": d.text}) + "\n" for d in docs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as f:  # mtime=0: byte-identical rebuilds
        f.write(body.encode("utf-8"))


def heldout_documents(path: Path = HELDOUT_FILE) -> list[Document]:
    """The held-out documents shipped with labkit (identical on every machine)."""
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()
    return [Document(**json.loads(line)) for line in lines]


def heldout_text(max_docs: int | None = None):
    """The held-out documents as a ``datasets.Dataset`` with columns ``name``, ``kind``, ``text``."""
    from datasets import Dataset

    docs = heldout_documents()[:max_docs]
    return Dataset.from_dict({"name": [d.name for d in docs], "kind": [d.kind for d in docs], "text": [d.text for d in docs]})
