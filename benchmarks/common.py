"""Shared pieces of the benchmarks: environment, the tiny model, synthetic rows, timing, profiles, reports.

Every benchmark compares vlmtrain with a baseline measured in the same run (these machines are noisy, and
absolute times only mean something on a GPU), prints its figures, writes ``results/<bench>.json`` for
``run_all.py`` and ends with one ``SUMMARY`` line.
"""

from __future__ import annotations

import cProfile
import json
import math
import os
import platform
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
WORK = Path(os.environ.get("VLMTRAIN_BENCH_WORK", RESULTS / "work"))
FAMILY = "qwen2_vl"

if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from a checkout that is not installed
    sys.path.insert(0, str(REPO))


def quiet(*, keep_vlmtrain: bool = False) -> None:
    """Silence the libraries' warnings and progress bars (they would bury the figures)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    for name in ("transformers", "datasets", "trl", "accelerate", *(() if keep_vlmtrain else ("vlmtrain",))):
        logging.getLogger(name).setLevel(logging.ERROR)


# --- the model and the rows -------------------------------------------------------------------------

def tiny_model(with_model: bool = False) -> Path:
    """The tiny Qwen2-VL-architecture processor (real chat template) [+ random weights], built once."""
    from vlmtrain.tiny import build_tiny

    return build_tiny(FAMILY, WORK / f"tiny-{FAMILY}", with_model=with_model)


def make_renderer(model_dir: Path, *overrides: str) -> Any:
    """vlmtrain's render/mask path for ``model_dir`` under the default config."""
    from vlmtrain.config import load_config

    try:
        from vlmtrain.mask.pipeline import make_renderer as _make
    except ImportError:  # before it moved out of train/fit.py
        from vlmtrain.train.fit import make_renderer as _make

    return _make(load_config(None, [f"model.name_or_path={model_dir}", *overrides]))


SMALL_SIZES = ((24, 24), (32, 48), (48, 32), (64, 64), (96, 64), (128, 128), (200, 150), (256, 256))
REAL_SIZES = ((224, 224), (336, 252), (448, 336), (448, 448))
_WORDS = ("the", "a", "shape", "colour", "red", "green", "blue", "circle", "square", "triangle", "left",
          "right", "above", "below", "small", "large", "image", "picture", "shows", "there", "is",
          "one", "two", "three", "near", "far", "bright", "dark", "edge", "corner", "middle", "top",
          "bottom", "answer", "because", "each", "which", "what", "where", "count", "describe",
          "object", "scene", "background", "foreground")


def image_pool(folder: Path, sizes: Sequence[tuple[int, int]], per_size: int = 3, seed: int = 0) -> list[str]:
    """A few PNGs per size, named relative to ``folder``'s parent (rows reuse them: decoding costs the same
    per use, and writing thousands of files takes minutes)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = []
    for w, h in sizes:
        for k in range(per_size):
            name = f"img-{w}x{h}-{k}.png"
            path = folder / name
            if not path.exists():
                img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
                draw = ImageDraw.Draw(img)
                for _ in range(4):
                    x0, y0 = rng.randrange(w), rng.randrange(h)
                    box = (x0, y0, min(w - 1, x0 + rng.randint(4, w)), min(h - 1, y0 + rng.randint(4, h)))
                    draw.rectangle(box, fill=tuple(rng.randrange(256) for _ in range(3)))
                img.save(path)
            names.append(f"{folder.name}/{name}")
    return names


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."


def synth_rows(n: int, pool: Sequence[str], *, seed: int = 0, images: tuple[int, int] = (1, 4),
               turns: tuple[int, int] = (1, 4)) -> list[dict[str, Any]]:
    """``n`` conversations: ``turns`` user/assistant turns, ``images`` images spread over the user turns.

    Text and images draw from separate generators, so series that vary only the image count share their text.
    """
    text, pics = random.Random(seed), random.Random(seed + 1)
    rows = []
    for _ in range(n):
        n_turns, n_images = text.randint(*turns), pics.randint(*images)
        per_turn = [0] * n_turns
        for _ in range(n_images):
            per_turn[0 if pics.random() < 0.6 else pics.randrange(n_turns)] += 1
        messages: list[dict[str, Any]] = []
        for t in range(n_turns):
            parts = [{"type": "image"} for _ in range(per_turn[t])]
            user = _sentence(text, 3, 20)
            messages.append({"role": "user", "content": [*parts, {"type": "text", "text": user}]})
            messages.append({"role": "assistant", "content": [{"type": "text", "text": _sentence(text, 4, 40)}]})
        rows.append({"messages": messages, "images": [pics.choice(pool) for _ in range(n_images)]})
    return rows


def write_dataset(folder: Path, rows: list[dict[str, Any]], name: str = "train.jsonl") -> Path:
    """Rows as JSONL next to their images (relative paths resolve against the file's folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def examples(rows: list[dict[str, Any]], root: Path) -> list[Any]:
    """Raw rows -> vlmtrain ``Example``s (absolute image paths), as the data loader would produce them."""
    from vlmtrain.data.examples import Example
    from vlmtrain.media import MediaItem

    return [Example(messages=r["messages"], media=[MediaItem("image", str(root / p)) for p in r["images"]],
                    where=f"row {i}") for i, r in enumerate(rows)]


def fit_config(path: Path, *, model_dir: Path, data: Path, cache_dir: Path, output_dir: Path, steps: int,
               batch: int, image_dir: Path | None = None, extra: dict[str, Any] | None = None) -> Path:
    """A ``vlmtrain fit`` YAML for the benchmarks (no checkpoints, no logging to services).

    Image paths in the rows are relative to ``image_dir`` (default: the data file's folder).
    """
    import yaml

    source = {"path": str(data), "image_dir": str(image_dir or data.parent)}
    cfg: dict[str, Any] = {
        "model": {"name_or_path": str(model_dir)},
        "data": {"train": [source], "cache_dir": str(cache_dir), "max_length": 8192},
        "training": {"output_dir": str(output_dir), "max_steps": steps, "per_device_train_batch_size": batch,
                     "learning_rate": 1e-3, "lr_scheduler_type": "constant", "warmup_steps": 0,
                     "logging_steps": 10, "save_strategy": "no", "report_to": "none", "seed": 0},
    }
    for key, value in (extra or {}).items():
        section, _, name = key.partition(".")
        cfg.setdefault(section, {})[name] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def trainer_rows(dataset: Any) -> Any:
    """The cached split as ``fit`` hands it to the trainer (only the columns the collator reads, where fit
    selects them)."""
    import vlmtrain.collate

    columns = getattr(vlmtrain.collate, "COLLATOR_COLUMNS", None)
    return dataset.select_columns(list(columns)) if columns else dataset


def prepare(cfg: Any, renderer: Any, *, num_proc: int = 1) -> Any:
    """vlmtrain's preprocess of the train split (fingerprinted cache); the SplitResult."""
    from vlmtrain.data.split import prepare_split

    return prepare_split(cfg, renderer, "train", num_proc=num_proc)


# --- timing -----------------------------------------------------------------------------------------

def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function, alternating between them so drift hits every one alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        order = list(fns.items()) if r % 2 == 0 else list(reversed(fns.items()))
        for name, fn in order:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> str:
    """min-max as a percentage of the median: how far one repeat can be trusted."""
    if len(values) < 2:
        return "n/a"
    mid = median(values)
    return f"±{100 * (max(values) - min(values)) / 2 / mid:.0f}%" if mid else "n/a"


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x): the growth exponent (1.0 = linear)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)


# --- profiles ---------------------------------------------------------------------------------------

_PACKAGES = ("vlmtrain", "transformers", "trl", "tokenizers", "jinja2", "PIL", "torchvision", "torch", "numpy",
             "datasets", "pyarrow", "difflib", "json", "huggingface_hub")


def _package(filename: str, func: str) -> str:
    if filename == "~":  # C builtins: attribute by the method's owner where it says
        for pkg, hint in (("tokenizers", "tokenizers"), ("torch", "torch"), ("PIL", "ImagingCore"),
                          ("numpy", "numpy"), ("jinja2", "markupsafe")):
            if hint in func:
                return pkg
        return "builtins"
    for pkg in _PACKAGES:
        if f"/{pkg}/" in filename or filename.endswith(f"/{pkg}.py"):
            return pkg
    return "other"


@dataclass
class ProfileSummary:
    total_s: float
    by_package: list[tuple[str, float]]
    top: list[tuple[str, float, float]]  # function, self seconds, cumulative seconds

    def lines(self, n_top: int = 6) -> list[str]:
        pkgs = ", ".join(f"{p} {100 * s / self.total_s:.0f}%" for p, s in self.by_package[:7] if s > 0)
        out = [f"self time by package: {pkgs}"]
        out += [f"  {100 * s / self.total_s:4.1f}% self ({100 * c / self.total_s:4.1f}% cum)  {f}"
                for f, s, c in self.top[:n_top]]
        return out


def profile(fn: Callable[[], Any]) -> tuple[Any, ProfileSummary]:
    """Run ``fn`` under cProfile; its result and a summary (self time by package, top functions)."""
    prof = cProfile.Profile()
    prof.enable()
    try:
        result = fn()
    finally:
        prof.disable()
    return result, summarize(pstats.Stats(prof))


def summarize(stats: pstats.Stats) -> ProfileSummary:
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1e-12
    packages: dict[str, float] = {}
    top = []
    for (filename, line, func), (_, _, tottime, cumtime, _) in raw.items():
        pkg = _package(filename, func)
        packages[pkg] = packages.get(pkg, 0.0) + tottime
        where = func if filename == "~" else f"{func} ({_short(filename)}:{line})"
        top.append((where, tottime, cumtime))
    top.sort(key=lambda t: -t[1])
    return ProfileSummary(total, sorted(packages.items(), key=lambda kv: -kv[1]), top)


def cumulative(stats: pstats.Stats, *where: tuple[str, str]) -> float:
    """Cumulative seconds of the functions named ``(path fragment, function name)`` (first match wins per
    entry; recursion is counted once by cProfile)."""
    total = 0.0
    for (filename, _, func), (_, _, _, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        if any(part in filename and func == name for part, name in where):
            total += cumtime
    return total


def self_time_in(stats_summary: ProfileSummary, *suffixes: str) -> float:
    """Self seconds of the functions defined in files whose path ends with one of ``suffixes``."""
    return sum(s for f, s, _ in stats_summary.top if any(f"{suf}:" in f for suf in suffixes))


def _short(filename: str) -> str:
    parts = Path(filename).parts
    for anchor in ("site-packages", "vlmtrain", "benchmarks"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return "/".join(parts[i + (anchor == "site-packages"):])
    return Path(filename).name


# --- memory -----------------------------------------------------------------------------------------

def peak_rss_mb() -> float:
    """This process's peak resident set size (MiB)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# --- reports ----------------------------------------------------------------------------------------

@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline: float | None = None  # the baseline's value of the same figure, measured in the same run
    ratio: float | None = None
    target: str | None = None
    met: bool | None = None
    note: str = ""

    def text(self) -> str:
        out = f"{self.name}: {_num(self.value)} {self.unit}"
        if self.baseline is not None:
            out += f" (baseline {_num(self.baseline)} {self.unit})"
        if self.ratio is not None:
            out += f"; ratio {self.ratio:.2f}x"
        if self.target:
            out += f"; target {self.target}: {'MET' if self.met else 'MISSED'}"
        return out + (f"  [{self.note}]" if self.note else "")


def _num(value: float) -> str:
    if value == 0 or 0.01 <= abs(value) < 1e6:
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:.3g}"


@dataclass
class Report:
    """One benchmark's figures and notes; ``finish`` prints them, writes JSON and the SUMMARY line."""

    bench: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        print(figure.text(), flush=True)
        return figure

    def note(self, *lines: str) -> None:
        for line in lines:
            self.notes.append(line)
            print(line, flush=True)

    def finish(self, summary: str) -> None:
        seconds = time.perf_counter() - self.started
        RESULTS.mkdir(parents=True, exist_ok=True)
        data = {"bench": self.bench, "title": self.title, "summary": summary, "seconds": round(seconds, 1),
                "settings": self.settings, "machine": machine(), "figures": [asdict(f) for f in self.figures],
                "notes": self.notes}
        (RESULTS / f"{self.bench}.json").write_text(json.dumps(data, indent=2))
        print(f"SUMMARY {self.bench}: {summary} ({seconds:.0f} s)", flush=True)


def status(met: bool | None) -> str:
    return "met" if met else "MISSED"


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    import importlib.metadata as md

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                     else os.cpu_count()),
            "python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "datasets"):
        try:
            info[name] = md.version(name)
        except md.PackageNotFoundError:
            info[name] = "missing"
    return info


@contextmanager
def timer(sink: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        sink[key] = sink.get(key, 0.0) + time.perf_counter() - start


# --- training subprocesses --------------------------------------------------------------------------

def run_probe(args: Sequence[str], out: Path, *, timeout: float = 600, profile_to: Path | None = None
              ) -> tuple[float, dict[str, Any]]:
    """Run ``fit_probe.py args`` in a fresh interpreter; (launch time.time(), the probe's JSON).

    ``profile_to``: also write a cProfile of the training loop there. A failed run raises with its output's tail.
    """
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if profile_to is not None:
        env["VLMTRAIN_PROBE_PROFILE"] = str(profile_to)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(BENCH_DIR / "fit_probe.py"), "--out", str(out), *args]
    launched = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    (out.with_suffix(".log")).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return launched, json.loads(out.read_text())


def import_profile(*modules: str) -> tuple[float, list[tuple[str, float]]]:
    """Seconds to import ``modules`` in a fresh interpreter, and the packages that took them: the self time
    of every module ``python -X importtime`` lists, summed by top-level package."""
    import subprocess

    code = "; ".join(f"import {m}" for m in modules)
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          cwd=REPO)
    by_root: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        own, _, name = line[len("import time:"):].split("|", 2)
        if not own.strip().isdigit():  # the header line
            continue
        root = name.strip().split(".")[0]
        by_root[root] = by_root.get(root, 0.0) + int(own) / 1e6
    ranked = sorted(by_root.items(), key=lambda kv: -kv[1])
    return sum(by_root.values()), ranked
