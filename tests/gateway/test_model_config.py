"""Model configuration: JSON, TOML file, the demo fallback and clear refusals."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from pydantic import ValidationError

from tokendesk.config import Settings
from tokendesk.gateway.model_config import DEMO_MODEL, SERVED_APIS, ModelConfig, load_models


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


class TestApis:
    def test_a_model_speaks_chat_unless_configured_otherwise(self) -> None:
        models = load_models(
            settings(
                models='[{"name": "gpt", "base_url": "http://h/v1"},'
                ' {"name": "emb", "base_url": "http://h/v1", "apis": ["embeddings"]}]'
            )
        )
        assert (models["gpt"].apis, models["emb"].apis) == (["chat"], ["embeddings"])

    def test_the_demo_model_speaks_every_api_the_gateway_serves(self) -> None:
        assert load_models(settings())[DEMO_MODEL].apis == list(SERVED_APIS)

    def test_an_unknown_api_stops_start_up_naming_the_model_and_the_field(self) -> None:
        with pytest.raises(SystemExit, match=r"model 'gpt' has 'embedding' in apis"):
            load_models(
                settings(
                    models='[{"name": "gpt", "base_url": "http://h/v1", "apis": ["embedding"]}]'
                )
            )

    def test_no_api_at_all_stops_start_up(self) -> None:
        with pytest.raises(SystemExit, match="apis"):
            load_models(settings(models='[{"name": "gpt", "base_url": "http://h/v1", "apis": []}]'))


def priced(**weights: object) -> ModelConfig:
    return ModelConfig(name="m", base_url="http://h/v1", weights=weights)  # type: ignore[arg-type]


class TestPerKindWeights:
    def test_toml_weights_price_each_kind(self, tmp_path: Path) -> None:
        path = tmp_path / "models.toml"
        path.write_text(
            '[[models]]\nname = "gpt"\nbase_url = "http://127.0.0.1:9/v1"\n'
            "weights = {input = 1.0, output = 4.0, cached_input = 0.25}\n"
        )
        [model] = load_models(settings(models_file=str(path))).values()
        # 3 uncached input at 1, 8 cached at 0.25, 13 output at 4.
        assert model.charge(prompt=11, completion=13, cached=8) == 3 + 2 + 52

    def test_json_weights_price_each_kind(self) -> None:
        [model] = load_models(
            settings(
                models='[{"name": "gpt", "base_url": "http://h/v1", '
                '"weights": {"input": 2, "output": 3}}]'
            )
        ).values()
        assert model.charge(prompt=10, completion=5) == 35

    def test_kinds_left_out_cost_the_models_weight_and_cache_hits_the_inputs(self) -> None:
        model = ModelConfig(name="m", base_url="http://h/v1", weight=2, weights={"output": 5})  # type: ignore[arg-type]
        assert model.charge(prompt=10, completion=1, cached=4) == 20 + 5
        model = ModelConfig(name="m", base_url="http://h/v1", weights={"input": 3})  # type: ignore[arg-type]
        assert model.charge(prompt=10, completion=1, cached=10) == 30 + 1

    def test_the_whole_charge_is_rounded_up_once_from_the_weights_as_written(self) -> None:
        # 100 x 1.1 is 110.00000000000001 in binary floating point.
        assert priced(input=1.1).charge(prompt=100, completion=0) == 110
        assert priced(input=0.1, output=0.1).charge(prompt=1, completion=1) == 1
        assert priced(cached_input=0.3).charge(prompt=10, completion=0, cached=10) == 3

    def test_cached_tokens_beyond_the_prompt_count_as_the_prompt(self) -> None:
        model = priced(cached_input=0.5)
        assert model.charge(prompt=10, completion=0, cached=99) == 5
        assert model.charge(prompt=10, completion=0, cached=-3) == 10

    @pytest.mark.parametrize(
        "weights",
        [
            '{"input": 0}',
            '{"output": -1}',
            '{"cached_input": 1001}',
            '{"output": "four"}',
            '{"reasoning": 2}',
            "[1, 2]",
        ],
    )
    def test_a_weight_out_of_bounds_or_unknown_stops_naming_it(self, weights: str) -> None:
        with pytest.raises(SystemExit, match=r"(?s)TOKENDESK_MODELS.*0\.weights"):
            load_models(settings(models=f'[{{"name": "x", "weights": {weights}}}]'))

    @pytest.mark.parametrize(
        "weights",
        [
            {},
            {"input": 1.0, "output": 4.0, "cached_input": 0.25},
            {"input": 0.3, "output": 1.7},
            # A cache hit dearer than input (a misconfiguration, but a possible one).
            {"input": 1.0, "cached_input": 3.0, "output": 0.5},
            {"input": 999.9, "output": 0.001},
        ],
    )
    def test_a_hold_covers_every_split_of_its_input_and_pays_for_no_more_output(
        self, weights: dict[str, float]
    ) -> None:
        model = priced(**weights)
        rng = random.Random(16)
        for _ in range(2_000):
            prompt, completion = rng.randrange(0, 5_000), rng.randrange(0, 5_000)
            held = model.ceiling(prompt=prompt, completion=completion)
            for cached in (0, prompt // 3, prompt):
                assert model.charge(prompt=prompt, completion=completion, cached=cached) <= held
            most = model.completion_within(held, prompt=prompt)
            assert most >= completion
            assert model.ceiling(prompt=prompt, completion=most) <= held
            assert model.ceiling(prompt=prompt, completion=most + 1) > held
            assert model.tokens_within(held) >= prompt + completion
