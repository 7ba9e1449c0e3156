"""Progress bars (tqdm on stderr), off in library calls that ask for silence."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress_bar(*, total: int, desc: str, unit: str = "it", enable: bool = True) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, disable=not enable, file=sys.stderr, dynamic_ncols=True,
                unit_scale=unit == "tok", leave=True)
