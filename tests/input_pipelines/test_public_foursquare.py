"""Foursquare TSMC 2014 preparation (input_pipelines.public.foursquare_tsmc) on inline fixtures:
the tests never need the real data."""

import datetime
import json

import numpy as np
import pytest

from input_pipelines.errors import DataError
from input_pipelines.public import foursquare_tsmc as fsq

# Rows as in dataset_TSMC2014_*.txt: user, venue, category id, category name, lat, lon,
# timezone offset (minutes), UTC time. Category names are Latin-1 in the original files.
ROWS = [
  b"470\tv_art\t4bf58dd8d48988d127951735\tArts & Crafts Store\t40.7198\t-74.0026\t-240\t"
  b"Tue Apr 03 18:00:09 +0000 2012\n",
  b"979\tv_cafe\t4bf58dd8d48988d1e0931735\tCaf\xe9\t40.6064\t-74.0445\t-240\t"
  b"Tue Apr 03 18:00:25 +0000 2012\n",
  b"470\tv_cafe\t4bf58dd8d48988d1e0931735\tCaf\xe9\t40.6066\t-74.0447\t-240\t"
  b"Tue Apr 03 17:00:00 +0000 2012\n",
  b"470\tv_cafe\t4bf58dd8d48988d1e0931735\tCaf\xe9\t40.6064\t-74.0445\t-240\t"
  b"Tue Apr 03 19:00:00 +0000 2012\n",
  b"470\tv_cafe\t4bf58dd8d48988d1e0931735\tCaf\xe9\t40.6064\t-74.0445\t-240\t"
  b"Tue Apr 03 20:00:00 +0000 2012\n",
  b"470\tv_art\t4bf58dd8d48988d127951735\tArts & Crafts Store\t40.7198\t-74.0026\t-240\t"
  b"Wed Apr 04 09:30:00 +0000 2012\n",
]


def _seconds(text):
  return (
    datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    .replace(tzinfo=datetime.timezone.utc)
    .timestamp()
  )


def test_rows_are_parsed_with_city_namespaced_users_and_utc_times():
  data = fsq.read_checkins(ROWS, "NYC")
  assert data.users[:2] == ["NYC:470", "NYC:979"]
  assert data.venues[:2] == ["v_art", "v_cafe"]
  assert data.times[0] == _seconds("2012-04-03 18:00:09")
  assert data.category["v_cafe"] == "Caf\u00e9"  # Latin-1 byte read as such
  assert data.city["v_art"] == "NYC"
  assert data.lat["v_cafe"][1] == 4 and data.lat["v_cafe"][0] / 4 == pytest.approx(40.60645)
  assert fsq.venue_text(data, "v_cafe") == "Caf\u00e9, New York City"
  tky = fsq.read_checkins([ROWS[0]], "TKY", into=data)
  assert tky.users[-1] == "TKY:470" and len(tky) == len(ROWS) + 1  # same id, other city


@pytest.mark.parametrize(
  "row, field, message",
  [
    (b"470\tv\tc\tBar\t40.7\t-74.0\t-240\n", None, "expected 8 tab-separated fields, got 7"),
    (b"470\tv\tc\tBar\t40.7\t-74.0\t-240\tyesterday\n", "utc_time", "is not like"),
    (
      b"470\tv\tc\tBar\tnorth\t-74.0\t-240\tTue Apr 03 18:00:09 +0000 2012\n",
      "latitude",
      "not numbers",
    ),
    (b"\tv\tc\tBar\t40.7\t-74.0\t-240\tTue Apr 03 18:00:09 +0000 2012\n", "user", "empty user"),
  ],
)
def test_a_malformed_row_names_file_line_and_field(row, field, message):
  with pytest.raises(DataError, match=message) as err:
    fsq.read_checkins([ROWS[0], row], "NYC", file="x.txt")
  assert err.value.file == "x.txt" and err.value.line == 2 and err.value.field == field


def test_missing_raw_file_says_what_to_download(tmp_path):
  with pytest.raises(FileNotFoundError, match="dataset_tsmc2014"):
    fsq.read_raw(tmp_path, ["NYC"])
  with pytest.raises(ValueError, match="unknown city"):
    fsq.read_raw(tmp_path, ["PAR"])


def test_sequences_are_chronological_and_drop_only_immediate_repeats():
  seqs = fsq.user_sequences(fsq.read_checkins(ROWS, "NYC"))
  # 470: cafe 17:00, art 18:00, cafe 19:00, cafe 20:00 (immediate repeat), art next day.
  assert [v for _, v in seqs["NYC:470"]] == ["v_cafe", "v_art", "v_cafe", "v_art"]
  assert [t for t, _ in seqs["NYC:470"]] == sorted(t for t, _ in seqs["NYC:470"])
  assert [v for _, v in seqs["NYC:979"]] == ["v_cafe"]


def _toy_sequences(num_users=50, num_venues=30, length=40, seed=0):
  """user -> [(time, venue)] without immediate repeats (as user_sequences returns them)."""
  rng = np.random.default_rng(seed)
  out = {}
  for u in range(num_users):
    seq = []
    for t, v in enumerate(rng.zipf(1.3, size=length + u % 7) % num_venues):
      if not seq or seq[-1][1] != f"v{int(v):02d}":
        seq.append((float(t), f"v{int(v):02d}"))
    out[f"NYC:{u}"] = seq
  return out


def test_venue_filter_keeps_the_most_visited_and_breaks_ties_by_id():
  seqs = {
    "a": [(0.0, "x"), (1.0, "y"), (2.0, "z"), (3.0, "x")],
    "b": [(0.0, "y"), (1.0, "z"), (2.0, "w")],
  }
  sel = fsq.select(
    seqs, min_item_checkins=2, max_items=2, min_user_checkins=1, max_users=0, max_user_len=None
  )
  # x, y, z have 2 check-ins each, w has 1: the cap keeps x and y (ties by id).
  assert sel.venues == ["x", "y"]
  assert {u: [v for _, v in s] for u, s in sel.seqs.items()} == {"a": ["x", "y", "x"], "b": ["y"]}
  assert sel.info["venues_read"] == 4 and sel.info["venues_with_min_checkins"] == 3


def test_removing_a_venue_does_not_leave_an_immediate_repeat():
  seqs = {"a": [(0.0, "x"), (1.0, "gone"), (2.0, "x"), (3.0, "y")], "b": [(0.0, "y")]}
  sel = fsq.select(
    seqs, min_item_checkins=2, max_items=0, min_user_checkins=1, max_users=0, max_user_len=None
  )
  assert [v for _, v in sel.seqs["a"]] == ["x", "y"]  # x gone x y -> x x y -> x y


def test_user_sample_is_seeded_and_keeps_the_most_recent_checkins():
  seqs = _toy_sequences()
  a = fsq.select(
    seqs,
    min_item_checkins=1,
    max_items=0,
    min_user_checkins=5,
    max_users=20,
    max_user_len=10,
    seed=1,
  )
  b = fsq.select(
    seqs,
    min_item_checkins=1,
    max_items=0,
    min_user_checkins=5,
    max_users=20,
    max_user_len=10,
    seed=1,
  )
  c = fsq.select(
    seqs,
    min_item_checkins=1,
    max_items=0,
    min_user_checkins=5,
    max_users=20,
    max_user_len=10,
    seed=2,
  )
  assert a.seqs == b.seqs and set(a.seqs) != set(c.seqs) and len(a.seqs) == 20
  for u, s in a.seqs.items():
    assert len(s) <= 10 and s[-1][0] == max(t for t, _ in seqs[u])  # ends at the latest
  assert a.info["users_sampled"] == 20 and a.info["params"]["seed"] == 1


def test_users_below_the_minimum_are_dropped():
  seqs = {"short": [(0.0, "x"), (1.0, "y")], "long": [(float(t), "xy"[t % 2]) for t in range(6)]}
  sel = fsq.select(
    seqs, min_item_checkins=1, max_items=0, min_user_checkins=3, max_users=0, max_user_len=None
  )
  assert list(sel.seqs) == ["long"]


def test_geo_features_are_deterministic_and_closer_for_nearby_venues():
  data = fsq.read_checkins(ROWS, "NYC")
  far = [
    b"1\tv_far\tc\tBar\t40.85\t-73.85\t-240\tTue Apr 03 18:00:09 +0000 2012\n",
    b"1\tv_near\tc\tBar\t40.6070\t-74.0450\t-240\tTue Apr 03 18:00:09 +0000 2012\n",
  ]
  data = fsq.read_checkins(far, "NYC", into=data)
  venues = ["v_cafe", "v_near", "v_far", "v_art"]
  g = fsq.geo_features(data, venues, dim=32)
  assert g.shape == (4, 32) and np.isfinite(g).all()
  np.testing.assert_array_equal(g, fsq.geo_features(data, venues, dim=32))
  d = lambda i, j: float(np.linalg.norm(g[i] - g[j]))  # noqa: E731
  assert d(0, 1) < d(0, 2)


def _fake_raw(directory, users=(30, 40), venues=25, seed=0):
  rng = np.random.default_rng(seed)
  start = datetime.datetime(2012, 4, 3, tzinfo=datetime.timezone.utc).timestamp()
  for city, n_users in zip(("NYC", "TKY"), users):
    lines = []
    for u in range(1, n_users + 1):
      t = start
      for _ in range(int(rng.integers(15, 40))):
        t += float(rng.integers(600, 86400))
        v = int(rng.zipf(1.4)) % venues
        stamp = datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
          "%a %b %d %H:%M:%S +0000 %Y"
        )
        lines.append(
          f"{u}\t{city}{v:03d}\tcat{v % 5}\tCategory {v % 5}\t"
          f"{35 + v / 100:.4f}\t{139 + v / 100:.4f}\t540\t{stamp}\n"
        )
    (directory / fsq.CITIES[city][0]).write_text("".join(lines), encoding="latin-1")


def test_end_to_end_writes_a_prepared_directory_with_text_and_geo(tmp_path):
  raw = tmp_path / "raw"
  raw.mkdir()
  _fake_raw(raw)
  out = tmp_path / "fsq"
  assert (
    fsq.main(
      [
        "--raw",
        str(raw),
        "--out",
        str(out),
        "--min-item-checkins",
        "2",
        "--min-user-checkins",
        "8",
        "--max-users",
        "50",
        "--k-core-items",
        "2",
        "--text-encoder",
        "hashing",
        "--quiet",
      ]
    )
    == 0
  )
  meta = json.loads((out / "dataset.json").read_text())
  assert meta["source"] == "input_pipelines.public.foursquare_tsmc"
  assert meta["protocol"] == "loo" and set(meta["modalities"]) == {"text", "geo"}
  assert meta["public_source"]["selection"]["users_sampled"] == 50
  assert meta["statistics"]["num_users"] <= 50
  assert meta["modalities"]["text"]["num_present"] == meta["num_items"]
  vocab = (out / "item_vocab.txt").read_text().splitlines()[2:]
  assert all(v[:3] in ("NYC", "TKY") for v in vocab)
  with pytest.raises(FileExistsError):
    fsq.main(["--raw", str(raw), "--out", str(out), "--quiet"])
