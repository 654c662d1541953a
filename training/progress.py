"""Progress of a long loop, for a person at a terminal and for a log file.

On a terminal (the stream, stderr by default, is a tty) one line is redrawn in place, at
most ten times a second, and left on screen when the loop ends:

    epoch 3/30  [########------------]  160/412 steps  39%  loss 4.213  5210 tokens/s  0:31 elapsed  0:48 left

Elsewhere (a log file, a pipe) the same facts are an INFO log record every `every` seconds
(`--progress-seconds`, 30 by default) and one when the loop ends, so a log shows that a run
is alive without a line per step:

    2025-01-01 12:00:00 INFO kerasformer.progress: epoch 3/30: 412/412 steps (100%), loss 4.213, ... in 1:19

Both report only while the `kerasformer.progress` logger is enabled for INFO: every
command's default (`--log-level info`); a program that calls `train()` without configuring
logging sees nothing. Standard library only.
"""

import logging
import shutil
import sys
import time

log = logging.getLogger("kerasformer.progress")
EVERY_SECONDS = 30.0  # between two log lines; set by `report_every` (--progress-seconds)
REDRAW_SECONDS = 0.1  # between two redraws on a terminal: a redraw per step would slow small steps
BAR_WIDTH = 20
clock = time.monotonic  # (a test's fake clock replaces it)


def report_every(seconds):
    """Sets the interval of the log lines of every later `Progress`."""
    global EVERY_SECONDS
    EVERY_SECONDS = float(seconds)


def duration(seconds):
    """`83.2` -> "1:23", `4000` -> "1:06:40"."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def number(value):
    """A metric as a person reads it: 4.213, 0.3102, 5210."""
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


class Progress:
    """The progress of `total` units of work (None: unknown, a count without a bar).

        with Progress("evaluating", total=len(sentences), unit="sentences") as progress:
            for batch in batches:
                ...
                progress.advance(len(batch), {"loss": loss})

    Args:
        what: what is being done, the start of each line ("epoch 3/30").
        total: units of the whole loop, or None.
        unit: the units' name, plural ("steps").
        rates: `{name: units per unit}`, rates shown beside the unit rate, e.g.
            `{"tokens/s": 1800.0}` for steps of 1800 tokens each.
        stream: where a terminal's bar is drawn (default: stderr); log lines go through
            `logging`.

    The rate, and so the time left, is measured from the first update on: the work before
    it (tracing, compiling the first step) would make every estimate too slow.
    """

    def __init__(self, what, total=None, unit="steps", rates=None, stream=None):
        self.what, self.total, self.unit, self.rates = what, total, unit, dict(rates or {})
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = log.isEnabledFor(logging.INFO)
        isatty = getattr(self.stream, "isatty", None)
        self.terminal = self.enabled and bool(isatty and isatty())
        self.every = EVERY_SECONDS
        self.done, self.values = 0, {}
        self.started = self.reported = clock()
        self.first = self.last = None  # (time, done) of the first and the latest update
        self.drawn = self.closed = False

    @property
    def rate(self):
        """Units per second between the first update and the latest, or None before two."""
        if self.first is None or self.last[0] <= self.first[0]:
            return None
        return (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])

    def update(self, done, values=None):
        """`done` units are finished; `values` ({name: number}) are shown beside the count."""
        now = clock()
        self.done = done
        if values is not None:
            self.values = values
        self.last = (now, done)
        if self.first is None:
            self.first = self.last
        if not self.enabled:
            return
        if self.terminal:
            if now - self.reported >= REDRAW_SECONDS or done == self.total:
                self._draw(now)
                self.reported = now
        elif now - self.reported >= self.every:
            self._log(now)
            self.reported = now

    def advance(self, count=1, values=None):
        self.update(self.done + count, values)

    def iterate(self, iterable):
        """Yields the items of `iterable`, counting one unit for each."""
        for item in iterable:
            self.advance()
            yield item

    def close(self, values=None):
        """The loop ended: its last line, with the time it took (and `values`, e.g. the
        epoch's validation metrics)."""
        if self.closed:
            return
        self.closed = True
        if values is not None:
            self.values = values
        if not self.enabled:
            return
        now = clock()
        if self.terminal:
            self._draw(now, final=True)
            self.stream.write("\n")
            self.stream.flush()
        else:
            self._log(now, final=True)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None:
            self.close()
        elif self.drawn:  # keep the bar as it stood, and let the error start on a line of its own
            self.closed = True
            self.stream.write("\n")
            self.stream.flush()

    def facts(self, now, final=False):
        """What one report says, in order: count (with the time taken, at the end), share,
        values, rates, time elapsed and left."""
        count = f"{self.done}/{self.total} {self.unit}" if self.total else f"{self.done} {self.unit}"
        elapsed = duration(now - self.started)
        parts = [f"{count} in {elapsed}" if final else count]
        if self.total and not final:
            parts.append(f"{100 * self.done / self.total:.0f}%")
        parts += [f"{name} {number(value)}" for name, value in self.values.items() if value is not None]
        rate = self.rate
        if rate is not None:
            parts += [f"{number(rate * per_unit)} {name}" for name, per_unit in self.rates.items()]
        if not final:
            parts.append(f"{elapsed} elapsed")
            if self.total and rate:
                parts.append(f"{duration(max(self.total - self.done, 0) / rate)} left")
        return parts

    def _log(self, now, final=False):
        log.info("%s: %s", self.what, ", ".join(self.facts(now, final)))

    def _bar(self):
        if not self.total:
            return ""
        filled = min(BAR_WIDTH, BAR_WIDTH * self.done // self.total)
        return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}]  "

    def _draw(self, now, final=False):
        line = f"{self.what}  {self._bar()}{'  '.join(self.facts(now, final))}"
        if not final:  # cut to the terminal's width: a wrapped line could not be redrawn with "\r"
            line = line[: shutil.get_terminal_size().columns - 1]
        self.stream.write("\r" + line + "\033[K")
        self.stream.flush()
        self.drawn = True
