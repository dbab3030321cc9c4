"""The install paths agree: pyproject.toml, the lock, environment.yml, the Makefile, .ci/run
and README."""

import ast
import importlib.metadata
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock.txt"


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def locked() -> dict[str, list[Requirement]]:
    """The lock's pins by name; a name can be pinned twice under different markers."""
    entries = LOCK.read_text().replace("\\\n", " ").splitlines()
    pins: dict[str, list[Requirement]] = {}
    for line in entries:
        if line and not line.startswith((" ", "#")):
            requirement = Requirement(line.split(" --hash")[0].strip())
            pins.setdefault(canonicalize_name(requirement.name), []).append(requirement)
    return pins


def applies_here(requirement: Requirement, extra: str = "") -> bool:
    marker = requirement.marker
    return marker is None or marker.evaluate({**default_environment(), "extra": extra})


def pinned_version(requirement: Requirement) -> str:
    (spec,) = requirement.specifier
    assert spec.operator == "==", f"{requirement} is not pinned with =="
    return spec.version


def test_every_declared_dependency_is_locked_at_a_version_it_allows():
    project = pyproject()["project"]
    declared = [(d, "") for d in project["dependencies"]]
    for extra, requirements in project["optional-dependencies"].items():
        declared += [(d, extra) for d in requirements]
    pins = locked()
    for text, extra in declared:
        requirement = Requirement(text)
        if not applies_here(requirement, extra):
            continue
        here = [p for p in pins.get(canonicalize_name(requirement.name), []) if applies_here(p)]
        assert here, f"{requirement.name} is in pyproject.toml but not in {LOCK.name}: make lock"
        for pin in here:
            assert requirement.specifier.contains(pinned_version(pin), prereleases=True), (
                f"{LOCK.name} pins {pin.name}=={pinned_version(pin)}, which pyproject.toml's "
                f"{requirement} does not allow: make lock"
            )


def test_every_pin_carries_hashes():
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text().split("\n", 2)[2])
    assert len(blocks) > 50
    for block in blocks:
        assert "--hash=sha256:" in block, block.splitlines()[0]


def test_lock_was_made_by_the_make_lock_command():
    header = LOCK.read_text().splitlines()[1].lstrip("# ").split()
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    command = re.search(r"^lock:.*\n(?:\t.*\n)*?\t\$\(BIN\)/(uv pip compile .*)$", makefile, re.M)
    made_by = shlex.split(command.group(1).replace("$(LOCK)", LOCK.name))
    # uv records the command without --upgrade and --quiet, which change nothing in the file.
    assert header == [word for word in made_by if word not in ("--upgrade", "--quiet")]


def test_installed_versions_match_the_lock():
    """What `make test` runs on is exactly what the lock says (`make test-latest` skips this)."""
    mismatched = []
    for name, pins in locked().items():
        for pin in (p for p in pins if applies_here(p)):
            installed = importlib.metadata.version(name)
            if installed != pinned_version(pin):
                mismatched.append(f"{name} {installed} (lock: {pinned_version(pin)})")
    assert not mismatched, "installed versions differ from the lock: " + ", ".join(mismatched)


def test_environment_yml_installs_the_lock():
    text = (ROOT / "environment.yml").read_text()
    python = re.search(r"^\s*-\s*python(.*)$", text, re.MULTILINE).group(1).strip()
    assert python == pyproject()["project"]["requires-python"]
    assert re.search(r"^\s*-\s*pip\s*$", text, re.MULTILINE)
    assert re.search(rf"^\s*-\s*--requirement {re.escape(LOCK.name)}\s*$", text, re.MULTILINE)
    assert "pip install --no-deps --editable ." in text


def test_runtime_dependencies_named_by_the_design_are_declared():
    declared = {re.split(r"[<>=\[ ]", d)[0].lower() for d in pyproject()["project"]["dependencies"]}
    needed = {
        "anthropic",
        "websockets",
        "twilio",
        "ipywidgets",
        "ipykernel",
        "jupyterlab",
        "pyngrok",
    }
    assert needed <= declared
    assert "nest-asyncio" not in declared and "nest_asyncio" not in declared
    tests = {
        re.split(r"[<>=\[ ]", d)[0] for d in pyproject()["project"]["optional-dependencies"]["test"]
    }
    assert {"pytest", "nbval"} <= tests


def test_quick_start_commands_are_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(make \w+)$", quick_start, re.MULTILINE)
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    makefile = (ROOT / "Makefile").read_text()
    pytest = r"\t\$\(BIN\)/pytest -n auto --dist loadgroup --nbval-lax"
    assert re.search(r"^test: .*\n(\t.*\n)*" + pytest, makefile, re.MULTILINE)


def test_console_script_points_at_cli_main():
    assert pyproject()["project"]["scripts"]["relaylab"] == "relaylab.cli.commands:main"


# The distribution that provides each top-level module the package imports.
DISTRIBUTIONS = {"dotenv": "python-dotenv", "IPython": "ipython"}


def test_every_third_party_import_of_the_package_is_declared():
    declared = {re.split(r"[<>=\[ ]", d)[0].lower() for d in pyproject()["project"]["dependencies"]}
    imported = set()
    for path in (ROOT / "relaylab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    stdlib = set(sys.stdlib_module_names) | {"relaylab", "__future__"}
    for module in sorted(imported - stdlib):
        assert DISTRIBUTIONS.get(module, module).lower() in declared, f"{module} is not declared"


PURE_CORE = sorted(p.stem for p in (ROOT / "relaylab" / "core").glob("*.py"))


def test_the_pure_core_imports_no_third_party_package():
    """Every module of relaylab.core loads only the stdlib, and the package's public names
    load on first use."""
    assert {"protocol", "conversation", "spoken"} <= set(PURE_CORE)
    probe = f"""
import sys
for name in {PURE_CORE!r}:
    __import__("relaylab.core." + name)
ours = {{"relaylab", "_distutils_hack", "__main__"}}  # the last two come with any interpreter
print(sorted({{m.split(".")[0] for m in sys.modules}} - set(sys.stdlib_module_names) - ours))
import relaylab
assert callable(relaylab.heard_prefix) and relaylab.Step.__name__ == "Step"
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"


# The layers, bottom first, as the README's "How it is built" draws them. The Claude
# stand-in sits beside the relay: neither imports the other.
LAYERS = {
    "core": 0,
    "relay": 1,
    "offline_claude": 1,
    "steps": 2,
    "shell": 3,
    "simulation": 4,
    "notebook": 5,
    "cli": 6,
}


def _relaylab_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("relaylab.")]


def test_every_module_lives_in_a_layer_and_imports_only_downwards():
    package = ROOT / "relaylab"
    loose = sorted(p.name for p in package.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py"], "each module belongs in a layer's folder"
    assert {p.name for p in package.iterdir() if (p / "__init__.py").exists()} == set(LAYERS)
    upward = []
    for path in sorted(package.rglob("*.py")):
        layer = path.relative_to(package).parts[0]
        if layer not in LAYERS:
            continue
        for line, name in _relaylab_imports(path):
            other = name.split(".")[1]
            if LAYERS.get(other, -1) > LAYERS[layer]:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert upward == []


def test_no_two_classes_of_the_package_share_a_name():
    """One name, one meaning: a class name (private ones too) is defined once in relaylab."""
    defined: dict[str, list[str]] = {}
    for path in sorted((ROOT / "relaylab").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                defined.setdefault(node.name, []).append(path.relative_to(ROOT).as_posix())
    shared = {name: paths for name, paths in defined.items() if len(paths) > 1}
    assert shared == {}
