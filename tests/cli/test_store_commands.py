"""`adalora store check|gc` on the service's own settings (a fresh embedded home)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from service.db import upgrade_to_head
from service.settings import Settings, get_settings
from service.store import get_store


def test_store_check_lists_orphans_and_gc_removes_the_old_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADALORA_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        settings = Settings()
        settings.ensure_home()
        upgrade_to_head(settings.database_url)
        store = get_store(settings)
        for key, age in (("adapters/t/ad_old/peft.zip", 7200), ("adapters/t/ad_new/peft.zip", 1)):
            store.put_stream(key, [b"zip"])
            then = time.time() - age
            os.utime(store.path_for(key), (then, then))
        runner = CliRunner()
        checked = runner.invoke(app, ["store", "check", "--json"])
        assert checked.exit_code == 1, checked.output
        orphans = {o["key"] for o in json.loads(checked.output)["orphans"]}
        assert orphans == {"adapters/t/ad_old/peft.zip", "adapters/t/ad_new/peft.zip"}
        collected = runner.invoke(app, ["store", "gc", "--grace-s", "3600"])
        assert collected.exit_code == 0, collected.output
        assert "deleted adapters/t/ad_old/peft.zip" in collected.output
        assert [o.key for o in store.list_objects()] == ["adapters/t/ad_new/peft.zip"]
    finally:
        get_settings.cache_clear()
