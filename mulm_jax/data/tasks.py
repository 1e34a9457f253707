"""Built-in tasks: pairs generated here from a seed, with a held-out set disjoint from training (no download)."""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
FIRST_DAY, LAST_DAY = datetime.date(1900, 1, 1), datetime.date(2099, 12, 31)


def _ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


# How a date is written in the sources: each unambiguous (no d/m/y guessing), some with the weekday to skip over.
DATE_FORMS: tuple[Callable[[datetime.date], str], ...] = (
    lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",
    lambda d: f"{MONTHS[d.month - 1][:3]} {d.day}, {d.year}",
    lambda d: f"{d.day} {MONTHS[d.month - 1][:3]} {d.year}",
    lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
    lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
    lambda d: f"{WEEKDAYS[d.weekday()]}, {MONTHS[d.month - 1]} {d.day}, {d.year}",
    lambda d: f"{WEEKDAYS[d.weekday()][:3]}, {d.day} {MONTHS[d.month - 1][:3]} {d.year}",
    lambda d: f"{_ordinal(d.day)} of {MONTHS[d.month - 1]}, {d.year}",
    lambda d: f"{MONTHS[d.month - 1].upper()} {d.day} {d.year}",
)


@dataclass(frozen=True)
class Task:
    """A generated source of (source, target) pairs: `pairs(seed)` gives the training and the held-out pairs."""

    name: str
    about: str
    pairs: Callable[[int], tuple[list[tuple[str, str]], list[tuple[str, str]]]]
    format: int  # bump when the generator changes what it makes for a seed

    def fingerprint(self, seed: int = 0) -> str:
        """sha256 of every pair the task makes: a data set's version changes whenever the generator does."""
        train, held_out = self.pairs(seed)
        text = "\n".join(f"{s}\t{t}" for s, t in train + [("", "")] + held_out)
        return hashlib.sha256(f"{self.name} {self.format}\n{text}".encode()).hexdigest()


DATES_TRAIN, DATES_HELD_OUT = 30_000, 1_000


def date_pairs(
    seed: int, train: int = DATES_TRAIN, held_out: int = DATES_HELD_OUT
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Dates of 1900-2099 written in one of DATE_FORMS (source) and as ISO 8601 (target). The held-out pairs are
    `held_out` dates that no training pair has in any form; the training pairs are distinct (date, form)
    combinations of the other dates. Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    days = (LAST_DAY - FIRST_DAY).days + 1
    order = rng.permutation(days)
    held_days, train_days = order[:held_out], order[held_out:]
    combos = rng.choice(len(train_days) * len(DATE_FORMS), size=train, replace=False)

    def pair(day: int, form: int) -> tuple[str, str]:
        date = FIRST_DAY + datetime.timedelta(days=int(day))
        return DATE_FORMS[form](date), date.isoformat()

    train_pairs = [pair(train_days[c // len(DATE_FORMS)], c % len(DATE_FORMS)) for c in combos.tolist()]
    held_pairs = [
        pair(day, form) for day, form in zip(held_days.tolist(), rng.integers(len(DATE_FORMS), size=held_out).tolist())
    ]
    return train_pairs, held_pairs


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "dates",
            f'dates written {len(DATE_FORMS)} ways ("Wed, 3 Mar 2021", "3rd of March, 2021", ...) -> ISO '
            f"8601, {DATES_TRAIN:,} training pairs and {DATES_HELD_OUT:,} held out on dates never trained on",
            date_pairs,
            format=1,
        ),
    )
}
