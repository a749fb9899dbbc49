"""The budget search on known outcomes: whole images, and the worst class held to --max-class-drop."""

from __future__ import annotations

import pytest

from edge_tl.quantize.api import Outcome, search_float_layers

LAYERS = [("conv_a", 0.1), ("conv_b", 0.2), ("conv_c", 0.3)]


def _search(reference: Outcome, outcomes: dict[tuple[str, ...], Outcome], **budgets):
    ranked: list[int] = []
    said: list[str] = []

    def rank():
        ranked.append(1)
        return LAYERS

    result = search_float_layers(
        reference,
        max_float_layers=3,
        rank=rank,
        measure=lambda floats: outcomes[floats],
        say=said.append,
        classes=("cat", "dog"),
        **budgets,
    )
    return (*result, ranked, said)


def test_two_images_of_200_at_one_point_are_within_budget() -> None:
    # 0.535 - 0.525 is 0.0100000000000009: read as floats, this drop is over 1.0 pt and starts a search.
    reference, int8 = Outcome(107, 200), Outcome(105, 200)
    assert (reference.top1 - int8.top1) * 100 > 1.0
    attempts, _, chosen, met, ranked, said = _search(reference, {(): int8}, budget=1.0)
    assert met is True and chosen.float_layers == () and len(attempts) == 1 and ranked == [] and said == []
    attempts, _, chosen, met, ranked, _ = _search(
        reference, {(): Outcome(104, 200), ("conv_a",): Outcome(106, 200)}, budget=1.0
    )
    assert met is True and chosen.float_layers == ("conv_a",) and ranked == [1]  # 3 images of 200 is over


def test_the_search_keeps_float_layers_until_the_worst_class_is_within_budget() -> None:
    reference = Outcome(40, 40, (20, 20), (20, 20))
    outcomes = {
        (): Outcome(36, 40, (20, 16), (20, 20)),  # top-1 -10 pt, but dog -20 pt
        ("conv_a",): Outcome(37, 40, (19, 18), (20, 20)),  # dog -10 pt
        ("conv_a", "conv_b"): Outcome(38, 40, (19, 19), (20, 20)),  # each class -5 pt
    }
    # Top-1 alone: 10 pt is within 10, nothing goes back to float.
    _, _, chosen, met, ranked, _ = _search(reference, outcomes, budget=10.0)
    assert met is True and chosen.float_layers == () and ranked == []
    attempts, _, chosen, met, ranked, said = _search(reference, outcomes, budget=10.0, max_class_drop=5.0)
    assert met is True and chosen.float_layers == ("conv_a", "conv_b") and ranked == [1]
    assert [(a.worst_class, a.worst_class_drop_points) for a in attempts] == [
        ("dog", pytest.approx(20.0)),
        ("dog", pytest.approx(10.0)),
        ("cat", pytest.approx(5.0)),
    ]
    assert said[0] == "class 'dog' recall drop 20.00 pt (4 of 20 images) > --max-class-drop 5 pt"
    assert attempts[0].to_dict()["worst_class"] == "dog"
    # A class budget alone also drives the search.
    _, _, chosen, met, _, _ = _search(reference, outcomes, budget=None, max_class_drop=5.0)
    assert met is True and chosen.float_layers == ("conv_a", "conv_b")


def test_an_unmet_class_budget_keeps_the_attempt_with_the_smallest_worst_class_drop() -> None:
    reference = Outcome(40, 40, (20, 20), (20, 20))
    outcomes = {
        (): Outcome(38, 40, (20, 18), (20, 20)),
        ("conv_a",): Outcome(37, 40, (19, 18), (20, 20)),
        ("conv_a", "conv_b"): Outcome(39, 40, (20, 19), (20, 20)),
        ("conv_a", "conv_b", "conv_c"): Outcome(36, 40, (18, 18), (20, 20)),
    }
    attempts, _, chosen, met, _, _ = _search(reference, outcomes, budget=None, max_class_drop=0.0)
    assert met is False and len(attempts) == 4 and chosen.float_layers == ("conv_a", "conv_b")
    assert _search(reference, outcomes, budget=None)[3] is None  # no budget: nothing judged
