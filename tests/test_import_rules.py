"""The house's import rules, checked on the source (every import, including
those inside functions):

- the core (crane/core) imports only the core, the standard library's pure
  parts and pure libraries: no asyncio, zmq, sqlite, os, threads or sockets;
- a CLI imports only the wire client, the configuration, the core and the
  shared CLI modules, never another command's module, the controller, the
  actors, the store or the agent (``crane local`` alone starts daemons);
- the Slurm-named commands (crane/slurm) import only what a CLI may, the
  CLI modules (the Crane commands they translate onto) and crane.slurm;
  no Crane CLI imports crane.slurm (the translation sits on top);
- the controller side never imports a CLI; the agent never imports the
  controller side.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "crane"

CORE_FORBIDDEN = {"asyncio", "zmq", "sqlite3", "os", "subprocess", "socket", "threading", "selectors",
                  "pwd", "grp", "uvloop", "psutil"}  # fmt: skip
CORE_THIRD_PARTY = {"msgpack", "hostlist"}
#: CLI modules shared by the commands (not commands themselves)
CLI_SHARED = {"crane.cli.common", "crane.cli.format", "crane.cli.gres", "crane.cli.manpages", "crane.cli.job_options",
              "crane.cli.filter_options"}  # fmt: skip
CLI_ALLOWED = ("crane.core", "crane.client", "crane.oneshot", "crane.zmtp", "crane.config", "crane.client_config",
               "crane.polling", "crane.cacctmgr_parse")  # fmt: skip
CONTROLLER_SIDE = ("crane.controller", "crane.actors", "crane.requests", "crane.store", "crane.accounts",
                   "crane.metrics")  # fmt: skip


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: pathlib.Path) -> list[str]:
    """Every module ``path`` imports, absolute (``from x import y`` gives
    ``x.y`` too, since y may be a module)."""
    tree = ast.parse(path.read_text(), str(path))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                base = module_name(path).split(".")
                base = base[: len(base) - node.level + (1 if path.name == "__init__.py" else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append(mod)
            out += [f"{mod}.{a.name}" for a in node.names]
    return out


def sources(sub: str) -> list[pathlib.Path]:
    return sorted((ROOT / sub).rglob("*.py")) if sub else sorted(ROOT.rglob("*.py"))


def crane_imports(path: pathlib.Path) -> set[str]:
    """The crane modules ``path`` imports (names that are real modules or packages)."""
    out = set()
    for name in imports_of(path):
        if not name.startswith("crane"):
            continue
        parts = name.split(".")
        while parts:
            cand = ROOT.parent.joinpath(*parts)
            if cand.with_suffix(".py").exists() or (cand / "__init__.py").exists():
                out.add(".".join(parts))
                break
            parts.pop()
    return out


def is_under(name: str, prefixes: tuple[str, ...] | set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("path", sources("core"), ids=lambda p: p.name)
def test_the_core_imports_only_the_core(path: pathlib.Path) -> None:
    bad = []
    for name in imports_of(path):
        top = name.split(".")[0]
        if top == "crane":
            if name != "crane" and not is_under(name, ("crane.core",)) and name in crane_imports(path):
                bad.append(name)
        elif top in CORE_FORBIDDEN:
            bad.append(name)
        elif top not in CORE_THIRD_PARTY and not _stdlib(top):
            bad.append(name)
    assert not bad, f"{module_name(path)} imports {sorted(set(bad))}"


def _stdlib(top: str) -> bool:
    import sys

    return top in sys.stdlib_module_names or top == "__future__"


@pytest.mark.parametrize("path", sources("cli"), ids=lambda p: p.name)
def test_a_cli_imports_only_the_wire_client_and_the_core(path: pathlib.Path) -> None:
    me = module_name(path)
    # `crane local` starts a one-machine cluster; `crane keygen` makes its keys
    allowed: tuple[str, ...] = CLI_ALLOWED + ("crane.local", "crane.keys") if me == "crane.cli.crane" else CLI_ALLOWED
    bad = [n for n in crane_imports(path)
           if n not in ("crane", "crane.cli") and n != me and not is_under(n, allowed) and n not in CLI_SHARED]  # fmt: skip
    assert not bad, f"{me} imports {sorted(bad)}"


@pytest.mark.parametrize("path", sources("slurm"), ids=lambda p: p.name)
def test_the_slurm_layer_imports_only_the_cli_side(path: pathlib.Path) -> None:
    me = module_name(path)
    bad = [n for n in crane_imports(path)
           if n != "crane" and not is_under(n, CLI_ALLOWED + ("crane.cli", "crane.slurm"))]  # fmt: skip
    assert not bad, f"{me} imports {sorted(bad)}"


@pytest.mark.parametrize("path", sources("cli"), ids=lambda p: p.name)
def test_no_cli_imports_the_slurm_layer(path: pathlib.Path) -> None:
    got = [n for n in crane_imports(path) if is_under(n, ("crane.slurm",))]
    assert not got, f"{module_name(path)} imports {got}"


@pytest.mark.parametrize("path", sources("") , ids=lambda p: module_name(p))
def test_sides_do_not_cross(path: pathlib.Path) -> None:
    me = module_name(path)
    got = crane_imports(path)
    if is_under(me, CONTROLLER_SIDE) or is_under(me, ("crane.agent",)) or me == "crane.local":
        assert not [n for n in got if is_under(n, ("crane.cli",))], f"{me} imports a CLI"
    if is_under(me, ("crane.agent",)):
        assert not [n for n in got if is_under(n, CONTROLLER_SIDE)], f"{me} imports the controller side"
    if is_under(me, ("crane.actors",)):
        assert "crane.controller" not in got, f"{me} imports the controller"
