"""Build the documentation site from the notebooks: nbdev's processing, then Sphinx (myst-nb, sphinx-book-theme).

    pip install -e ".[dev,docs]"        # once: Sphinx, myst-nb, the theme, MathJax (a PyPI package) and selenium
    python tools/build_docs.py          # -> _site/index.html (open it, or `python -m http.server -d _site`)

1. **nbdev's processing** (what `nbdev_docs` does before it hands over to Quarto, which cannot be installed here):
   every notebook under `nbs/` goes through `nbdev.processors.FilterDefaults` — `show_doc` cells inserted for every
   export and executed, `#| hide` and `#| export` cells removed, backticked names linked — into `_proc/nbs/`.
   Saved outputs are kept as they are: **no notebook is executed**, only the cells `show_doc` needs (exports, imports).
2. **Translation for Sphinx** into `_proc/site/`: nbdev's frontmatter becomes the page title, the Quarto cell options
   it leaves (`#| echo: false`, `#| output: asis`) become myst-nb tags, its absolute links to the doc host become
   relative links inside the site, public names it leaves as plain code (`results.tuned`, `MAX_EXACT_SEEDS`, calls)
   and those in the changelog get links to their API entries, and the home page (`index.ipynb`) gets the navigation:
   the method (`nbs/method.ipynb`), API reference (`nbs/0*`), experiments (`nbs/experiments/`, landing page first)
   and benchmarks (`nbs/benchmarks/*`), each picked up by glob.
3. **Sphinx** (`docs/conf.py`) renders saved outputs only (`nb_execution_mode = "off"`), with MathJax served from the
   site itself (copied from the `django-static-mathjax` wheel; no CDN) and Sphinx's own offline search, into `_site/`.
   Sphinx runs with `-W --keep-going`: any warning (a broken reference, an unrenderable output, a page outside the
   navigation) fails the build; the few harmless ones are silenced, with reasons, in `docs/conf.py`.

Exits non-zero on any failure. `--jobs N` processes N notebooks at a time (default 2).
"""

import argparse
import functools
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
PROC = ROOT / "_proc" / "nbs"  # nbdev-processed notebooks
SRC = ROOT / "_proc" / "site"  # Sphinx source tree
SITE = ROOT / "_site"  # the built site
CONF = ROOT / "docs"  # conf.py
DOC_HOST = "https://subspace-opt.github.io/subspace_opt/"  # nbdev's doc_host + doc_baseurl (settings.ini)
SECTIONS = [  # (caption, glob under nbs/, folder in the site)
    ("The method", "method.ipynb", ""),
    ("API reference", "[0-9]*.ipynb", ""),
    ("Experiments", "experiments/[iE]*.ipynb", "experiments"),  # the landing page (index) first, then E01, E02, ...
    ("Benchmarks", "benchmarks/*.ipynb", "benchmarks"),
]


def notebooks():
    "Notebooks that make the site: the home page, then every section's glob, each in file-name order (index first)."
    index_first = lambda q: (q.stem != "index", q.name)
    found = [NBS / "index.ipynb"] + [p for _, g, _ in SECTIONS for p in sorted(NBS.glob(g), key=index_first)]
    return [p for p in found if p.exists() and not p.name.startswith(("_", "."))]


# --- 1. nbdev's processing ------------------------------------------------------------------------------------------


SHOW_DIRECTIVES = {"export", "exports", "exporti", "exec_doc"}  # cells nbdev runs whole for `show_doc`


def nbdev_process(src, dst):
    """Run nbdev's docs processors on notebook `src`, write the result to `dst`; return warnings (list of str).

    Runs in a worker process, as nbdev's own `proc_nbs` does. One
    deviation from nbdev: of a cell that nbdev executes only because it holds an import *and other code* (nbdev warns
    about those, see its FAQ: a test below a function, an example) only the imports run — `show_doc` needs the names,
    and the rest, tests that start processes or train models, took most of the build's seconds — and the cell keeps
    its saved outputs, as every cell does. Should those imports fail, the failure is reported instead of stopping the
    build. A failing export or `show_doc` cell still stops the build, since its page would be wrong.
    """
    t0, main_module = time.perf_counter(), sys.modules["__main__"]
    os.environ["IN_TEST"] = "1"
    import ast
    import warnings as _w
    from execnb.nbio import read_nb, write_nb
    from fastcore.basics import str2bool
    from nbdev import processors as P

    found = []
    AddConstantDocs = _constant_docs()

    class TolerantExecShowDocs(P.exec_show_docs):
        def __call__(self, cell):
            trees = (cell.parsed_() or []) if cell.cell_type == "code" and cell.source else []
            if not P._do_eval(cell) or cell.directives_.keys() & SHOW_DIRECTIVES or P._show_docs(trees):
                return super().__call__(cell)  # not run at all, or needed whole: as nbdev does
            imports = [t for t in trees if isinstance(t, (ast.Import, ast.ImportFrom))]  # why nbdev runs it
            skip = str2bool(getattr(self.nb, "frontmatter_", {}).get("skip_showdoc", False))
            if not hasattr(self, "k") or not self.nb.has_docs_ or skip or len(imports) == len(trees):
                return super().__call__(cell)  # what nbdev does with it: nothing, or the imports it is made of
            self.k.run("\n".join(ast.unparse(t) for t in imports))  # its outputs are not kept: the saved ones stay
            if self.k.exc is not None:
                found.append(
                    f"{src.relative_to(ROOT)}: cell {cell.idx_}: its imports failed in nbdev's show_doc pass: "
                    f"{self.k.exc!r}"
                )
                self.k.exc = None

    class Procs(P.FilterDefaults):
        def base_procs(self):
            procs = [TolerantExecShowDocs if p is P.exec_show_docs else p for p in super().base_procs()]
            return (
                procs[: procs.index(P.add_show_docs) + 1]
                + [AddConstantDocs]
                + procs[procs.index(P.add_show_docs) + 1 :]
            )

    with _w.catch_warnings():
        _w.filterwarnings("ignore", message="Found cells containing imports and other code")
        nb = read_nb(src)
        Procs()(nb)
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_nb(nb, dst)
    sys.modules["__main__"] = main_module  # IPython's shell replaced it; the pool's next task is unpickled from it
    return found + [f"{src.relative_to(ROOT)}: processed in {time.perf_counter() - t0:.1f} s"]


def _constant_docs():
    "An nbdev processor that documents exported constants, as nbdev's `add_show_docs` documents functions and classes."
    import ast
    from execnb.nbio import mk_cell
    from nbdev import processors as P

    class AddConstantDocs(P.Processor):
        """After each exported cell, an API entry for every public name it assigns at top level (`WHICH = (...)`):
        a heading with the name, like `show_doc`'s, and the assignment's source. nbdev exports these names in
        `__all__` but writes no docs for them; the docs-coverage test wants every name in `__all__` documented."""

        def begin(self):
            cells = self.nb.cells
            for cell in [c for c in cells if P._want_doc(c)]:
                try:
                    tree = ast.parse(cell.source)
                except SyntaxError:
                    continue
                entries = []
                for node in tree.body:
                    targets = (
                        node.targets
                        if isinstance(node, ast.Assign)
                        else [node.target]
                        if isinstance(node, ast.AnnAssign)
                        else []
                    )
                    for t in targets:
                        if isinstance(t, ast.Name) and not t.id.startswith("_"):
                            code = ast.get_source_segment(cell.source, node, padded=True)
                            entries.append(f"### {t.id}\n\n```python\n{code}\n```")
                if entries:
                    i = next(i for i, c in enumerate(cells) if c is cell)
                    cells.insert(i + 1, mk_cell("\n\n".join(entries), cell_type="markdown"))

    return AddConstantDocs


def process_all(paths, jobs):
    if PROC.exists():
        shutil.rmtree(PROC)
    todo = [(p, PROC / p.relative_to(NBS)) for p in paths]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx) as ex:
        return [w for ws in ex.map(nbdev_process, *zip(*todo)) for w in ws]


# --- 2. translation for Sphinx --------------------------------------------------------------------------------------

_QUARTO_TAGS = {
    ("echo", "false"): "remove-input",
    ("output", "false"): "remove-output",
    ("include", "false"): "remove-cell",
}
_re_opt = re.compile(r"^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$")
_re_rule = re.compile(r"^---\s*$\n?", re.M)  # show_doc's leading rule: docutils allows none inside an output
_re_attrs = re.compile(r"(\]\([^)\s]*\))\{[^}\n]*\}")  # pandoc/Quarto link attributes: [source](url){target=...}


def page_name(proc_nb, rel):
    "Site path (no suffix) of a processed notebook: nbdev's `output-file` (`01_lanczos` -> `lanczos`) in its folder."
    fm = frontmatter(proc_nb)
    stem = Path(fm["output-file"]).stem if "output-file" in fm else rel.stem
    if rel.parent == Path(".") and rel.stem == "index":
        stem = "index"
    return (rel.parent / stem).as_posix()


def frontmatter(nb):
    "The YAML frontmatter nbdev writes into a leading raw cell, as a dict of strings (one level, folded lines joined)."
    cells = nb["cells"]
    if not cells or cells[0]["cell_type"] != "raw":
        return {}
    import yaml

    text = "".join(cells[0]["source"]).strip()
    if not text.startswith("---"):
        return {}
    return {k: str(v) for k, v in (yaml.safe_load(text.strip("-\n")) or {}).items()}


# nbdev links every backticked name it indexes, private helpers included; those have no API entry to land on
_re_private_link = re.compile(r"\[(`[^`\]]+`)\]\(" + re.escape(DOC_HOST) + r"[\w./-]*#_[a-z0-9]\w*\)", re.I)


def api_entries():
    """Where each public name's API entry is, as doc-host URLs: `module.name` for every name in a module's `__all__`
    (functions and classes from nbdev's index, constants under their own heading) and `so.name` for the names the
    package itself exports (`import subspace_opt as so`), and each name alone where one module exports it."""
    import importlib
    from subspace_opt._modidx import d

    entries, pages, bare = {}, {}, {}
    for mod, syms in d["syms"].items():
        for sym, url in syms.items():
            pages.setdefault(mod, url[0].split("#")[0])
            if sym.count(".") == 2 and not sym.split(".")[-1].startswith("_"):  # a public module-level name
                entries[sym.removeprefix("subspace_opt.")] = url[0]
    for mod, page in pages.items():
        for name in getattr(importlib.import_module(mod), "__all__", []):
            short = f"{mod.removeprefix('subspace_opt.')}.{name}"
            if short not in entries and not callable(getattr(importlib.import_module(mod), name)):
                entries[short] = f"{page}#{name.lower()}"  # a constant: the heading the docs build writes for it
            if short in entries:
                bare.setdefault(name, set()).add(short)
    top = importlib.import_module("subspace_opt")
    for name in getattr(top, "__all__", []):
        home = [k for k in entries if k.endswith("." + name) and k.count(".") == 1]
        if len(home) == 1:
            entries[f"so.{name}"] = entries[home[0]]
    entries.update({name: entries[next(iter(at))] for name, at in bare.items() if len(at) == 1})
    return entries


_api_entries = functools.cache(api_entries)

# a backticked `module.name`, `so.name` or constant, possibly called (`results.time_to_target(r, 0.1)`), not in a link
_re_qualified = re.compile(r"(?<![\[\w`])`((?:[a-z]\w*\.)?[A-Za-z]\w*)(\([^`\n]*\))?`(?!\]\()")
_re_fence = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)


def link_names(text, entries=None, bare=False):
    """Link each backticked public name nbdev leaves unlinked — `results.run_outcomes`, `so.DominantSubspace`, a
    constant such as `MAX_EXACT_SEEDS`, a call such as `damped_dominant_sgd(alpha)` — to its API entry (a doc-host
    URL, which `relink` makes relative). In a notebook a bare function or class name is nbdev's to link (it leaves,
    e.g., a command's name `compare` on purpose); where nbdev links nothing (the changelog), `bare` links those too.
    Fenced code blocks and names already inside a link are left as they are."""
    entries = api_entries() if entries is None else entries

    def sub(m):
        url = entries.get(m[1])
        return f"[{m[0]}]({DOC_HOST}{url})" if url and (bare or "." in m[1] or m[1].isupper() or m[2]) else m[0]

    parts, last = [], 0
    for f in _re_fence.finditer(text):
        parts += [_re_qualified.sub(sub, text[last : f.start()]), f[0]]
        last = f.end()
    return "".join(parts + [_re_qualified.sub(sub, text[last:])])


def relink(text, depth):
    """nbdev's absolute links to the doc host -> relative links inside the site; strip pandoc link attributes; a link
    to a private helper (`_name`, which has no entry) becomes its code name; public names nbdev leaves unlinked get a
    link (`link_names`)."""
    text = link_names(_re_private_link.sub(r"\1", text), _api_entries())
    up = "../" * depth
    text = re.sub(re.escape(DOC_HOST) + r"([\w./-]*)", lambda m: up + (m.group(1) or "index.html"), text)
    return _re_attrs.sub(r"\1", text)


_re_nblink = re.compile(r"\]\((?![a-z]+:)([^)\s#]+\.ipynb)(#[^)\s]*)?\)")


def nb_links(text, rel, pages):
    """Relative links between notebooks (`[the method](method.ipynb)`, which JupyterLab follows) -> relative links
    between their pages; `rel` is this notebook's path under nbs/, `pages` maps notebook paths to page names."""

    def sub(m):
        page = pages.get((NBS / rel.parent / m[1]).resolve())
        if page is None:
            return m[0]
        here = pages[(NBS / rel).resolve()]
        return f"]({os.path.relpath(page + '.html', os.path.dirname(here) or '.')}{m[2] or ''})"

    return _re_nblink.sub(sub, text)


_re_head = re.compile(r"^#{1,6} +([\w.]+) *$", re.M)


def anchor(md):
    """Give each show_doc heading the anchor nbdev's links point at (`#dominantsubspace.refresh`: the name, lower
    case) where the anchors Sphinx makes differ (`dominantsubspace-refresh`, `dominantsubspacerefresh`), and keep
    a dunder's underscores literal (`__add__` would render as bold "add")."""

    def add(m):
        want, head = m[1].lower(), m[0].replace(m[1], m[1].replace("_", r"\_")) if "__" in m[1] else m[0]
        if re.fullmatch(r"[\w-]+", want):
            return head  # MyST's heading anchor is already exactly this
        return f'<span id="{want}"></span>\n\n{head}'

    return _re_head.sub(add, md)


_re_source = re.compile(r"^\[source\]\((\S+)\)[ \t]*\n+(#{1,6} .*\n)", re.M)


def source_link(md):
    "show_doc's `[source](url)` line, which Quarto floats beside the heading: after the heading, styled (site.css)."
    return _re_source.sub(lambda m: f'{m[2]}\n<p class="api-source"><a href="{m[1]}">source</a></p>\n\n', md)


_re_sig = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
_re_sig_link = re.compile(r"\[`?([^\]`]+)`?\]\([^)\s]*\)")


def package_classes():
    "Names of the classes the package exports (show_doc writes every signature as `def Name(`)."
    import importlib, inspect
    from subspace_opt._modidx import d

    return {
        n
        for mod in d["syms"]
        for n, o in vars(importlib.import_module(mod)).items()
        if inspect.isclass(o) and o.__module__.startswith("subspace_opt")
    }


def signature(md, classes):
    """show_doc's signature block as written: `class Name(` for classes, no `:NoneType` nbdev infers from a `None`
    default, and no markdown links (which a code block shows as raw text) in the parameter comments."""

    def fix(m):
        code = _re_sig_link.sub(r"\1", m[1]).replace(":NoneType=None", "=None")
        code = re.sub(r"^def (\w+)\(", lambda d: f"{'class' if d[1] in classes else 'def'} {d[1]}(", code)
        return f"```python\n{code}```"

    return _re_sig.sub(fix, md)


def _md_cell(source, id):
    return {"cell_type": "markdown", "id": id, "metadata": {}, "source": source}


CUDA_NOTE = (
    '<p class="cuda-only"><strong>CUDA only.</strong> The next cell runs only where a CUDA GPU is present '
    "(the tests skip it elsewhere); it selects the FULL setting. The outputs below come from the setting "
    "and device the page states.</p>"
)


def flagged_ids(path, flag):
    "Ids of the code cells of notebook `path` flagged `#| {flag}` (nbdev's processing drops the flag)."
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return {
        c.get("id")
        for c in cells
        if c["cell_type"] == "code" and re.search(rf"^\s*#\s*\|\s*{flag}\s*$", "".join(c["source"]), re.M)
    }


_re_test = re.compile(r"\btest_\w+\(|^\s*assert\b", re.M)


def test_ids(path):
    """Ids of the code cells of notebook `path` that test (a fastcore `test_*` call or an `assert`) and export nothing.

    They run under `nbdev_test`; on the site they are collapsed, so a page reads as prose, usage and API entries."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return {
        c.get("id")
        for c in cells
        if c["cell_type"] == "code"
        and _re_test.search("".join(c["source"]))
        and not re.search(r"^\s*#\s*\|\s*export", "".join(c["source"]), re.M)
    }


def translate(
    nb, name, toc=None, link=lambda text: text, classes=frozenset(), cuda_ids=frozenset(), test_ids=frozenset()
):
    """Turn an nbdev-processed notebook (dict) into one myst-nb renders: title, tags for Quarto options, relative links
    (`link` rewrites links between notebooks into links between pages), signatures as written (`classes`: the
    package's class names), a visible note before each CUDA-only cell (`cuda_ids`) and tests collapsed (`test_ids`)."""
    fm = frontmatter(nb)
    cells = nb["cells"][1:] if fm else nb["cells"]
    depth = name.count("/")
    head = []
    if "title" in fm:
        head.append("# " + fm["title"] + ("\n\n> " + fm["description"] if fm.get("description") else ""))
    out = [_md_cell(h, f"title{i}") for i, h in enumerate(head)]
    for c in cells:
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        c = dict(c, metadata=dict(c.get("metadata", {})))
        if c["cell_type"] == "code":
            if c.get("id") in cuda_ids:
                out.append(_md_cell(CUDA_NOTE, f"cuda-{c['id']}"))
            lines, tags = src.splitlines(), list(c["metadata"].get("tags", []))
            while lines and lines[0].lstrip().startswith("#|"):
                m = _re_opt.match(lines.pop(0))
                if m and (m[1], m[2].lower()) in _QUARTO_TAGS:
                    tags.append(_QUARTO_TAGS[m[1], m[2].lower()])
            src = "\n".join(lines)
            if c.get("id") in test_ids:
                tags.append("hide-cell")  # a toggle shows the test and its output
            if tags:
                c["metadata"]["tags"] = sorted(set(tags))
            for o in c.get("outputs", []):
                md = o.get("data", {}).get("text/markdown")
                if md is None:
                    continue
                md = link(relink("".join(md), depth))  # links inside the site
                o["data"]["text/markdown"] = anchor(source_link(signature(_re_rule.sub("", md), classes)))
            doc = [o["data"]["text/markdown"] for o in c.get("outputs", []) if "text/markdown" in o.get("data", {})]
            if src.lstrip().startswith("show_doc(") and "remove-input" in tags and len(doc) == 1:
                # an API entry: its markdown becomes part of the page, as on nbdev's Quarto site, so the entry's
                # heading is a real section (in the page's contents, linkable, found by search)
                out.append(_md_cell(doc[0], c.get("id", f"doc{len(out)}")))
                continue
        elif c["cell_type"] == "markdown":
            src = link(relink(src, depth))
        elif c["cell_type"] == "raw":
            continue
        c["source"] = src
        out.append(c)
    if toc:
        out.append(_md_cell(toc, "toctree"))
    nb = dict(nb, cells=out)
    nb["metadata"] = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    return nb


def toctree(sections):
    "MyST toctree blocks for the home page, one per non-empty section (hidden: the theme's sidebar shows them)."
    blocks = []
    for caption, pages in sections:
        if pages:
            blocks.append(
                "```{toctree}\n:caption: " + caption + "\n:hidden:\n:maxdepth: 1\n\n" + "\n".join(pages) + "\n```"
            )
    return "\n\n".join(blocks)


def copy_mathjax(dst):
    "MathJax 3 (CommonHTML output, TeX input) from the `django-static-mathjax` wheel into `dst`: math renders offline."
    import mathjax

    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-chtml.js").exists():
        raise SystemExit(f'MathJax not found at {es5}: install the docs extra (pip install -e ".[docs]")')
    keep = {"tex-chtml.js", "input", "output", "ui", "a11y", "sre", "adaptors"}
    shutil.copytree(es5, dst, ignore=lambda d, names: [n for n in names if Path(d) == es5 and n not in keep])


def write_sources(paths):
    if SRC.exists():
        shutil.rmtree(SRC)
    pages, names = {}, {}
    for p in paths:
        rel = p.relative_to(NBS)
        nb = json.loads((PROC / rel).read_text(encoding="utf-8"))
        names[p] = page_name(nb, rel)
        pages[p] = nb
    sections = [(cap, [names[p] for p in paths if p in set(NBS.glob(g))]) for cap, g, _ in SECTIONS]
    sections.append(("Project", ["changelog"]))
    by_path, classes = {p.resolve(): n for p, n in names.items()}, package_classes()
    for p, nb in pages.items():
        name = names[p]
        link = lambda text, rel=p.relative_to(NBS): nb_links(text, rel, by_path)
        out = translate(
            nb,
            name,
            toc=toctree(sections) if name == "index" else None,
            link=link,
            classes=classes,
            cuda_ids=flagged_ids(p, "cuda"),
            test_ids=test_ids(p) if p.parent == NBS and p.name[0].isdigit() else frozenset(),  # API pages
        )
        dst = SRC / (name + ".ipynb")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(json.dumps(out, indent=1, ensure_ascii=False), encoding="utf-8")
    changes = link_names((ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), _api_entries(), bare=True)
    (SRC / "changelog.md").write_text(relink(changes, 0), encoding="utf-8")
    copy_mathjax(SRC / "_static" / "mathjax")
    shutil.copy(CONF / "site.css", SRC / "_static" / "site.css")
    return names


# --- 3. Sphinx ------------------------------------------------------------------------------------------------------


def sphinx(jobs):
    "Sphinx into `_proc/html` (myst-nb writes figures beside its output folder), then moved to `_site/`."
    out = ROOT / "_proc" / "html"
    for d in (out, ROOT / "_proc" / "doctrees", ROOT / "_proc" / "jupyter_execute", SITE):
        if d.exists():
            shutil.rmtree(d)
    cmd = [
        sys.executable,
        "-m",
        "sphinx",
        "-b",
        "html",
        "-W",
        "--keep-going",
        "-q",
        "-j",
        str(jobs),
        "-c",
        str(CONF),
        "-d",
        str(ROOT / "_proc" / "doctrees"),
        str(SRC),
        str(out),
    ]
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    if rc == 0:
        shutil.move(out, SITE)
    return rc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="notebooks processed at a time, and Sphinx workers")
    args = ap.parse_args(argv)
    if args.jobs < 1:  # before anything is deleted or started
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    os.chdir(ROOT)  # nbdev finds settings.ini from the working directory
    t0 = time.perf_counter()
    paths = notebooks()
    warns = process_all(paths, args.jobs)
    for w in warns:
        print("note:", w)
    t1 = time.perf_counter()
    names = write_sources(paths)
    print(f"nbdev processing: {len(paths)} notebooks in {t1 - t0:.1f} s")
    rc = sphinx(args.jobs)
    if rc:
        print(f"FAIL: sphinx-build exited {rc} (warnings are errors: see above)", file=sys.stderr)
        return rc
    print(f"site: {SITE / 'index.html'} ({len(names)} pages from notebooks, {time.perf_counter() - t0:.1f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
