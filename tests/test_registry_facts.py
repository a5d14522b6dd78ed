"""Everything that says something about a method derives from the registry (`isdaa.registry.METHODS`): the
figures' colours, the TRL loss_type mapping, the hub tags and the model card, the CLI's method list. A new
registry entry reaches all of them without another edit."""

from __future__ import annotations

from isdaa.registry import BASE_METHODS, METHODS


def test_every_method_has_its_own_colour_and_is_pairs_are_neighbours():
    from isdaa.plots import METHOD_COLORS, PALETTE

    assert set(METHODS) <= set(METHOD_COLORS)
    colours = [METHOD_COLORS[m] for m in METHODS]
    assert len(set(colours)) == len(colours)  # distinct
    for k, name in enumerate(BASE_METHODS):
        assert METHOD_COLORS[name] == PALETTE[2 * k] and METHOD_COLORS[f"is-{name}"] == PALETTE[2 * k + 1]
    assert (METHOD_COLORS["dpo"], METHOD_COLORS["is-dpo"]) == ("#1f77b4", "#ff7f0e")


def test_trl_loss_types_come_from_the_registry():
    from isdaa.trl_compat import TRL_LOSSES

    declared = {m.trl_loss_type: m.name for m in METHODS.values() if m.trl_loss_type and not m.importance_weighted}
    assert set(TRL_LOSSES) == set(declared) == {("sigmoid",), ("ipo",), ("sigmoid_norm",), ("sft", "sigmoid")}
    assert TRL_LOSSES[("ipo",)] == {"method": "ipo", "loss.ipo_length_normalize": True}
    mix = TRL_LOSSES[("sft", "sigmoid")]
    assert mix({"sigmoid": 1.0, "sft": 0.3}) == {"method": "dpo-sft", "loss.dpo_sft_weight": 0.3}
    assert mix({"sigmoid": 2.0, "sft": 0.3}) is None  # a weight isdaa cannot express


def test_hub_tags_and_card_say_what_the_method_is():
    from isdaa.hub import _method_tags

    assert _method_tags("is-dpo-norm") == ["is-dpo-norm", "dpo-norm", "is-daa"]
    assert _method_tags("ipo") == ["ipo"]
    assert _method_tags("sft") == ["sft"]
    assert METHODS["is-ipo"].family == "squared" and METHODS["simpo"].family == "logistic"


def test_cli_lists_every_method():
    from isdaa.losses import methods_help

    text = methods_help()
    assert all(name in text for name in BASE_METHODS) and "is-<name>" in text
