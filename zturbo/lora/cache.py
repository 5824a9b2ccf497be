"""LoRA files read once per version and per model they were checked against, kept for a few jobs.

A server switches LoRAs between jobs; re-reading a file each time would cost its load, and keeping
every file ever used would grow without bound. The last `size` (file, model shapes) pairs stay.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

from zturbo.lora.read import LoraFile, read_lora

log = logging.getLogger(__name__)
DIT_PATCHES, TE_PATCHES = "dit", "text_encoder"  # WeightPatch.component values
Shapes = dict[str, tuple[int, ...]]


class LoraCache:
    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._files: OrderedDict[tuple, LoraFile] = OrderedDict()

    def read(self, path: Path, dit_shapes: Shapes, text_encoder_shapes: Shapes | None) -> LoraFile:
        stat = path.stat()
        te_key = None if text_encoder_shapes is None else tuple(sorted(text_encoder_shapes.items()))
        key = (path.resolve(), stat.st_mtime_ns, stat.st_size, tuple(sorted(dit_shapes.items())), te_key)
        if key in self._files:
            self._files.move_to_end(key)
            _warn_unmatched(self._files[key])  # every load says what it skips, read now or before
            return self._files[key]
        lora = read_lora(path, dit_shapes=dit_shapes, text_encoder_shapes=text_encoder_shapes)
        _log_report(lora)
        self._files[key] = lora
        while len(self._files) > self.size:
            self._files.popitem(last=False)
        return lora


def _log_report(lora: LoraFile) -> None:
    """Every load says what it found; keys that matched nothing are a warning, each named."""
    log.info("LoRA %s", "\n  ".join(lora.report.lines()))
    _warn_unmatched(lora)


def _warn_unmatched(lora: LoraFile) -> None:
    report = lora.report
    if report.unmatched:
        names = ", ".join(key for key, _ in report.unmatched)
        log.warning(
            "LoRA %s: %d keys matched nothing and are not applied: %s",
            lora.path.name,
            len(report.unmatched),
            names,
        )
