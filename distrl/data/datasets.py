"""Load prompt/answer rows from the built-in task, a local file or the hub, and serve them."""

from __future__ import annotations

import os
import random
from typing import Any

from distrl.config import ConfigError, DataConfig
from distrl.data.tasks import FAMILIES, task_splits

_LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _load_table(spec: str):
    """A `datasets.Dataset` from a local file or a hub id (train split)."""
    import datasets

    datasets.disable_progress_bars()  # keeps errors to one line; the driver prints its own progress
    ext = os.path.splitext(spec)[1].lower()
    if ext in _LOCAL_FORMATS:
        if not os.path.isfile(spec):
            raise ConfigError(f"dataset file '{spec}' does not exist")
        return datasets.load_dataset(_LOCAL_FORMATS[ext], data_files=spec, split="train")
    if os.path.exists(spec):
        raise ConfigError(f"dataset '{spec}': unsupported file type; use "
                          f"{', '.join(_LOCAL_FORMATS)} or a hub id")
    try:
        return datasets.load_dataset(spec, split="train")
    except Exception as e:  # the hub raises many types; the user needs one line
        raise ConfigError(f"dataset '{spec}' is neither a local file nor a loadable hub dataset "
                          f"({type(e).__name__}); give a .jsonl/.json/.parquet/.csv path") from e


FILE_ROW = "_file_row"  # a row's 1-based number in its file; not a column rewards see


def load_rows(spec: str, prompt_field: str, answer_field: str) -> list[dict[str, Any]]:
    """Rows with `prompt` and `answer` keys (other columns kept) from a file or hub dataset."""
    table = _load_table(spec)
    missing = [f for f in (prompt_field, answer_field) if f not in table.column_names]
    if missing:
        raise ConfigError(f"dataset '{spec}' has no field {', '.join(repr(m) for m in missing)}; "
                          f"its fields are {', '.join(table.column_names)}: set --prompt_field/"
                          "--answer_field")
    rows, bad = [], {prompt_field: [], answer_field: []}
    for i, row in enumerate(table):
        row = dict(row)
        for name in (prompt_field, answer_field):
            if row[name] is None or not str(row[name]).strip():
                bad[name].append(i + 1)
        row["prompt"], row["answer"] = row.pop(prompt_field), row.pop(answer_field)
        row[FILE_ROW] = i + 1  # how the user's file numbers it, through any split or shuffle
        rows.append(row)
    if not rows:
        raise ConfigError(f"dataset '{spec}' has no rows")
    problems = [f"'{name}' missing or empty in {len(idx)} rows (row {', '.join(map(str, idx[:5]))}"
                f"{', ...' if len(idx) > 5 else ''})" for name, idx in bad.items() if idx]
    if problems:
        raise ConfigError(f"dataset '{spec}': {'; '.join(problems)} (rows count from 1 in the file's "
                          "order): fix or remove those rows")
    return rows


def load_splits(cfg: DataConfig, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, eval) rows. A built-in task is scored on its --eval_split; a file without
    --eval_dataset has a seeded --eval_fraction held out."""
    built_in = cfg.dataset in FAMILIES
    if built_in:
        splits = task_splits(cfg.dataset)
        train, held_out = splits["train"], splits[cfg.eval_split]
    else:
        train = load_rows(cfg.dataset, cfg.prompt_field, cfg.answer_field)
        held_out = []
    if cfg.eval_dataset:
        held_out = (task_splits(cfg.eval_dataset)[cfg.eval_split] if cfg.eval_dataset in FAMILIES
                    else load_rows(cfg.eval_dataset, cfg.prompt_field, cfg.answer_field))
    elif not built_in:
        if cfg.eval_split != "test":
            raise ConfigError(f"--eval_split {cfg.eval_split} picks a split of a built-in task; "
                              f"'{cfg.dataset}' has none: give --eval_dataset your validation file")
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n_eval = max(1, int(round(len(train) * cfg.eval_fraction)))
        if n_eval >= len(train):
            raise ConfigError(f"dataset '{cfg.dataset}' has {len(train)} rows: too few to hold out "
                              "an eval split; give --eval_dataset")
        held_out = [train[i] for i in order[:n_eval]]
        train = [train[i] for i in order[n_eval:]]
    return train, held_out[: cfg.num_eval]


class PromptSampler:
    """Serves row indices in a seeded shuffled order, epoch after epoch."""

    def __init__(self, num_rows: int, seed: int) -> None:
        self.num_rows, self.seed = num_rows, seed
        self.epoch, self.position = 0, 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(self.num_rows))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def restore(self, epoch: int, position: int) -> None:
        """Continue from a saved (epoch, position): the same rows follow as in the first run."""
        self.epoch, self.position = epoch, position
        self._order = self._shuffled(epoch)

    def next_batch(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.position == self.num_rows:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shuffled(self.epoch)
            out.append(self._order[self.position])
            self.position += 1
        return out
