"""The assignment solver of tag matching: an exact NumPy port of munkres 1.1.4 (docs/pose_pipeline.md §2.5).

mmpose 0.x matches each joint's detections to the people found so far with ``munkres.Munkres().compute``; when
costs tie, which pair wins depends on that package's scan order, so the port keeps its steps, arithmetic order and
tie-breaking. tests/reference_forms.py calls the package itself, and the tests compare the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

#: A solver takes a (rows, cols) cost matrix and returns the assigned (row, col) pairs.
Solver = Callable[[np.ndarray], Sequence[tuple[int, int]]]


def munkres_1_1_4(cost_matrix: np.ndarray) -> list[tuple[int, int]]:
    """Solve the assignment problem exactly as ``munkres.Munkres().compute`` of munkres 1.1.4 does.

    Same steps, same float64 arithmetic order and the same scans: wide matrices are padded with zero rows,
    step 2 stars the first free zero of each row, step 4's zero search starts at the last found position and
    within the first row holding an uncovered zero takes the *last* one in cyclic column order (1.1.4's loop does
    not stop at the first hit), step 6 adds to covered rows and then subtracts from uncovered columns. Only starred
    cells inside the original shape are reported, in row-major order.
    """
    cost = np.asarray(cost_matrix, dtype=np.float64)
    rows, cols = cost.shape
    n = max(rows, cols)
    c = np.zeros((n, n), dtype=np.float64)
    c[:rows, :cols] = cost
    c -= c.min(axis=1, keepdims=True)  # step 1
    marked = np.zeros((n, n), dtype=np.int8)  # 1 = starred, 2 = primed
    row_cov = np.zeros(n, dtype=bool)
    col_cov = np.zeros(n, dtype=bool)
    zero = c == 0
    for i in range(n):  # step 2
        js = np.flatnonzero(zero[i] & ~col_cov)
        if js.size:
            marked[i, js[0]] = 1
            col_cov[js[0]] = True
    col_cov[:] = False
    arange = np.arange(n)
    while True:
        col_cov[:] = (marked == 1).any(axis=0)  # step 3 (covers were cleared before)
        if int(col_cov.sum()) >= n:
            break
        # step 4 (with step 6 looping back into it)
        row = col = 0
        while True:
            free = zero & ~row_cov[:, None] & ~col_cov[None, :]
            rows_any = free.any(axis=1)
            if not rows_any.any():
                # step 6: smallest uncovered value, added to covered rows then subtracted from uncovered columns
                minval = c[np.ix_(~row_cov, ~col_cov)].min()
                c[row_cov] += minval
                c[:, ~col_cov] -= minval
                zero = c == 0
                row = col = 0
                continue
            order = np.roll(arange, -row)
            i = int(order[np.argmax(rows_any[order])])
            js = np.flatnonzero(free[i])
            j = int(js[np.argmax((js - col) % n)])
            marked[i, j] = 2
            stars = np.flatnonzero(marked[i] == 1)
            if stars.size:
                row, col = i, int(stars[0])
                row_cov[row] = True
                col_cov[col] = False
                continue
            # step 5: alternating path from the uncovered primed zero
            path = [(i, j)]
            while True:
                star_rows = np.flatnonzero(marked[:, path[-1][1]] == 1)
                if not star_rows.size:
                    break
                r = int(star_rows[0])
                path.append((r, path[-1][1]))
                path.append((r, int(np.flatnonzero(marked[r] == 2)[0])))
            for r, k in path:
                marked[r, k] = 0 if marked[r, k] == 1 else 1
            row_cov[:] = False
            col_cov[:] = False
            marked[marked == 2] = 0
            break
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(marked[:rows, :cols] == 1))]
