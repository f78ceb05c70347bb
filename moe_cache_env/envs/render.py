"""A small RGB picture of the environment's state, drawn with NumPy alone (``render_mode="rgb_array"``).

The image is ``IMAGE_HEIGHT x IMAGE_WIDTH x 3`` ``uint8`` on a white background, in three panels from left to
right (no text: a legend is below and in ``docs/environment.md``):

1. **Tiers**: one column each for L1, L2 and L3, as tall as the tier's configured slots. The grey part is the
   capacity the KV cache currently leaves to the tier, the dark red part at the top what the KV cache takes;
   the blue fill is the mean number of slots in use (over the per-layer pools), so an empty cache shows grey.
2. **Link**: one column; the orange fill is the share of the last window the host-to-GPU link was busy, the
   violet band at the top the share of the bandwidth other traffic took.
3. **History**: one column per recent window (newest at the right), the latency ratio (mean per-token latency
   over the demand-all reference latency, ``reward.py``) as a green bar when below 1 and a red one above, on a
   scale of 0 to 2 with a black line at 1 (the reference), and the perfect coverage as a blue dot (0 at the
   bottom, 1 at the top).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

IMAGE_HEIGHT = 96
IMAGE_WIDTH = 160
#: windows shown in the history panel (one pixel column each, plus a gap)
HISTORY_WINDOWS = 46

_WHITE = (255, 255, 255)
_GREY = (200, 200, 200)
_KV = (150, 40, 40)
_USED = (60, 110, 200)
_LINK = (240, 150, 40)
_BACKGROUND_TRAFFIC = (140, 90, 190)
_GOOD = (60, 170, 80)
_BAD = (220, 60, 50)
_BLACK = (0, 0, 0)
_COVERAGE = (30, 60, 230)

_TOP, _BOTTOM = 6, IMAGE_HEIGHT - 6  # rows of the plotting area (value 1 at _TOP, 0 at _BOTTOM)


def _rows(fraction: float) -> int:
    """Pixel rows of a bar filling ``fraction`` (clipped to [0, 1]) of the plotting height."""
    f = float(np.clip(np.nan_to_num(fraction, nan=0.0), 0.0, 1.0))
    return int(round(f * (_BOTTOM - _TOP)))


def _fill(image: np.ndarray, x0: int, x1: int, bottom_fraction: float, top_fraction: float, color) -> None:
    """Paint columns [x0, x1) between two heights given as fractions of the plotting area."""
    y_low = _BOTTOM - _rows(bottom_fraction)
    y_high = _BOTTOM - _rows(top_fraction)
    if y_high < y_low:
        image[y_high:y_low, x0:x1] = color


def draw_state(
    tier_slots: Sequence[float],
    tier_capacity: Sequence[float],
    tier_used: Sequence[float],
    link_busy: float,
    background_share: float,
    latency_ratios: Sequence[float],
    coverages: Sequence[float],
) -> np.ndarray:
    """The picture described in the module docstring.

    Args:
        tier_slots: configured slots of L1, L2, L3 per pool.
        tier_capacity: slots the KV cache leaves to each tier now (at most ``tier_slots``).
        tier_used: mean slots in use per tier (drawn up to ``tier_slots``: a step's pinned experts can
            exceed the capacity for a moment).
        link_busy: share of the last window the link was busy, in [0, 1].
        background_share: share of the link's bandwidth taken by other traffic, in [0, 1].
        latency_ratios, coverages: one value per recent window, oldest first.
    """
    image = np.full((IMAGE_HEIGHT, IMAGE_WIDTH, 3), _WHITE, dtype=np.uint8)
    tallest = max(1.0, float(max(tier_slots)))
    # panel 1: three tier columns of 10 px with 4 px gaps, from x = 4
    for i in range(3):
        x0 = 4 + i * 14
        x1 = x0 + 10
        slots = float(tier_slots[i]) / tallest
        capacity = min(float(tier_capacity[i]), float(tier_slots[i])) / tallest
        used = min(float(tier_used[i]), float(tier_slots[i])) / tallest  # may exceed the capacity while pinned
        _fill(image, x0, x1, 0.0, capacity, _GREY)
        _fill(image, x0, x1, capacity, slots, _KV)
        _fill(image, x0, x1, 0.0, used, _USED)
    # panel 2: the link, x = 50..60
    _fill(image, 50, 60, 0.0, link_busy, _LINK)
    _fill(image, 50, 60, 1.0 - background_share, 1.0, _BACKGROUND_TRAFFIC)
    image[_BOTTOM, 2:62] = _BLACK  # the panels' common baseline
    # panel 3: history, x = 66..IMAGE_WIDTH-2, two pixel columns per window (bar + gap)
    x_start = 66
    ratios = list(latency_ratios)[-HISTORY_WINDOWS:]
    covs = list(coverages)[-HISTORY_WINDOWS:]
    offset = HISTORY_WINDOWS - len(ratios)  # newest at the right edge
    for j, (ratio, cov) in enumerate(zip(ratios, covs)):
        x = x_start + 2 * (offset + j)
        r = float(np.nan_to_num(ratio, nan=0.0, posinf=2.0))
        _fill(image, x, x + 1, 0.0, r / 2.0, _GOOD if r <= 1.0 else _BAD)
        y = _BOTTOM - _rows(float(cov))
        image[max(_TOP, y - 1):y + 1, x:x + 1] = _COVERAGE
    reference_row = _BOTTOM - _rows(0.5)  # ratio 1 on the 0..2 scale
    image[reference_row, x_start:x_start + 2 * HISTORY_WINDOWS] = _BLACK
    image[_BOTTOM, x_start:x_start + 2 * HISTORY_WINDOWS] = _BLACK
    return image
