"""The history of the insert-position search: gate probabilities per iteration as CSV, and their heat map.

Unregistered helpers of :class:`~acla_basicsr.models.acla_search_model.ACLASearchModel`, which writes
``gate_history.csv`` (one row per validation: ``iter,p<position>,...``) and ``gate_heatmap.png`` (rows:
insert positions, columns: search iterations, colour: P(open) on viridis; a dot marks the selection that
``train.search.readout`` reads from that column) into the
experiment folder, and logs the heat map to tensorboard. Drawn with matplotlib's Agg backend (no display).
"""
import csv
import io
import os.path as osp

import numpy as np

from acla_basicsr import fileio
from acla_basicsr.archs.supernet import DEFAULT_READOUT, readout_selection

HISTORY_FILE = 'gate_history.csv'
HEATMAP_FILE = 'gate_heatmap.png'


def read_history(path, positions):
    """``(iterations, probabilities)`` of a history CSV whose columns are ``positions``; empty if it has others.

    Returns:
        tuple[list[int], list[list[float]]]: Iterations and, for each, P(open) of every position.
    """
    header = ['iter'] + [f'p{p}' for p in positions]
    iterations, rows = [], []
    if not osp.isfile(path):
        return iterations, rows
    with open(path, newline='') as f:
        reader = csv.reader(f)
        if next(reader, None) != header:
            return iterations, rows
        for row in reader:
            if len(row) == len(header):
                iterations.append(int(row[0]))
                rows.append([float(v) for v in row[1:]])
    return iterations, rows


def update_history(path, iteration, positions, probs):
    """Add (or replace) the row of ``iteration`` in the CSV of gate probabilities; return (iters, probs).

    Rows of later iterations (left by a run that was resumed from an earlier state) are dropped.

    Returns:
        tuple[list[int], ndarray]: Iterations and the (iterations, positions) probabilities.
    """
    iterations, rows = read_history(path, positions)
    kept = [(i, r) for i, r in zip(iterations, rows) if i < iteration] + [(int(iteration), [float(v) for v in probs])]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator='\n')
    writer.writerow(['iter'] + [f'p{p}' for p in positions])
    writer.writerows([i] + [f'{v:.6f}' for v in r] for i, r in kept)
    fileio.write_text(path, text.getvalue())
    return [i for i, _ in kept], np.array([r for _, r in kept])


def draw_heatmap(iterations, positions, probs, title='gate probability P(open)', readout=DEFAULT_READOUT):
    """The heat map of gate probabilities as an RGB uint8 image (rows: positions, columns: iterations).

    Args:
        iterations (list[int]): Search iterations (columns).
        positions (list[int]): Insert positions, 1-indexed blocks or groups (rows).
        probs (ndarray): (iterations, positions) probabilities in [0, 1].
        title (str): The title. Default: 'gate probability P(open)'.
        readout (str): How a selection is read from a column (:func:`readout_selection`), marked by dots.
            Default: 'most_probable'.

    Returns:
        ndarray: (H, W, 3) RGB uint8.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    probs = np.asarray(probs, dtype=float).reshape(len(iterations), len(positions))
    fig = Figure(figsize=(2.5 + 0.5 * min(len(iterations), 24), 1.2 + 0.3 * len(positions)), dpi=100)
    ax = fig.add_subplot()
    mesh = ax.imshow(probs.T, cmap='viridis', vmin=0, vmax=1, aspect='auto', interpolation='nearest')
    dots = [(row, col) for col, column in enumerate(probs) for row in readout_selection(column.tolist(), readout)]
    if dots:
        rows, cols = zip(*dots)
        ax.scatter(cols, rows, s=12, c='white', marker='o', label='selected')
    ax.set_yticks(range(len(positions)), [str(p) for p in positions])
    step = max(1, len(iterations) // 12)
    ax.set_xticks(range(0, len(iterations), step), [str(i) for i in iterations[::step]])
    ax.set_xlabel('search iteration')
    ax.set_ylabel('insert position')
    ax.set_title(title)
    fig.colorbar(mesh, ax=ax)
    fig.tight_layout()
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def write_heatmap(path, iterations, positions, probs, readout=DEFAULT_READOUT):
    """Draw :func:`draw_heatmap` and write it as a PNG, atomically; return the RGB image."""
    img = draw_heatmap(iterations, positions, probs, readout=readout)
    fileio.write_image(path, np.ascontiguousarray(img[..., ::-1]))
    return img
