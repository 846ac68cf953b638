"""The t-SNE map's neighbour counts, on hand-placed points (no model)."""

import taskvec


def test_tsne_neighbours_count_same_task_nearest_points():
    """Two tasks far apart in the map, each with a text point and an image point; one stray image
    point of task a sits by task b's points: its nearest text point is of the wrong task."""
    import math

    import pandas as pd

    df = pd.DataFrame({"task": ["a", "a", "b", "b", "a"], "spec": ["text-icl", "image-icl", "text-icl", "image-icl", "image-icl"],
                       "x": [0.0, 0.2, 9.0, 9.2, 9.1], "y": [0.0] * 5})
    near = taskvec.TSNEResult(df, layer=3).neighbours()
    assert near.loc["image-icl", "text-icl"] == 2 / 3      # the stray point's nearest text point is b's
    assert near.loc["text-icl", "image-icl"] == 1 / 2      # b's text point is nearest the stray a point
    assert near.loc["text-icl", "text-icl"] == 0.0         # each task has one text point: the other is the other task
    assert near.loc["image-icl", "image-icl"] == 1 / 3     # b's image point and the stray a point are each other's nearest
    one = taskvec.TSNEResult(df.iloc[:2], layer=3).neighbours()
    assert math.isnan(one.loc["text-icl", "text-icl"])      # no other text point to be nearest
