"""The install paths agree: pyproject.toml, environment.yml, the Makefile, .ci/run and README."""

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_installs_the_package_with_extras_that_exist():
    text = (ROOT / "environment.yml").read_text()
    python = re.search(r"^\s*-\s*python(.*)$", text, re.MULTILINE).group(1).strip()
    assert python == pyproject()["project"]["requires-python"]
    extras = re.search(r"--editable \.\[([\w,]+)\]", text).group(1).split(",")
    assert set(extras) <= set(pyproject()["project"]["optional-dependencies"])
    assert re.search(r"^\s*-\s*pip\s*$", text, re.MULTILINE)


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
    assert re.search(r"^test: .*\n(\t.*\n)*\t\$\(BIN\)/pytest --nbval-lax", makefile, re.MULTILINE)


def test_console_script_points_at_cli_main():
    assert pyproject()["project"]["scripts"]["relaylab"] == "relaylab.cli:main"


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
