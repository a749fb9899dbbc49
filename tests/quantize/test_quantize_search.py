"""The accuracy-budget search on given numbers: which attempt it keeps, when it stops, its cap.

``search_float_layers`` gets the measurements from callables, so each case states the
top-1 every float-layer set would reach and checks the choice exactly; the real model
runs in test_quantize_budget.py.
"""

from __future__ import annotations

import re

import pytest

from edge_tl.errors import ConfigError
from edge_tl.quantize.api import Attempt, Outcome, QuantizeConfig, search_float_layers

# The search counts whole images: every top-1 below is on IMAGES validation images.
IMAGES = 1000
REFERENCE = 0.90
RANKED = [("conv_a", 0.01), ("conv_b", 0.02), ("conv_c", 0.03), ("conv_d", 0.04), ("conv_e", 0.05)]


class Model:
    """top-1 by the number of leading ranked layers in float; records what was asked."""

    def __init__(self, top1_by_floats: list[float]) -> None:
        self.top1_by_floats = top1_by_floats
        self.measured: list[tuple[str, ...]] = []
        self.ranked = 0

    def rank(self) -> list[tuple[str, float]]:
        self.ranked += 1
        return list(RANKED)

    def measure(self, float_layers: tuple[str, ...]) -> Outcome:
        assert float_layers == tuple(name for name, _ in RANKED[: len(float_layers)])
        self.measured.append(float_layers)
        return _outcome(self.top1_by_floats[len(float_layers)])


def _outcome(top1: float) -> Outcome:
    return Outcome(round(top1 * IMAGES), IMAGES)


def search(model: Model, *, budget: float | None, max_float_layers: int = 16):
    return search_float_layers(
        _outcome(REFERENCE), budget=budget, max_float_layers=max_float_layers, rank=model.rank, measure=model.measure
    )


def test_within_budget_at_once_keeps_all_int8_and_ranks_nothing() -> None:
    model = Model([0.895])
    attempts, sensitivity, chosen, met = search(model, budget=1.0)
    assert met is True and chosen == attempts[0] == Attempt((), 0.895, pytest.approx(0.5))
    assert sensitivity == [] and model.ranked == 0 and model.measured == [()]


def test_a_drop_equal_to_the_budget_meets_it() -> None:
    model = Model([0.88, 0.89])  # 2.0 pt, then 1.0 pt
    attempts, _, chosen, met = search(model, budget=(REFERENCE - 0.88) * 100.0)
    assert met is True and chosen.float_layers == () and len(attempts) == 1
    later = Model([0.80, 0.88, 0.90])  # the first float layer lands exactly on the budget: stop there
    attempts, _, chosen, met = search(later, budget=(REFERENCE - 0.88) * 100.0)
    assert met is True and chosen.float_layers == ("conv_a",) and len(attempts) == 2


def test_floats_the_most_sensitive_layers_one_at_a_time_and_stops_at_the_first_within_budget() -> None:
    model = Model([0.80, 0.85, 0.893, 0.899, 0.90, 0.90])
    attempts, sensitivity, chosen, met = search(model, budget=1.0)
    assert met is True
    assert sensitivity == RANKED and model.ranked == 1
    assert model.measured == [(), ("conv_a",), ("conv_a", "conv_b")]  # stopped: conv_c never measured
    assert chosen is attempts[-1] and chosen.float_layers == ("conv_a", "conv_b")
    assert [a.drop_points for a in attempts] == pytest.approx([10.0, 5.0, 0.7])
    # the better attempts after the first within budget are not wanted: fewer float layers win
    assert chosen.top1 == 0.893


def test_progress_names_each_attempt() -> None:
    model = Model([0.80, 0.85, 0.893])
    said: list[str] = []
    search_float_layers(
        _outcome(REFERENCE),
        budget=1.0,
        max_float_layers=16,
        rank=model.rank,
        measure=model.measure,
        say=said.append,
    )
    assert said == [
        "drop 10.00 pt > budget 1.00 pt",
        "  1 float layer(s) (conv_a): drop 5.00 pt",
        "  2 float layer(s) (conv_b): drop 0.70 pt",
    ]


def test_budget_not_met_keeps_the_best_attempt_not_the_last_or_the_worst() -> None:
    # floating helps, then hurts: the best is in the middle, the worst is the last
    model = Model([0.85, 0.87, 0.88, 0.86, 0.84, 0.83])
    attempts, _, chosen, met = search(model, budget=0.5)
    assert met is False and len(attempts) == 6
    assert chosen.float_layers == ("conv_a", "conv_b") and chosen.top1 == 0.88
    assert chosen.drop_points == pytest.approx(2.0)


def test_budget_not_met_with_the_best_first_keeps_all_int8() -> None:
    model = Model([0.88, 0.86, 0.85, 0.84, 0.83, 0.82])
    _, _, chosen, met = search(model, budget=0.5)
    assert met is False and chosen.float_layers == ()


def test_the_float_layer_cap_is_the_number_of_layers_tried() -> None:
    model = Model([0.80, 0.81, 0.82, 0.83, 0.90, 0.90])
    attempts, _, chosen, met = search(model, budget=0.5, max_float_layers=3)
    assert len(attempts) == 4 and model.measured[-1] == ("conv_a", "conv_b", "conv_c")
    assert met is False and chosen.float_layers == ("conv_a", "conv_b", "conv_c")
    one = Model([0.80, 0.90])
    attempts, _, chosen, met = search(one, budget=0.5, max_float_layers=1)
    assert met is True and [a.float_layers for a in attempts] == [(), ("conv_a",)]


def test_a_cap_above_the_layer_count_tries_every_layer_once() -> None:
    model = Model([0.80, 0.81, 0.82, 0.83, 0.84, 0.85])
    attempts, _, chosen, met = search(model, budget=0.5, max_float_layers=50)
    assert len(attempts) == len(RANKED) + 1 and met is False
    assert chosen.float_layers == tuple(name for name, _ in RANKED)


def test_a_cap_of_zero_and_no_budget_never_float_anything() -> None:
    capped = Model([0.80])
    attempts, sensitivity, chosen, met = search(capped, budget=0.5, max_float_layers=0)
    assert (len(attempts), sensitivity, capped.ranked, met) == (1, [], 0, False)
    unbudgeted = Model([0.80])
    attempts, sensitivity, chosen, met = search(unbudgeted, budget=None)
    assert (len(attempts), sensitivity, unbudgeted.ranked, met) == (1, [], 0, None)
    assert chosen.drop_points == pytest.approx(10.0)


def test_config_defaults_and_limits() -> None:
    config = QuantizeConfig()
    assert (config.max_accuracy_drop, config.max_float_layers, config.sensitivity_images) == (None, 16, 64)
    assert QuantizeConfig(max_accuracy_drop=0.0, max_float_layers=0).max_accuracy_drop == 0.0
    for bad, message in (
        ({"max_accuracy_drop": -0.1}, "--max-accuracy-drop is in top-1 points and must be >= 0, got -0.1"),
        ({"max_accuracy_drop": float("nan")}, "--max-accuracy-drop"),
        ({"calib_samples": 0}, "--calib-samples must be >= 1, got 0"),
        ({"threads": 0}, "--threads must be >= 1, got 0"),
        ({"max_float_layers": -1}, "max_float_layers must be >= 0, sensitivity_images and eval_batch_size >= 1"),
        ({"sensitivity_images": 0}, "max_float_layers must be >= 0, sensitivity_images and eval_batch_size >= 1"),
        ({"eval_batch_size": 0}, "max_float_layers must be >= 0, sensitivity_images and eval_batch_size >= 1"),
    ):
        with pytest.raises(ConfigError, match="^" + re.escape(message)):
            QuantizeConfig(**bad)
    assert QuantizeConfig(calib_samples=1, threads=1, sensitivity_images=1, eval_batch_size=1).threads == 1
