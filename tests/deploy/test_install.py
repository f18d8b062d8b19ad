"""One install list: `scripts/install-packages` is what `scripts/dev` (and so CI) and the Dockerfile
install, and it installs both built-in base models. No Docker engine here: the Dockerfile is read
statically, and the list is read by running the script with --dry-run exactly as each caller
runs it."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from service.settings import BUILTIN_BASE_PACKAGES, Settings

ROOT = Path(__file__).resolve().parents[2]
INSTALLER = "scripts/install-packages"


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


DOCKERFILE = dockerfile_instructions((ROOT / "Dockerfile").read_text())


def installer_call(command: str) -> list[str] | None:
    """The arguments a shell command passes to scripts/install-packages (None: it does not)."""
    if INSTALLER not in command or command.lstrip().startswith("#"):
        return None
    argv = shlex.split(command)
    for start, word in enumerate(argv):
        runs_it = start == 0 or argv[start - 1] in ("bash", "sh", "exec", "&&", ";")
        if word.endswith(INSTALLER) and runs_it:
            return argv[start + 1 :]
    return None


def dry_run(args: list[str]) -> list[list[str]]:
    """The pip commands scripts/install-packages runs for ``args``, as argv lists."""
    result = subprocess.run(
        ["bash", INSTALLER, *args, "--dry-run"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines() if line.strip()]


def installed(commands: list[list[str]]) -> list[str]:
    """Every requirement the pip commands name (options and their values left out)."""
    names: list[str] = []
    for argv in commands:
        assert argv[1:4] == ["-m", "pip", "install"], argv
        rest = argv[4:]
        skip_next = False
        for word in rest:
            if skip_next:
                skip_next = False
            elif word in ("-c", "--constraint"):
                skip_next = True
            elif not word.startswith("-") or word == "-e":
                names.append(word)
    return names


def distribution_of(import_package: str) -> str:
    """The distribution (wheel) that provides an import package in this environment."""
    providers = importlib.metadata.packages_distributions().get(import_package)
    assert providers, f"{import_package} is not installed here (scripts/dev installs it)"
    return canonicalize_name(providers[0])


def requirement_names(words: list[str]) -> set[str]:
    return {
        canonicalize_name(Requirement(w).name) for w in words if not w.startswith(".") and w != "-e"
    }


def docker_install_args() -> list[str]:
    calls = [installer_call(args) for kind, args in DOCKERFILE if kind == "RUN"]
    found = [c for c in calls if c is not None]
    assert len(found) == 1, f"the Dockerfile must run {INSTALLER} exactly once: {DOCKERFILE}"
    return found[0]


def dev_install_args() -> list[str]:
    calls = [installer_call(line) for line in (ROOT / "scripts" / "dev").read_text().splitlines()]
    found = [c for c in calls if c is not None]
    assert len(found) == 1, f"scripts/dev must run {INSTALLER} exactly once"
    return found[0]


def test_the_dockerfile_installs_only_through_the_list() -> None:
    runs = [args for kind, args in DOCKERFILE if kind == "RUN"]
    for args in runs:
        if installer_call(args) is None:
            assert "pip" not in args, f"the Dockerfile installs outside {INSTALLER}: {args}"
    copied_before: list[str] = []
    for kind, args in DOCKERFILE:
        if kind == "COPY":
            copied_before += shlex.split(args)[:-1]
        if kind == "RUN" and installer_call(args) is not None:
            break
    for needed in (INSTALLER, "pyproject.toml", "constraints.txt"):
        assert needed in copied_before, f"{needed} is not copied before the install runs"


def test_scripts_dev_installs_only_through_the_list_and_stamps_it() -> None:
    text = (ROOT / "scripts" / "dev").read_text()
    for line in text.splitlines():
        if "pip install" in line and installer_call(line) is None:
            assert "--upgrade pip" in line, f"scripts/dev installs outside {INSTALLER}: {line}"
    stamp = next(line for line in text.splitlines() if "sha256sum" in line)
    hashed = re.search(r"cat ([^|]+)\|", stamp)
    assert hashed is not None, stamp
    assert set(hashed.group(1).split()) >= {"pyproject.toml", "constraints.txt", INSTALLER}
    # The README's commands and CI's go through scripts/dev.
    assert "scripts/dev test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "scripts/dev serve" in readme and "scripts/dev test" in readme
    for command in ("serve)", "test)", "install)"):
        assert command in text


def test_the_image_gets_torch_the_package_and_both_built_in_bases() -> None:
    commands = dry_run(docker_install_args())
    words = installed(commands)
    assert words[0] == "torch==2.13.0", "torch first and pinned, or pip pulls a CUDA build"
    assert ".[tracking]" in words and "-e" not in words, "the image installs the package as built"
    assert not any("[test]" in w for w in words), "no test tools in the image"
    names = requirement_names(words)
    for base, package in BUILTIN_BASE_PACKAGES.items():
        assert distribution_of(package) in names, f"the image would not register {base}"


def test_the_dev_environment_gets_the_same_list_editable_with_tests() -> None:
    docker = installed(dry_run(docker_install_args()))
    dev = installed(dry_run(dev_install_args()))
    assert "-e" in dev and ".[test,tracking]" in dev
    same = [w for w in dev if w not in ("-e", ".[test,tracking]")]
    assert same == [w for w in docker if w != ".[tracking]"]


def test_built_in_bases_are_registered_from_their_wheels(tmp_path: Path) -> None:
    """What the list installs is what Settings looks for: with the wheels present (as
    scripts/dev and the image install them), both bases are registered by name."""
    registered = Settings(home=tmp_path).base_models
    assert set(BUILTIN_BASE_PACKAGES) <= set(registered), registered


def test_the_image_copies_every_package_pyproject_builds() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted({p.rstrip("*").rstrip(".") for p in patterns})
    copied = set()
    for kind, args in DOCKERFILE:
        if kind == "COPY":
            copied.update(source.rstrip("/") for source in shlex.split(args)[:-1])
    missing = [p for p in packages if p not in copied and "." not in copied]
    assert not missing, f"the Dockerfile does not COPY {missing} (pyproject builds them)"
    assert "application" in packages  # the layer the image once went without


@pytest.mark.parametrize("bad", [[], ["--nope", "python"], ["python", "python3"]])
def test_the_installer_refuses_bad_arguments(bad: list[str]) -> None:
    result = subprocess.run(["bash", INSTALLER, *bad], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "install-packages" in result.stderr
