"""`python -m input_pipelines.public.foursquare_tsmc`: Foursquare NYC + Tokyo check-ins (TSMC 2014)
-> prepared dataset directory with long histories and item text.

Source: Dingqi Yang, Daqing Zhang, Vincent W. Zheng, Zhiyong Yu, "Modeling User Activity
Preference by Leveraging User Spatial Temporal Characteristics in LBSNs", IEEE Trans. SMC:
Systems 45(1), 2015. Dataset page: https://sites.google.com/site/yangdingqi/home/foursquare-dataset
(archive `dataset_tsmc2014.zip`; the page asks users to cite the paper; research use). Raw files
(tab-separated, no header, 8 columns: user id, venue id, venue category id, venue category
name, latitude, longitude, timezone offset in minutes, UTC time such as
`Tue Apr 03 18:00:09 +0000 2012`):

  dataset_TSMC2014_NYC.txt   227,428 check-ins, 1,083 users, 38,333 venues
  dataset_TSMC2014_TKY.txt   573,703 check-ins, 2,293 users, 61,858 venues

Usage (RAW is the unzipped `dataset_tsmc2014/` folder):

  python -m input_pipelines.public.foursquare_tsmc --raw RAW --out data_cache/foursquare-tsmc
  python -m input_pipelines.describe data_cache/foursquare-tsmc

What it does (every step deterministic; `--seed` fixes the user sample):

1. Reads both cities (`--cities NYC,TKY`). Users are namespaced by city (`NYC:470`), since the
   two files number their users independently; venue ids are global Foursquare ids. Bytes that
   are not UTF-8 (a few category names such as "Caf\\xe9") are read as Latin-1.
2. Per user, check-ins are sorted by time and an immediate repeat of the same venue is dropped
   (repeat visits on other occasions stay: revisiting is part of the behaviour).
3. Venues: keep those with at least `--min-item-checkins` (10) check-ins, then at most
   `--max-items` (12,000) of them, the most visited first (ties by venue id).
4. Users: keep those with at least `--min-user-checkins` (30) check-ins on the kept venues; a
   seeded sample of `--max-users` (3,000) of them if there are more; each user's sequence is cut
   to its most recent `--max-user-len` (120) check-ins (this bounds the number of training
   prefixes, which would otherwise reach 600k).
5. `input_pipelines.prepare --format csv --dedup consecutive --min-user-interactions 30
   --min-item-interactions 5 --protocol loo` on the result (iterated k-core), with the item text
   `"<venue category>, <city>"` encoded into modality `text` (`--text-encoder`, default `auto`:
   MiniLM when requirements-text.txt is installed, else hashing) and, unless `--no-geo`, a
   modality `geo`: fixed random Fourier features of the venue's (latitude, longitude), which
   tell apart venues of one category that the text cannot.

The intermediate tables (interactions.csv, items.csv, geo.npy + geo.ids.txt) are written to a
temporary directory, or kept in `--keep-tables DIR`.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import argparse
import csv
import dataclasses
import datetime
import pathlib
import sys
from typing import Iterable, Sequence

import numpy as np

from input_pipelines.errors import DataError, run_cli
from input_pipelines.public.common import check_out, prepare_from_tables, record_public_source

CITIES = {
  "NYC": ("dataset_TSMC2014_NYC.txt", "New York City"),
  "TKY": ("dataset_TSMC2014_TKY.txt", "Tokyo"),
}
NUM_COLUMNS = 8
TIME_FORMAT = "%a %b %d %H:%M:%S %z %Y"
SOURCE_URL = "https://sites.google.com/site/yangdingqi/home/foursquare-dataset"


@dataclasses.dataclass
class Checkins:
  """Parsed check-ins of one or more cities (one entry per row, file order)."""

  users: list
  venues: list
  times: np.ndarray  # float64 seconds since the epoch (UTC)
  category: dict  # venue -> category name
  city: dict  # venue -> city code
  lat: dict  # venue -> [sum, count] of latitudes / longitudes
  lon: dict

  def __len__(self) -> int:
    return len(self.users)


def parse_time(text: str) -> float:
  """`Tue Apr 03 18:00:09 +0000 2012` -> seconds since the epoch."""
  return datetime.datetime.strptime(text.strip(), TIME_FORMAT).timestamp()


def _decode(raw: bytes) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError:
    return raw.decode("latin-1")


def read_checkins(
  lines: Iterable[bytes], city: str, file="<input>", into: Checkins | None = None
) -> Checkins:
  """Parses TSMC 2014 rows (bytes lines, tab-separated, no header) of one city.

  Raises DataError naming the file, line and field of the first malformed row.
  """
  out = into or Checkins([], [], np.zeros(0), {}, {}, {}, {})
  users, venues, times = [], [], []
  for n, raw in enumerate(lines, start=1):
    line = _decode(raw).rstrip("\r\n")
    if not line.strip():
      continue
    parts = line.split("\t")
    if len(parts) != NUM_COLUMNS:
      raise DataError(
        file, f"expected {NUM_COLUMNS} tab-separated fields, got {len(parts)}", line=n
      )
    user, venue, _, category, lat, lon, _, utc = (p.strip() for p in parts)
    if not user:
      raise DataError(file, "empty user id", line=n, field="user")
    if not venue:
      raise DataError(file, "empty venue id", line=n, field="venue")
    try:
      t = parse_time(utc)
    except ValueError:
      raise DataError(
        file, f"time {utc!r} is not like 'Tue Apr 03 18:00:09 +0000 2012'", line=n, field="utc_time"
      ) from None
    try:
      la, lo = float(lat), float(lon)
    except ValueError:
      raise DataError(
        file, f"latitude/longitude {lat!r}, {lon!r} are not numbers", line=n, field="latitude"
      ) from None
    users.append(f"{city}:{user}")
    venues.append(venue)
    times.append(t)
    out.category.setdefault(venue, category)
    out.city.setdefault(venue, city)
    s = out.lat.setdefault(venue, [0.0, 0])
    s[0] += la
    s[1] += 1
    s = out.lon.setdefault(venue, [0.0, 0])
    s[0] += lo
    s[1] += 1
  out.users += users
  out.venues += venues
  out.times = np.concatenate([out.times, np.asarray(times, np.float64)])
  return out


def read_raw(raw_dir, cities: Sequence[str]) -> Checkins:
  raw_dir = pathlib.Path(raw_dir)
  data = None
  for city in cities:
    if city not in CITIES:
      raise ValueError(f"unknown city {city!r} (known: {', '.join(CITIES)})")
    path = raw_dir / CITIES[city][0]
    if not path.is_file():
      raise FileNotFoundError(
        f"{path} not found: --raw must be the unzipped dataset_tsmc2014/ folder ({SOURCE_URL})"
      )
    with open(path, "rb") as f:
      data = read_checkins(f, city, path, into=data)
  return data


def user_sequences(data: Checkins) -> dict:
  """user -> [(time, venue)] sorted by time (ties keep file order), immediate repeats of the
  same venue dropped."""
  order = np.argsort(data.times, kind="stable")
  seqs: dict = {}
  for i in order:
    seq = seqs.setdefault(data.users[i], [])
    if seq and seq[-1][1] == data.venues[i]:
      continue
    seq.append((float(data.times[i]), data.venues[i]))
  return seqs


@dataclasses.dataclass
class Selection:
  seqs: dict  # user -> [(time, venue)], filtered
  venues: list  # kept venues, most visited first
  info: dict  # counts at every step (recorded in dataset.json)


def select(
  seqs: dict,
  min_item_checkins: int = 10,
  max_items: int = 12000,
  min_user_checkins: int = 30,
  max_users: int = 3000,
  max_user_len: int | None = 120,
  seed: int = 0,
) -> Selection:
  """Steps 3-4 of the module docstring: venue filter and cap, user filter and seeded sample,
  most recent `max_user_len` check-ins per user."""
  info = {"users_read": len(seqs), "checkins_after_repeat_drop": sum(map(len, seqs.values()))}
  counts: dict = {}
  for seq in seqs.values():
    for _, v in seq:
      counts[v] = counts.get(v, 0) + 1
  info["venues_read"] = len(counts)
  ranked = sorted(
    (v for v, c in counts.items() if c >= min_item_checkins), key=lambda v: (-counts[v], v)
  )
  info["venues_with_min_checkins"] = len(ranked)
  kept = ranked[:max_items] if max_items else ranked
  keep = set(kept)
  filtered = {}
  for u, seq in seqs.items():
    s = [(t, v) for t, v in seq if v in keep]
    # Dropping venues can make a venue follow itself: drop that immediate repeat too.
    s = [x for k, x in enumerate(s) if k == 0 or x[1] != s[k - 1][1]]
    if len(s) >= min_user_checkins:
      filtered[u] = s
  info["users_with_min_checkins"] = len(filtered)
  users = sorted(filtered)
  if max_users and len(users) > max_users:
    rng = np.random.default_rng(seed)
    users = sorted(rng.choice(users, size=max_users, replace=False).tolist())
  out = {u: (filtered[u][-max_user_len:] if max_user_len else filtered[u]) for u in users}
  info.update(
    users_sampled=len(out),
    checkins_selected=sum(map(len, out.values())),
    params=dict(
      min_item_checkins=min_item_checkins,
      max_items=max_items,
      min_user_checkins=min_user_checkins,
      max_users=max_users,
      max_user_len=max_user_len,
      seed=seed,
    ),
  )
  return Selection(out, kept, info)


def venue_text(data: Checkins, venue: str) -> str:
  """The item text: `<venue category>, <city>`."""
  return f"{data.category[venue]}, {CITIES[data.city[venue]][1]}"


def geo_features(data: Checkins, venues: Sequence[str], dim: int = 64, seed: int = 0) -> np.ndarray:
  """Random Fourier features [len(venues), dim] of each venue's mean (lat, lon), centred per
  city, at length scales from ~0.3 km to ~10 km (fixed seed: deterministic)."""
  lat = np.array([data.lat[v][0] / data.lat[v][1] for v in venues])
  lon = np.array([data.lon[v][0] / data.lon[v][1] for v in venues])
  city = np.array([data.city[v] for v in venues])
  # Kilometres from the city's mean position (equirectangular, fine at city scale).
  xy = np.zeros((len(venues), 2))
  for c in np.unique(city):
    m = city == c
    lat0, lon0 = lat[m].mean(), lon[m].mean()
    xy[m, 0] = (lat[m] - lat0) * 111.0
    xy[m, 1] = (lon[m] - lon0) * 111.0 * np.cos(np.radians(lat0))
  rng = np.random.default_rng(seed)
  half = dim // 2
  scales = np.geomspace(0.3, 10.0, half)  # km
  w = rng.normal(size=(2, half)) / scales
  b = rng.uniform(0, 2 * np.pi, half)
  z = xy @ w + b
  return np.concatenate([np.cos(z), np.sin(z)], axis=1).astype(np.float32)


def write_tables(
  data: Checkins, sel: Selection, out_dir: pathlib.Path, geo: bool, geo_dim: int
) -> dict:
  """interactions.csv (user,item,timestamp), items.csv (item_id,text) and geo.npy +
  geo.ids.txt in `out_dir`; returns their paths."""
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {"interactions": out_dir / "interactions.csv", "items": out_dir / "items.csv"}
  used = sorted({v for s in sel.seqs.values() for _, v in s})
  with open(paths["interactions"], "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f)
    w.writerow(["user", "item", "timestamp"])
    for u in sorted(sel.seqs):
      for t, v in sel.seqs[u]:
        w.writerow([u, v, f"{t:.0f}"])
  with open(paths["items"], "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f)
    w.writerow(["item_id", "text"])
    for v in used:
      w.writerow([v, venue_text(data, v)])
  if geo:
    paths["geo"] = out_dir / "geo.npy"
    paths["geo_ids"] = out_dir / "geo.ids.txt"
    np.save(paths["geo"], geo_features(data, used, geo_dim))
    paths["geo_ids"].write_text("".join(f"{v}\n" for v in used), encoding="utf-8")
  return paths


def prepare_args(paths: dict, out, args) -> list:
  argv = [
    "--format",
    "csv",
    "--interactions",
    str(paths["interactions"]),
    "--user-column",
    "user",
    "--item-column",
    "item",
    "--time-column",
    "timestamp",
    "--dedup",
    "consecutive",
    "--min-user-interactions",
    str(args.min_user_checkins),
    "--min-item-interactions",
    str(args.k_core_items),
    "--protocol",
    "loo",
    "--max-history",
    str(args.max_history),
    "--seed",
    str(args.seed),
    "--item-text",
    str(paths["items"]),
    "--text-id-column",
    "item_id",
    "--text-columns",
    "text",
    "--text-encoder",
    args.text_encoder,
    "--out",
    str(out),
  ]
  if "geo" in paths:
    argv += ["--features", f"geo={paths['geo']}:{paths['geo_ids']}"]
  if args.overwrite:
    argv.append("--overwrite")
  if args.quiet:
    argv.append("--quiet")
  return argv


def run(args) -> pathlib.Path:
  out = check_out(args.out, args.overwrite)
  cities = [c.strip().upper() for c in args.cities.split(",") if c.strip()]
  data = read_raw(args.raw, cities)
  sel = select(
    user_sequences(data),
    args.min_item_checkins,
    args.max_items,
    args.min_user_checkins,
    args.max_users,
    args.max_user_len,
    args.seed,
  )
  if not args.quiet:
    print(
      "selection: " + ", ".join(f"{k} {v:,}" for k, v in sel.info.items() if isinstance(v, int)),
      file=sys.stderr,
    )
  path = prepare_from_tables(
    lambda d: write_tables(data, sel, d, not args.no_geo, args.geo_dim),
    lambda paths: prepare_args(paths, out, args),
    args.keep_tables,
    ".foursquare-tables-",
  )
  record_public_source(
    path,
    "input_pipelines.public.foursquare_tsmc",
    {
      "name": "Foursquare check-ins NYC + Tokyo (TSMC 2014)",
      "url": SOURCE_URL,
      "citation": "Yang, Zhang, Zheng, Yu. IEEE Trans. SMC: Systems 45(1):129-142, 2015",
      "licence": "research use with citation of the paper (dataset page); not redistributed",
      "cities": cities,
      "raw_dir": str(args.raw),
      "selection": sel.info,
      "item_text": "'<venue category>, <city>'",
      "geo": None if args.no_geo else f"random Fourier features of (lat, lon), dim {args.geo_dim}",
    },
  )
  return path


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m input_pipelines.public.foursquare_tsmc",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--raw", required=True, help="the unzipped dataset_tsmc2014/ folder")
  p.add_argument("--out", required=True, help="prepared dataset directory to write")
  p.add_argument("--cities", default="NYC,TKY")
  p.add_argument("--min-item-checkins", type=int, default=10)
  p.add_argument("--max-items", type=int, default=12000)
  p.add_argument("--min-user-checkins", type=int, default=30)
  p.add_argument("--max-users", type=int, default=3000)
  p.add_argument(
    "--max-user-len",
    type=int,
    default=120,
    help="keep each user's most recent N check-ins (0 = all)",
  )
  p.add_argument(
    "--k-core-items",
    type=int,
    default=5,
    help="prepare's --min-item-interactions (iterated with the user minimum)",
  )
  p.add_argument("--max-history", type=int, default=200)
  p.add_argument("--seed", type=int, default=0, help="user sample seed")
  p.add_argument("--text-encoder", default="auto", choices=("auto", "minilm", "hashing"))
  p.add_argument("--no-geo", action="store_true", help="no 'geo' modality")
  p.add_argument("--geo-dim", type=int, default=64)
  p.add_argument("--keep-tables", metavar="DIR", help="keep the intermediate tables here")
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--quiet", action="store_true")
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  if args.max_user_len is not None and args.max_user_len <= 0:
    args.max_user_len = None
  path = run(args)
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.exit(run_cli(main))
