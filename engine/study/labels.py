"""Label placement on the study's plots: each label at the nearest offset where its text box
overlaps no other label and no point, the rest listed in the legend."""
from __future__ import annotations

from typing import List

import numpy as np

# ----------------------------------------------------------------------------- labels
# Offsets tried for a label, nearest first: rings of 8 directions (points)
_LABEL_RADII = (6, 14, 24, 36, 50, 66, 84)
_LABEL_DIRECTIONS = ((1, -1), (1, 1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
LABEL_GID = "study-label"   # marks the annotations place_labels made, to redo them
MARKER_PX = 4.0     # half the size of a plotted marker, in pixels, as an obstacle for labels


def _points_of(ax) -> List:
    """The display coordinates of every scattered point of ``ax``."""
    from matplotlib.collections import PathCollection
    pts = []
    for coll in ax.collections:
        if not isinstance(coll, PathCollection):      # error bars are not points
            continue
        offsets = coll.get_offsets()
        if len(offsets):
            pts += list(ax.transData.transform(np.asarray(offsets, float)))
    return pts


def _label_box(ann, renderer):
    """The text box of an annotation, without its leader line, in display pixels."""
    from matplotlib.text import Text
    ann.update_positions(renderer)
    return Text.get_window_extent(ann, renderer)


def _label_fits(box, frame, placed, obstacles) -> bool:
    from matplotlib.transforms import Bbox
    if not (frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0
            and box.y1 <= frame.y1):
        return False
    if any(box.overlaps(p) for p in placed):
        return False
    return not any(box.overlaps(Bbox.from_extents(x - MARKER_PX, y - MARKER_PX, x + MARKER_PX,
                                                  y + MARKER_PX)) for x, y in obstacles)


def place_labels(ax, labels, fontsize: int = 7, obstacles=()) -> List[tuple]:
    """Annotate ``ax`` with each ``(x, y, text)`` of ``labels`` (data coordinates), in order:
    each goes to the nearest of the candidate offsets whose text box (measured with the
    renderer) stays inside the axes and overlaps no label placed before it nor any point of
    ``obstacles`` (display coordinates); a leader line joins a label set off from its point.
    Returns the labels for which no offset fits (for a key beside the plot)."""
    fig = ax.figure
    fig.canvas.draw()             # fixes the limits and the layout the boxes are measured in
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed, left = [], []
    for x, y, text in labels:
        for radius in _LABEL_RADII:
            fitted = None
            for ux, uy in _LABEL_DIRECTIONS:
                ann = ax.annotate(
                    text, (x, y), xytext=(radius * ux, radius * uy), textcoords="offset points",
                    fontsize=fontsize, ha={1: "left", -1: "right", 0: "center"}[ux],
                    va={1: "bottom", -1: "top", 0: "center"}[uy],
                    arrowprops=dict(arrowstyle="-", lw=0.5, color="0.45", shrinkA=1,
                                    shrinkB=2) if radius > _LABEL_RADII[0] else None)
                ann.set_gid(LABEL_GID)
                box = _label_box(ann, renderer).padded(1.5)
                if _label_fits(box, frame, placed, obstacles):
                    fitted = box
                    break
                ann.remove()
            if fitted is not None:
                placed.append(fitted)
                break
        else:
            left.append((x, y, text))
    return left


def label_panels(fig, panels, rounds: int = 3) -> None:
    """Lay out ``fig`` and label each ``(ax, labels)`` of ``panels`` (:func:`place_labels`),
    the labels that find no place listed in the axes' legend, outside the axes. The legend's
    size moves the layout, so layout and placement repeat until the listed labels are the
    ones that did not fit (at most ``rounds`` times)."""
    unplaced = {id(ax): [] for ax, _ in panels}
    for _ in range(rounds):
        for ax, _ in panels:
            _legend_outside(ax, unplaced[id(ax)])
        fig.tight_layout()
        for ax, _ in panels:
            for text in [t for t in ax.texts if t.get_gid() == LABEL_GID]:
                text.remove()
        found = {id(ax): place_labels(ax, labels, obstacles=_points_of(ax))
                 for ax, labels in panels}
        if found == unplaced:
            return
        unplaced = found
    for ax, _ in panels:        # the last placement stands; list what it left out
        _legend_outside(ax, unplaced[id(ax)])


def _legend_outside(ax, unplaced=()):
    """The legend right of the axes, where it covers no point; labels that found no place
    on the plot are listed in it with their coordinates."""
    from matplotlib.lines import Line2D
    handles, names = ax.get_legend_handles_labels()
    for x, y, text in unplaced:
        handles.append(Line2D([], [], linestyle="none"))
        names.append(f"{text}: ({x:.3g}, {y:.3g})")
    if handles:
        ax.legend(handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0)
