"""README.md's configuration reference and settings tables are generated from the models (proxy/docs.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import BaseModel

from destinations import registry
from proxy import config as cfg
from proxy import docs
from tests.helpers import ROOT


def test_readme_matches_the_models():
    readme = (ROOT / "README.md").read_text()
    assert docs.render(readme) == readme, f"README.md is out of date with the settings models: {docs.FIX}"


def test_check_command_says_how_to_fix(tmp_path):
    stale = tmp_path / "README.md"
    text = (ROOT / "README.md").read_text()
    stale.write_text(text.replace("| `api_key` |", "| `api_key_old` |", 1))
    out = subprocess.run([sys.executable, "-m", "proxy", "docs", "--check", "--readme", str(stale)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 1 and "make docs" in out.stderr, out.stderr
    ok = subprocess.run([sys.executable, "-m", "proxy", "docs", "--readme", str(stale)],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and stale.read_text() == text


def test_a_missing_marker_is_an_error():
    text = (ROOT / "README.md").read_text().replace("<!-- BEGIN GENERATED: destination-posthog -->", "")
    with pytest.raises(ValueError, match="destination-posthog"):
        docs.render(text)


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    model = getattr(model, "__defaults_model__", model)
    if model in seen:
        return
    seen.add(model)
    for info in model.model_fields.values():
        sub = docs._sub_model(info.annotation)
        if sub is not None:
            _models(sub, seen)


def test_every_documented_field_has_a_description():
    seen: set[type[BaseModel]] = set()
    for model in (cfg.Config, cfg.EmbeddedStorage, cfg.JetStreamStorage, cfg.SourceConfig, cfg.DestinationConfig,
                  *(a.settings for a in registry.all_adapters())):
        _models(model, seen)
    missing = [f"{m.__name__}.{n}" for m in seen for n, f in m.model_fields.items()
               if not (f.description or "").strip()]
    assert not missing, f"fields without a description (the user docs): {missing}"


def test_rows_show_type_default_required_and_secret():
    table = docs.table(registry.get("posthog").settings, skip=("type",))
    api_key = next(r for r in table.splitlines() if r.startswith("| `api_key` |"))
    assert api_key.split(" | ")[1:5] == ["string", "—", "yes", "yes"]
    delivery = docs.table(cfg.DeliveryConfig)  # the override model shows the defaults it falls back to
    assert "| `retry_window` | duration | `4h` |" in delivery and "| `max_batch_bytes` | size | `5MiB` |" in delivery
    assert "| `flush_interval` | duration | `100ms` |" in delivery
    limits = docs.table(cfg.LimitsConfig)
    assert "| `max_event_bytes` | size | `32KiB` |" in limits


def test_delivery_overrides_are_derived_from_the_effective_settings():
    assert list(cfg.DeliveryConfig.model_fields) == list(cfg.EffectiveDelivery.model_fields)
    for name, info in cfg.DeliveryConfig.model_fields.items():
        assert info.default is None and info.description == cfg.EffectiveDelivery.model_fields[name].description
    # parsing and constraints carry over to the optional form
    assert cfg.DeliveryConfig(retry_window="forever", max_batch_bytes="1MiB").max_batch_bytes == 1024 * 1024
    with pytest.raises(ValueError, match="less than or equal to 64"):
        cfg.DeliveryConfig(concurrency=65)
