"""Report pieces the notebooks share: the availability classes of a month."""

from __future__ import annotations

import pandas as pd

from opencdms_kernel.reports import AVAILABILITY_CLASSES, availability_class, availability_heatmap


def test_each_month_gets_the_class_of_its_completeness() -> None:
    frame = pd.DataFrame(
        {
            "wigos_id": ["0-20000-0-60001"] * 4,
            "element": ["PRCP"] * 4,
            "year": [2020] * 4,
            "month": [1, 2, 3, 4],
            "days_in_month": [31, 29, 31, 30],
            "value_days": [31, 25, 20, 0],
            "meets_rule": [True, True, False, None],
            "complete": [True, False, False, False],
        }
    )
    classes = [AVAILABILITY_CLASSES[i][0] for i in availability_class(frame)]
    assert classes == ["complete", "meets the 3/5 rule", "fails the 3/5 rule", "no value"]
    figure = availability_heatmap(frame, rows="element", title="one station")
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == ["no value (1)", "fails the 3/5 rule (1)", "meets the 3/5 rule (1)", "complete (1)"]
