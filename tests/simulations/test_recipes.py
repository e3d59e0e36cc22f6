"""Run files and recipes: ``pollinate simulate --config FILE`` / ``--recipe NAME``, the
``pollinate recipes`` listing, and the configuration reference page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pollinate.shared.config import FederationConfig, read_run_file
from pollinate.shared.errors import ConfigError, PollinateError
from pollinate.simulations.cli import app
from pollinate.simulations.commands.simulate import build_config, file_options
from pollinate.simulations.recipes import all_recipes, load_recipe, recipe_names

REPO = Path(__file__).resolve().parents[2]
WIDE = {"COLUMNS": "250"}


def test_every_recipe_loads_and_validates_and_is_named_after_its_settings() -> None:
    recipes = all_recipes()
    assert len(recipes) >= 10
    for recipe in recipes:
        dataset, task, variant = recipe.name.split("/")
        cfg = FederationConfig.from_mapping(recipe.values)
        assert (cfg.dataset, cfg.task) == (dataset, task), recipe.name
        assert recipe.title and recipe.result, recipe.name
        assert "RESULTS.md" in str(recipe.about.get("source", "")), recipe.name
        # Private variants are private, and the others are not.
        assert (cfg.dp != "none") == ("dp" in variant), recipe.name
        if cfg.user_dp:
            assert cfg.user_epsilon is not None and cfg.aggregation == "equal"


def test_the_issue_28_user_dp_recipe_carries_the_measured_setting() -> None:
    """The figure's setting, from RESULTS.md: 30 rounds, q = 1, S = 0.1, FedAvg 100, no
    learned global mean, no refit, ε = 8 (δ defaults to min(1e-5, 1/(10N)))."""
    cfg = FederationConfig.from_mapping(load_recipe("ml-100k/rating/user-dp").values)
    assert (cfg.rounds, cfg.sample_rate, cfg.user_clip) == (30, 1.0, 0.1)
    assert (cfg.server_opt, cfg.server_lr, cfg.user_epsilon) == ("fedavg", 100.0, 8.0)
    assert not cfg.learn_global_mean and not cfg.private_refit and cfg.noise_seed is None


def test_an_unknown_recipe_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown recipe 'ml-100k/rating/nope'.*user-dp"):
        load_recipe("ml-100k/rating/nope")


def test_recipes_command_lists_and_shows_them() -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["recipes"], env=WIDE)
    assert listed.exit_code == 0, listed.output
    for name in recipe_names():
        assert name in listed.output
    shown = runner.invoke(app, ["recipes", "ml-100k/rating/user-dp"], env=WIDE)
    assert shown.exit_code == 0 and 'dp = "user"' in shown.output


def test_a_run_file_is_validated_and_flags_override_it(tmp_path: Path) -> None:
    run = tmp_path / "run.toml"
    run.write_text(
        'dataset = "synthetic"\nrounds = 7\nsample_rate = 0.3\ndp = "user"\n'
        'user-epsilon = 4.0\n\n[about]\ntitle = "mine"\n'
    )
    base = file_options(run, None)
    assert base == {"dataset": "synthetic", "rounds": 7, "sample-rate": 0.3, "dp": "user",
                    "user-epsilon": 4.0}  # fmt: skip
    cfg = build_config({"rounds": 3, "out": str(tmp_path / "o")}, None, base)
    assert (cfg.rounds, cfg.sample_rate, cfg.user_epsilon) == (3, 0.3, 4.0)
    # A recipe is the base of a run file, which is the base of the flags.
    base = file_options(run, "ml-100k/rating/user-dp")
    assert (base["dataset"], base["rounds"], base["user-clip"]) == ("synthetic", 7, 0.1)
    with pytest.raises(PollinateError, match="--resume continues a run"):
        build_config({}, tmp_path, base)


def test_a_run_file_with_an_unknown_key_or_bad_toml_is_refused_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = 3\nsample-rat = 0.2\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(bad))}: unknown keys \['sample-rat'\]"):
        read_run_file(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("rounds = = 3\n")
    with pytest.raises(ConfigError, match=r"broken.toml: not a valid TOML run file.*line 1"):
        read_run_file(broken)
    result = CliRunner().invoke(app, ["simulate", "--config", str(bad)], env=WIDE)
    assert result.exit_code == 2 and "sample-rat" in result.output
    # A value out of range is refused by the model before anything starts.
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("sample-rate = 1.5\n")
    result = CliRunner().invoke(app, ["simulate", "--config", str(wrong)], env=WIDE)
    assert result.exit_code == 2 and "sample-rate" in result.output


def test_pyproject_flower_config_is_a_valid_run_file() -> None:
    values, _ = read_run_file(REPO / "pyproject.toml")
    assert FederationConfig.from_mapping(values).dataset == "synthetic"


def test_the_help_screen_shows_the_common_options_only() -> None:
    result = CliRunner().invoke(app, ["simulate", "--help"], env=WIDE)
    assert result.exit_code == 0
    for shown in ("--config", "--recipe", "--dataset", "--columns", "--rounds", "--dp",
                  "--user-epsilon", "--out"):  # fmt: skip
        assert shown in result.output, shown
    for research in ("--server-ema", "--adapt-lr-scale", "--encoder-max-grad-norm",
                     "--private-weight-decay", "--lr-local"):  # fmt: skip
        assert research not in result.output, research


def test_a_hidden_research_flag_still_works() -> None:
    cfg = build_config({"lr_local": 0.02, "server_ema": 0.9}, None, {})
    assert (cfg.lr_local, cfg.server_ema) == (0.02, 0.9)


def test_the_configuration_reference_documents_every_key() -> None:
    page = (REPO / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9-]+)` \|", page, flags=re.MULTILINE))
    keys = {name.replace("_", "-") for name in FederationConfig.model_fields}
    assert keys - documented == set(), (
        "regenerate: python -m pollinate.simulations.config_reference > docs/configuration.md"
    )


def test_version_flag() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and re.match(r"pollinate \d+\.\d+", result.output)


def test_keys_written_under_the_about_table_are_refused(tmp_path: Path) -> None:
    run = tmp_path / "run.toml"
    run.write_text('[about]\ntitle = "x"\nrounds = 3\n')
    with pytest.raises(ConfigError, match=r"\['rounds'\] are inside the \[about\] table"):
        read_run_file(run)
