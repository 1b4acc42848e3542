"""Model configuration: JSON, TOML file, the demo fallback and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tokendesk.config import Settings
from tokendesk.gateway.model_config import DEMO_MODEL, load_models


def settings(**values: object) -> Settings:
    return Settings(demo=True, **values)  # type: ignore[arg-type]


class TestLoadModels:
    def test_no_configuration_serves_the_demo_model(self) -> None:
        models = load_models(settings())
        assert list(models) == [DEMO_MODEL] and models[DEMO_MODEL].is_demo

    def test_json_list_configures_upstreams_with_weights(self) -> None:
        models = load_models(
            settings(models='[{"name": "gpt", "base_url": "http://127.0.0.1:9/v1", "weight": 2}]')
        )
        assert list(models) == ["gpt"]
        assert models["gpt"].weight == 2 and not models["gpt"].is_demo

    def test_toml_file_configures_upstreams(self, tmp_path: Path) -> None:
        path = tmp_path / "models.toml"
        path.write_text(
            '[[models]]\nname = "small"\nbase_url = "http://127.0.0.1:9/v1"\napi_key = "k"\n'
            '[[models]]\nname = "large"\nbase_url = "http://127.0.0.1:9/v1"\nweight = 4.0\n'
        )
        models = load_models(settings(models_file=str(path)))
        assert sorted(models) == ["large", "small"] and models["small"].api_key == "k"

    def test_invalid_configuration_stops_with_a_message_naming_the_setting(self) -> None:
        with pytest.raises(SystemExit, match="TOKENDESK_MODELS"):
            load_models(settings(models='[{"name": "x", "weight": -1}]'))

    def test_missing_file_stops_with_a_message(self, tmp_path: Path) -> None:
        with pytest.raises(SystemExit, match="TOKENDESK_MODELS_FILE"):
            load_models(settings(models_file=str(tmp_path / "nope.toml")))


class TestBudgetSettings:
    def test_budget_keys_have_their_defaults(self) -> None:
        [model] = load_models(
            settings(models='[{"name": "gpt", "base_url": "http://h/v1"}]')
        ).values()
        assert (model.max_output_tokens, model.max_tokens_field, model.allow_n) == (
            16_384,
            "max_tokens",
            True,
        )

    @pytest.mark.parametrize(
        "extra",
        ['"max_output_tokens": 0', '"max_tokens_field": "tokens"', '"allow_n": "maybe"'],
    )
    def test_nonsense_budget_key_stops_with_a_message(self, extra: str) -> None:
        with pytest.raises(SystemExit, match="TOKENDESK_MODELS"):
            load_models(settings(models=f'[{{"name": "x", "base_url": "http://h/v1", {extra}}}]'))

    def test_model_limit_below_the_floor_stops_with_a_message(self) -> None:
        with pytest.raises(SystemExit, match="max_output_tokens"):
            load_models(
                settings(
                    models='[{"name": "x", "base_url": "http://h/v1", "max_output_tokens": 10}]'
                )
            )

    @pytest.mark.parametrize(
        "values",
        [
            {"gateway_min_completion_tokens": 0},
            {"gateway_default_max_tokens": 0},
            {"gateway_min_completion_tokens": 2000, "gateway_default_max_tokens": 1000},
        ],
    )
    def test_nonsense_gateway_budget_setting_is_refused(self, values: dict[str, int]) -> None:
        with pytest.raises(ValidationError):
            settings(**values)
