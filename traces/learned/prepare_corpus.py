"""Build the three-domain byte corpus that the learned-routing MoE is trained and recorded on.

Everything comes from text already on the machine, so nothing is downloaded:

* ``code``: Python source files of the installed third-party packages (the environment's ``site-packages``).
* ``prose``: English prose: the Python reference manual's topic texts (``pydoc_data/topics.py``), the
  docstrings of the standard library's modules, and the license texts under ``/usr/share/common-licenses``.
* ``structured``: tabular and structured text: ``.csv``, ``.tsv``, ``.json`` and ``.yaml`` files shipped with
  the standard library, the installed packages and the system (``/usr/share``, ``/usr/lib``).

Which files exist depends on the machine; the manifest stored in the output names every document with a
digest of its bytes, so a corpus can be compared with the one the bundled traces were recorded on.

Each source file is one document. A document goes to the held-out split when the first byte of the SHA-256
of its domain-relative path is below ``heldout_fraction * 256``, so the split depends on names only, never on
the order files are found in. Documents are then taken in hash order until the domain's byte budget is spent;
a document longer than ``max_doc_bytes`` is cut. The output is one ``.npz`` with, per domain and split, a
uint16 token stream (bytes 0-255, ``EOS`` between documents) and a JSON manifest of the documents used.

Usage::

    python traces/learned/prepare_corpus.py -o .dev/learned/corpus.npz
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import site
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

# The tokenizer is the identity on bytes plus three specials; train_moe.py and record_traces.py import these.
BOS_ID = 256
EOS_ID = 257
PAD_ID = 258
VOCAB_SIZE = 260  # 256 bytes + BOS/EOS/PAD, rounded up to an even size
DOMAINS = ("code", "prose", "structured")


@dataclass(frozen=True)
class Document:
    """One source file's text, named by a path relative to its root (stable across machines)."""

    domain: str
    name: str
    data: bytes


def _hash_byte(domain: str, name: str) -> int:
    return hashlib.sha256(f"{domain}:{name}".encode()).digest()[0]


def _files(root: Path, suffixes: tuple[str, ...], exclude_parts: tuple[str, ...] = ()) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in suffixes and path.is_file() and not any(p in path.parts for p in exclude_parts):
            yield path


def _py_files(site_packages: Path) -> Iterator[Path]:
    # Tests and vendored copies are skipped to keep the code idiomatic.
    return _files(site_packages, (".py",), exclude_parts=("tests", "test", "_vendor", "__pycache__"))


def _is_code_file(name: str) -> bool:
    """Half of the package sources feed the code domain, the other half only their docstrings to prose.

    Splitting by file keeps the two domains disjoint: no docstring in prose also appears inside a code file.
    """
    return _hash_byte("code-or-prose", name) % 2 == 0


def code_documents(site_packages: Path) -> Iterator[Document]:
    """Python sources of installed packages (the half chosen by :func:`_is_code_file`)."""
    for path in _py_files(site_packages):
        name = str(path.relative_to(site_packages))
        if _is_code_file(name):
            yield Document("code", name, path.read_bytes())


def _docstrings(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            text = ast.get_docstring(node, clean=True)
            # Short docstrings are mostly one-line labels ("Return self."), not prose.
            if text and len(text) >= 200:
                out.append(text)
    return out


def prose_documents(stdlib: Path, site_packages: Path, licenses: Path) -> Iterator[Document]:
    """Reference-manual topics, docstrings (one document per module), package descriptions, license texts."""
    topics_path = stdlib / "pydoc_data" / "topics.py"
    if topics_path.exists():
        namespace: dict = {}
        exec(compile(topics_path.read_text(encoding="utf-8"), str(topics_path), "exec"), namespace)
        for key, text in sorted(namespace["topics"].items()):
            yield Document("prose", f"pydoc_topics/{key}", text.encode("utf-8"))
    stdlib_files = _files(stdlib, (".py",), exclude_parts=("test", "tests", "site-packages", "idlelib", "pydoc_data"))
    for path in stdlib_files:
        texts = _docstrings(path.read_text(encoding="utf-8", errors="replace"))
        if texts:
            yield Document("prose", f"docstrings/stdlib/{path.relative_to(stdlib)}", "\n\n".join(texts).encode())
    for path in _py_files(site_packages):
        name = str(path.relative_to(site_packages))
        if not _is_code_file(name):
            texts = _docstrings(path.read_text(encoding="utf-8", errors="replace"))
            if texts:
                yield Document("prose", f"docstrings/site-packages/{name}", "\n\n".join(texts).encode())
    # Package descriptions (Markdown / reStructuredText prose) and documentation files shipped in packages.
    for path in _files(site_packages, (".md", ".rst", ".txt"), exclude_parts=("tests", "test", "__pycache__")):
        if path.name.lower() not in ("top_level.txt", "entry_points.txt", "requirements.txt", "record.txt"):
            yield Document("prose", f"docs/{path.relative_to(site_packages)}", path.read_bytes())
    for path in site_packages.glob("*.dist-info/METADATA"):
        yield Document("prose", f"metadata/{path.parent.name}", path.read_bytes())
    if licenses.is_dir():
        for path in sorted(licenses.iterdir()):
            if path.is_file() and not path.is_symlink():
                yield Document("prose", f"licenses/{path.name}", path.read_bytes())


def structured_documents(roots: list[tuple[Path, tuple[str, ...]]]) -> Iterator[Document]:
    """CSV/TSV/JSON/YAML files under each (root, excluded folder names); binary-looking files are skipped."""
    seen: set[str] = set()
    for root, exclude in roots:
        for path in _files(root, (".csv", ".tsv", ".json", ".yaml", ".yml"), exclude_parts=exclude):
            name = f"{root.name}/{path.relative_to(root)}"
            if name in seen:
                continue
            seen.add(name)
            data = path.read_bytes()
            if b"\x00" not in data[:4096]:
                yield Document("structured", name, data)


def _tokens(docs: list[Document]) -> np.ndarray:
    parts = []
    for doc in docs:
        parts.append(np.frombuffer(doc.data, dtype=np.uint8).astype(np.uint16))
        parts.append(np.array([EOS_ID], dtype=np.uint16))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def build_domain(
    docs: Iterator[Document],
    *,
    budget_bytes: int,
    heldout_fraction: float,
    max_doc_bytes: int,
    min_doc_bytes: int,
) -> tuple[dict[str, np.ndarray], dict[str, list[dict]]]:
    """Split one domain's documents into train / held-out token streams within the byte budget."""
    threshold = int(round(heldout_fraction * 256))
    all_docs = [d for d in docs if len(d.data) >= min_doc_bytes]
    # Hash order: a deterministic shuffle that does not depend on how the files were listed.
    all_docs.sort(key=lambda d: hashlib.sha256(f"{d.domain}:{d.name}".encode()).hexdigest())
    budgets = {"train": budget_bytes, "heldout": max(int(budget_bytes * heldout_fraction), 1)}
    chosen: dict[str, list[Document]] = {"train": [], "heldout": []}
    used = {"train": 0, "heldout": 0}
    for doc in all_docs:
        split = "heldout" if _hash_byte(doc.domain, doc.name) < threshold else "train"
        if used[split] >= budgets[split]:
            continue
        doc = Document(doc.domain, doc.name, doc.data[:max_doc_bytes])
        chosen[split].append(doc)
        used[split] += len(doc.data)
    streams = {split: _tokens(chosen[split]) for split in chosen}
    manifest = {
        split: [
            {"name": d.name, "bytes": len(d.data), "sha256": hashlib.sha256(d.data).hexdigest()[:16]}
            for d in chosen[split]
        ]
        for split in chosen
    }
    return streams, manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", required=True, help="output .npz (put it under the ignored .dev/)")
    parser.add_argument("--budget-mb", type=float, default=8.0, help="train bytes per domain, in MB (1e6 bytes)")
    parser.add_argument("--heldout-fraction", type=float, default=0.08, help="share of documents held out")
    parser.add_argument("--max-doc-kb", type=int, default=64, help="documents are cut to this many KB")
    parser.add_argument("--min-doc-bytes", type=int, default=512, help="smaller documents are skipped")
    parser.add_argument("--site-packages", default=None, help="default: the running interpreter's site-packages")
    args = parser.parse_args(argv)

    if not 0.0 < args.heldout_fraction < 0.5:
        parser.error(f"--heldout-fraction must be in (0, 0.5), got {args.heldout_fraction}")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site_packages = Path(args.site_packages or site.getsitepackages()[0])
    if not site_packages.is_dir():
        parser.error(f"site-packages folder {site_packages} does not exist; pass --site-packages")
    sources = {
        "code": code_documents(site_packages),
        "prose": prose_documents(stdlib, site_packages, Path("/usr/share/common-licenses")),
        "structured": structured_documents(
            [
                (stdlib, ("__pycache__", "site-packages")),
                (site_packages, ("__pycache__",)),
                # Registry name lists are not text anyone writes; leave them out.
                (Path("/usr/share"), ("__pycache__", "package-lists")),
                # API descriptions (JSON) of system tools, e.g. the cloud SDK's discovery documents.
                (Path("/usr/lib"), ("__pycache__",)),
            ]
        ),
    }
    arrays: dict[str, np.ndarray] = {}
    manifest: dict = {
        "python": sys.version.split()[0],
        "stdlib": str(stdlib),
        "site_packages": str(site_packages),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "token_ids": {"bytes": "0-255", "BOS": BOS_ID, "EOS": EOS_ID, "PAD": PAD_ID, "vocab_size": VOCAB_SIZE},
        "domains": {},
    }
    for domain in DOMAINS:
        streams, docs = build_domain(
            sources[domain],
            budget_bytes=int(args.budget_mb * 1e6),
            heldout_fraction=args.heldout_fraction,
            max_doc_bytes=args.max_doc_kb * 1024,
            min_doc_bytes=args.min_doc_bytes,
        )
        for split, tokens in streams.items():
            arrays[f"{domain}/{split}"] = tokens
        manifest["domains"][domain] = {
            split: {"documents": len(docs[split]), "tokens": int(streams[split].size), "files": docs[split]}
            for split in docs
        }
        print(
            f"{domain:>10}: train {len(docs['train']):5d} docs {streams['train'].size / 1e6:6.2f} M tokens, "
            f"held-out {len(docs['heldout']):4d} docs {streams['heldout'].size / 1e6:6.2f} M tokens"
        )
        if streams["heldout"].size < 64 * 1024:
            raise SystemExit(f"domain {domain!r} has only {streams['heldout'].size} held-out tokens; raise the budget")
    arrays["manifest"] = np.array(json.dumps(manifest, sort_keys=True))

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(out)  # atomic: readers never see a half-written corpus
    digest = hashlib.sha256(b"".join(arrays[k].tobytes() for k in sorted(arrays) if k != "manifest")).hexdigest()
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB), token digest {digest[:16]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
