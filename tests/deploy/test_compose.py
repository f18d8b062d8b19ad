"""The compose file can only be run where Docker is; here we check it against the code:
every command our image runs exists (with its options) and every ADALORA_* name is a setting."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from cli.main import app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
OUR_IMAGE = "adalora-service:latest"
OUR_SERVICES = sorted(
    name for name, svc in SERVICES.items() if "build" in svc or svc.get("image") == OUR_IMAGE
)


def shell_commands(command: str | list[str]) -> list[list[str]]:
    """Split a service command into the programs it runs (`sh -c "a && b"` gives a and b)."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if argv[:2] == ["sh", "-c"]:
        return [shlex.split(part) for part in argv[2].split("&&")]
    return [argv]


def check_adalora_invocation(args: list[str]) -> None:
    """Resolve sub-commands, then let click parse the options exactly as the real CLI would."""
    command: Any = typer.main.get_command(app)
    rest = list(args)
    while hasattr(command, "list_commands"):  # a group: descend by name
        name, rest = rest[0], rest[1:]
        sub = command.get_command(command.make_context("adalora", [], resilient_parsing=True), name)
        assert sub is not None, f"`adalora` has no sub-command {name!r} (args {args})"
        command = sub
    ctx = command.make_context("adalora", rest)  # raises a usage error on unknown options
    assert ctx.params is not None


def test_compose_has_the_production_services() -> None:
    assert {"postgres", "redis", "minio", "api", "worker"} <= set(SERVICES)
    assert OUR_SERVICES == ["api", "worker"]


@pytest.mark.parametrize("service", OUR_SERVICES)
def test_service_commands_exist_in_the_code(service: str) -> None:
    programs = shell_commands(SERVICES[service]["command"])
    for argv in programs:
        if argv[0] == "adalora":
            check_adalora_invocation(argv[1:])
        elif argv[0] == "alembic":
            assert argv[1:] == ["upgrade", "head"]
            ini = (ROOT / "alembic.ini").read_text()
            assert "script_location" in ini and (ROOT / "migrations" / "env.py").is_file()
        else:
            pytest.fail(f"{service}: unexpected program {argv[0]!r}")
    assert any(argv[0] == "adalora" for argv in programs)


def test_checker_rejects_unknown_commands_and_options() -> None:
    with pytest.raises(AssertionError):
        check_adalora_invocation(["no-such-command"])
    with pytest.raises(Exception, match="No such option"):
        check_adalora_invocation(["serve", "--no-such-option"])


@pytest.mark.parametrize("service", OUR_SERVICES)
def test_adalora_env_names_are_settings(service: str) -> None:
    env = SERVICES[service]["environment"]
    names = [k for k in env if k.startswith("ADALORA_")]
    assert names, f"{service} sets no ADALORA_* variable"
    fields = set(Settings.model_fields)
    unknown = [n for n in names if n.removeprefix("ADALORA_").lower() not in fields]
    assert not unknown, f"{service}: not Settings fields: {unknown}"


def test_production_settings_parse_from_the_compose_env(monkeypatch: pytest.MonkeyPatch) -> None:
    env = dict(SERVICES["worker"]["environment"])
    env["ADALORA_API_KEY"] = "test-secret"
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    settings = Settings()
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.broker_url.startswith("redis://")
    assert settings.store_backend == "s3"
    assert settings.s3_endpoint_url == "http://minio:9000"


def test_worker_reserves_a_gpu_and_api_migrates_first() -> None:
    devices = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)
    api_programs = shell_commands(SERVICES["api"]["command"])
    assert api_programs[0][0] == "alembic"
    assert api_programs[-1][:2] == ["adalora", "serve"]
