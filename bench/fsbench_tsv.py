"""Reads the results file of ../shared/bench/fsbench.sh (label, metric, value, unit per
line): for bench/compare.sh and bench/ab-mount.sh."""


def load(path):
    """Returns ({metric: {"unit": unit, label: value, ...}}, metrics in first-seen order)."""
    rows, order = {}, []
    for line in open(path).read().splitlines()[1:]:
        label, metric, value, unit = line.split("\t")
        if metric not in rows:
            rows[metric] = {"unit": unit}
            order.append(metric)
        rows[metric][label] = value
    return rows, order


def num(v):
    """The value as a float, or None when it is not a number ("-", a file-system name)."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return None
