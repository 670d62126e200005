"""Prompts of the SAM family: both ways in, and every way a prompt is refused."""

from __future__ import annotations

import pytest

from common.prompts import (
    Prompt,
    PromptError,
    check_inside,
    check_masks,
    from_options,
    parse_request,
)


def test_options_are_read_as_ultralytics_reads_its_arguments() -> None:
    boxes = from_options("[[1, 2, 30, 40], [5, 6, 70, 80]]", None, None)
    assert [p.box for p in boxes] == [(1, 2, 30, 40), (5, 6, 70, 80)]
    one_each = from_options(None, "[[10, 20], [30, 40]]", None)  # a 2-D list: one per object
    assert [(p.points, p.labels) for p in one_each] == [(((10, 20),), (1,)), (((30, 40),), (1,))]
    nested = from_options(None, "[[[10, 20], [30, 40]]]", "[[1, 0]]")
    assert [(p.points, p.labels) for p in nested] == [(((10, 20), (30, 40)), (1, 0))]
    both = from_options("[[1, 2, 30, 40]]", "[[5, 6]]", "[0]")
    assert both == [Prompt((1, 2, 30, 40), ((5, 6),), (0,))]


@pytest.mark.parametrize(
    ("boxes", "points", "labels", "message"),
    [
        (None, None, None, "needs the option boxes or points"),
        ("[[1, 2, 3]]", None, None, "a box is [x1, y1, x2, y2]"),
        ("[[5, 5, 1, 9]]", None, None, "x2 > x1"),
        ("[[1, 2, 3, 4", None, None, "must be JSON"),
        ("[]", None, None, "non-empty JSON list"),
        ('[[1, 2, "a", 4]]', None, None, "not a finite number"),
        (None, "[[1, 2]]", "[1, 1]", "one label per point"),
        (None, "[[1, 2]]", "[2]", "labels are 1"),
        ("[[1, 2, 3, 4]]", None, "[1]", "labels goes with option points"),
        ("[[1, 2, 3, 4], [1, 2, 3, 4]]", "[[1, 2]]", None, "row n of each"),
        (None, "[[1, 2, 3]]", None, "a point is [x, y]"),
        ("[" + ",".join(["[1, 2, 3, 4]"] * 65) + "]", None, None, "at most 64"),
        ("[[1, 2, 3, " + "9" * 400 + "]]", None, None, "not a finite number"),
    ],
)
def test_bad_options_say_what_to_change(
    boxes: str | None, points: str | None, labels: str | None, message: str
) -> None:
    with pytest.raises(PromptError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_options(boxes, points, labels)


def test_requests_and_the_travelling_form() -> None:
    prompts = parse_request(
        [
            {"box": [1, 2, 30, 40]},
            {"points": [[3, 4], [5, 6]], "labels": [1, 0], "mask_input": "ab" * 16},
        ]
    )
    assert [p.shape for p in prompts] == [(True, False, False), (False, True, True)]
    assert [Prompt.from_json(p.to_json()) for p in prompts] == prompts
    assert parse_request([{"points": [[3, 4]]}])[0].labels == (1,)  # positive by default
    assert prompts[1].scaled(0.5, 2).points == ((1.5, 8), (2.5, 12))
    with pytest.raises(PromptError, match="at least one prompt"):
        parse_request([])
    with pytest.raises(PromptError, match="give a box, points, or both"):
        parse_request([{"labels": []}])


def test_coordinates_must_lie_in_the_image() -> None:
    check_inside([Prompt((0, 0, 640, 480), ((640, 480),), (1,))], 640, 480)
    with pytest.raises(PromptError, match=r"prompt 0: \(641, 10\) lies outside the image"):
        check_inside([Prompt(points=((641, 10),), labels=(1,))], 640, 480)


def test_answers_too_big_to_hold_are_refused() -> None:
    check_masks(192, 1280, 720)
    with pytest.raises(PromptError, match="at most 50"):
        check_masks(51, 8000, 5000)
