"""The layout the README promises: imports run one way, the core never imports an extension,
every file stays readable (<= 350 lines, <= 100 columns), and every link of the docs resolves."""
import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Support first (the core leans on it), then the core in reading order.
ORDER = ["config", "files", "precision", "readers", "readers_imagenet", "data", "ddpm", "unet",
         "infra", "guidance", "stage1", "stage2", "sample", "obedience", "evaluate"]
SUPPORT_OF_EVALUATE = ["features", "report"]  # evaluate's feature networks and report writer
EXTENSIONS = sorted(p.stem for p in (ROOT / "extensions").glob("*.py") if p.stem != "__init__")


def project_imports(path):
    """Names of project modules that a file imports, anywhere in it (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "extensions":
                names |= {f"extensions.{a.name}" for a in node.names}
    top = {p.stem for p in ROOT.glob("*.py")}
    return {n for n in names if n.split(".")[0] in top or n.startswith("extensions")}


def test_the_core_imports_only_what_comes_before_it_and_never_an_extension():
    rank = {name: k for k, name in enumerate(ORDER)}
    rank |= {"features": rank["infra"] + 0.5, "report": rank["infra"] + 0.5}
    for name in ORDER + SUPPORT_OF_EVALUATE:
        for dep in project_imports(ROOT / f"{name}.py"):
            assert not dep.startswith("extensions"), f"{name}.py imports the extension {dep}"
            assert rank[dep] < rank[name], f"{name}.py imports {dep}, which comes after it"


def test_extensions_import_no_cycle():
    graph = {f"extensions.{e}": {d for d in project_imports(ROOT / "extensions" / f"{e}.py")
                                 if d.startswith("extensions.")} for e in EXTENSIONS}

    def visit(node, path):
        assert node not in path, f"import cycle: {' -> '.join(path + [node])}"
        for nxt in graph.get(node, ()):
            visit(nxt, path + [node])
    for node in graph:
        visit(node, [])


def test_every_file_is_short_and_narrow():
    for path in (p for p in ROOT.rglob("*.py") if ".git" not in p.parts):
        lines = path.read_text().splitlines()
        assert len(lines) <= 350, f"{path.relative_to(ROOT)} has {len(lines)} lines"
        wide = [k + 1 for k, line in enumerate(lines) if len(line) > 100]
        assert not wide, f"{path.relative_to(ROOT)}: lines {wide[:5]} are wider than 100 columns"


def test_every_file_and_function_the_paper_map_names_exists():
    """docs/paper_map.md names `file.py:function` (or `file.py:Class.method`) and `file.py`:
    `a`, `b` (functions of that file): each must resolve to a definition in that file."""
    text = (ROOT / "docs" / "paper_map.md").read_text()
    names = re.findall(r"`([\w/]+\.py):([\w.]+)`", text)
    for row in text.splitlines():  # `file.py`: `a`, `b`
        for file, rest in re.findall(r"`([\w/]+\.py)`: ((?:`\w+`(?:, )?)+)", row):
            names += [(file, f) for f in re.findall(r"`(\w+)`", rest)]
    code_column = [row.rstrip(" |").rsplit("|", 1)[-1] for row in text.splitlines()
                   if row.startswith("| ")]  # the table's file:function column
    files = {f for cell in code_column for f in re.findall(r"`([\w/]+\.py)", cell)}
    assert len(names) >= 30, names
    for file in files | {f for f, _ in names}:
        assert (ROOT / file).is_file(), f"paper_map.md names {file}, which does not exist"
    for file, dotted in names:
        scope = ast.parse((ROOT / file).read_text())
        for part in dotted.split("."):
            found = [n for n in ast.iter_child_nodes(scope) if getattr(n, "name", None) == part
                     and isinstance(n, (ast.FunctionDef, ast.ClassDef))]
            assert found, f"paper_map.md names {file}:{dotted}, which is not defined there"
            scope = found[0]


def test_every_relative_link_in_the_readme_and_docs_points_to_a_file_and_heading_of_the_clone():
    """A picture or page the docs link to (`[text](path)`, `![alt](path#heading)`) must be in the
    clone, and a `#heading` of a page must be one of its headings (GitHub's anchors: lower case,
    punctuation dropped, spaces as dashes): a moved plot or a renamed section breaks a page."""
    @functools.cache
    def anchors(page):  # a page is linked to many times: read its headings once
        heads = re.findall(r"^#+ (.*)$", page.read_text(), re.M)
        return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target, anchor in re.findall(r"\]\(([^)\s#]*)(?:#([^)]*))?\)", page.read_text()):
            if "://" in target:
                continue
            file = (page.parent / target).resolve() if target else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{page.relative_to(ROOT)} -> {target}#{anchor}")
    assert len(pages) > 10 and not broken, broken
