"""A picture of simulations side by side: each policy's utilisation over
time, and the distribution of its jobs' waits.

Needs matplotlib (``pip install 'flux-brokermod[plot]'``); it draws
without a display (the Agg backend), to a PNG, SVG or PDF file named by
its extension.
"""

from typing import Any, List, Mapping, Tuple

from flux.schedsim._results import Outcome

#: The extensions :func:`plot` writes.
PLOT_FORMATS = (".png", ".svg", ".pdf")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'flux-brokermod[plot]'") from None
    matplotlib.use("Agg")  # no display needed; must come before pyplot's import
    import matplotlib.pyplot as plt

    return plt


#: Time units for an axis, the first whose span is under the limit (seconds).
_UNITS = ((2 * 3600, 60, "minutes"), (3 * 86400, 3600, "hours"), (float("inf"), 86400, "days"))


def _unit(span: float) -> Tuple[float, str]:
    return next((size, name) for limit, size, name in _UNITS if span < limit)


#: Above this many changes, utilisation is drawn as the mean over this many
#: equal windows (a long trace's steps would only make a solid band).
BINS = 200


def _windows(steps: List[Tuple[float, int]], bins: int = BINS) -> Tuple[List[float], List[float]]:
    """The time-weighted mean of a step function over *bins* equal windows:
    (window starts, means), the last start repeated at the end for a step plot."""
    start, end = steps[0][0], steps[-1][0]
    width = (end - start) / bins
    means = [0.0] * bins
    for (t, value), (t_next, _) in zip(steps, steps[1:]):
        while t < t_next:
            i = min(int((t - start) / width), bins - 1)
            edge = min(t_next, start + (i + 1) * width)
            if edge <= t:  # float rounding at the last window's edge
                edge = t_next
            means[i] += value * (edge - t) / width
            t = edge
    starts = [start + i * width for i in range(bins)]
    return starts + [end], means + [means[-1]]


def plot(outcomes: Mapping[str, Outcome], path: str, title: str = "") -> None:
    """Draw *outcomes* (``{label: outcome}``, each from
    :meth:`Simulation.outcome() <flux.schedsim.Simulation.outcome>`) side by side into *path* (``.png``, ``.svg`` or
    ``.pdf``): on the left, the fraction of cores in use over time; on the
    right, the share of jobs that waited at most a given time (an empirical
    distribution function).  ValueError names a path of another kind."""
    if not path.lower().endswith(PLOT_FORMATS):
        raise ValueError(f"{path}: a plot is a {', '.join(PLOT_FORMATS)} file")
    if not outcomes:
        raise ValueError("nothing to plot: no simulation results")
    plt = _pyplot()
    tsize, tname = _unit(max(o.elapsed for o in outcomes.values()))
    wsize, wname = _unit(max((r.wait for o in outcomes.values() for r in o.results if r.wait is not None),
                             default=0.0))
    figure, (usage, waits) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    try:
        for label, outcome in outcomes.items():
            steps = outcome.usage_over_time()
            if len(steps) > 2 * BINS:
                times, cores = _windows(steps)
            else:
                times, cores = [t for t, _ in steps], [c for _, c in steps]
            if steps:
                usage.step([t / tsize for t in times], [c / outcome.total_cores for c in cores], where="post",
                           label=label)
            started = sorted(r.wait for r in outcome.results if r.wait is not None)
            if started:
                share = [(i + 1) / len(outcome.results) for i in range(len(started))]
                waits.step([w / wsize for w in started], share, where="post", label=label)
        usage.set(xlabel=f"time ({tname} since the simulation began)", ylabel="cores in use (fraction)",
                  ylim=(0, 1.05), title="Utilisation")
        waits.set(xlabel=f"wait ({wname})", ylabel="jobs started within (fraction of all)", ylim=(0, 1.05),
                  title="Wait distribution")
        for axes in (usage, waits):
            axes.grid(alpha=0.3)
            axes.legend(loc="lower right")
        if title:
            figure.suptitle(title)
        figure.savefig(path)
    finally:
        plt.close(figure)
