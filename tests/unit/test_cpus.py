from stream import cpus


def test_infer_workers_get_their_own_cores_and_the_rest_share_what_is_left():
    assert cpus.plan(1, 1, [0, 1]) == {"infer-1": [1], "other": [0]}
    assert cpus.plan(2, 2, list(range(8))) == {"infer-1": [4, 5], "infer-2": [6, 7], "other": [0, 1, 2, 3]}


def test_no_pinning_when_the_budget_is_unknown_or_leaves_no_core():
    assert cpus.plan(None, 1, [0, 1]) is None
    assert cpus.plan(2, 1, [0, 1]) is None
    assert cpus.plan(1, 2, [0, 1]) is None
