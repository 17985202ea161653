"""Every YAML preset in configs/ loads, and the method presets say what their names promise."""

from __future__ import annotations

import pytest

from online_gim.config import LearnerConfig, load_config
from online_gim.evaluation.methods import DEFAULT_METHODS, FEATURE_METHODS, PRESETS_DIR, resolve_methods

PRESETS = sorted(PRESETS_DIR.glob("*.yaml"))


def test_every_method_of_the_comparison_has_a_preset():
    names = {path.stem for path in PRESETS}
    assert set(DEFAULT_METHODS) - set(FEATURE_METHODS) <= names


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_loads(path):
    config = load_config(path)
    assert LearnerConfig.model_validate(config.model_dump()) == config


def test_presets_are_the_methods_of_the_seeds_table():
    methods = {m.name: m for m in resolve_methods(DEFAULT_METHODS, seed=3)}
    config = {name: m.config for name, m in methods.items()}
    assert methods["mfcc"].kind == "features" and config["mfcc"] is None
    assert methods["random"].kind == "untrained" and methods["clapp_eprop"].kind == "trained"
    # clapp_eprop is the shipped default; the run's seed replaces the preset's; no online probes
    assert config["clapp_eprop"] == LearnerConfig(seed=3, probes=None)
    assert config["random"] == config["clapp_eprop"]
    recipe = {name: (c.mode, c.encoder.gru, c.loss.kind) for name, c in config.items() if c is not None}
    assert recipe == {
        "random": ("greedy", "eprop", "clapp"),
        "clapp_eprop": ("greedy", "eprop", "clapp"),
        "clapp_bptt": ("greedy", "bptt", "clapp"),
        "gim_infonce": ("greedy", "bptt", "infonce"),
        "gim_no_gar": ("greedy", "none", "infonce"),
        "cpc_e2e": ("e2e", "bptt", "infonce"),
        "hinge_cpc_e2e": ("e2e", "bptt", "clapp_s"),
    }
    assert {name: m.bp_free for name, m in methods.items()} == {
        "random": "yes", "mfcc": "yes", "cpc_e2e": "no", "gim_infonce": "modules yes, GRU BPTT", "gim_no_gar": "yes",
        "hinge_cpc_e2e": "no", "clapp_bptt": "modules yes, GRU BPTT", "clapp_eprop": "yes",
    }


def test_unknown_and_repeated_methods_are_refused():
    with pytest.raises(ValueError, match=r"unknown method 'clap_eprop': no preset .*available: mfcc, "):
        resolve_methods(["clap_eprop"], seed=0)
    with pytest.raises(ValueError, match="methods listed twice: mfcc"):
        resolve_methods(["mfcc", "random", "mfcc"], seed=0)
