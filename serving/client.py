"""A small client of TF Serving's REST API for BivRec exports (works against the local server and
real `tensorflow_model_server` alike).

    python -m serving.client --url http://localhost:8501 --model bivrec --history i17 i42 i5 --k 10

prints the top-k recommendations for one history (most recent item last). In Python:

    client = Client("http://localhost:8501", "bivrec")
    client.recommend([["i17", "i42", "i5"], ["i3"]], k=5)   # [[(item_id, score), ...], ...]

Histories are left-padded with "" to a common length (`pad_to`, default the longest one) so the
request is one dense `[B, L]` string tensor; `k` above the exported top-k is truncated to it.
Errors come back as `RestError(status, message)` carrying TF Serving's `{"error": ...}` text.
"""

import argparse
import http.client
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import List, Optional, Sequence, Tuple


class RestError(Exception):
  """A non-200 answer: HTTP status and TF Serving's error message."""

  def __init__(self, status: int, message: str):
    super().__init__(f"HTTP {status}: {message}")
    self.status, self.message = status, message


def pad_histories(
  histories: Sequence[Sequence[str]], pad_to: Optional[int] = None
) -> List[List[str]]:
  """Left-pads (right-aligned, most recent last) with "" to one length; keeps the last `pad_to`."""
  width = max([len(h) for h in histories] + [1])
  if pad_to:
    width = pad_to
  rows = []
  for h in histories:
    h = [str(x) for x in h][-width:]
    rows.append([""] * (width - len(h)) + h)
  return rows


class Client:
  """REST client for one model (optionally a fixed version or label)."""

  def __init__(
    self,
    url: str,
    model: str,
    version: Optional[int] = None,
    label: Optional[str] = None,
    timeout: float = 10.0,
  ):
    if version is not None and label is not None:
      raise ValueError("give a version or a label, not both")
    if not model:
      raise ValueError("give a model name")
    # Names and labels are percent-encoded (TF Serving decodes them with curl_easy_unescape):
    # "/", ":", spaces or non-ASCII in a name cannot break the path.
    self.base = url.rstrip("/") + "/v1/models/" + urllib.parse.quote(model, safe="")
    if version is not None:
      self.base += f"/versions/{int(version)}"
    elif label is not None:
      self.base += "/labels/" + urllib.parse.quote(label, safe="")
    self.timeout = timeout

  def _call(self, path: str, body: Optional[dict] = None) -> dict:
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(
      self.base + path,
      data=data,
      method="GET" if body is None else "POST",
      headers={"Content-Type": "application/json"},
    )
    try:
      with urllib.request.urlopen(request, timeout=self.timeout) as response:
        return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
      text = err.read().decode("utf-8", errors="replace")
      try:
        message = json.loads(text)["error"]
      except (ValueError, KeyError, TypeError):
        message = text or err.reason
      raise RestError(err.code, message) from None

  def status(self) -> dict:
    return self._call("")

  def metadata(self) -> dict:
    return self._call("/metadata")

  def predict(self, instances=None, inputs=None, signature_name: Optional[str] = None) -> dict:
    """Raw :predict with row `instances` or columnar `inputs`."""
    if (instances is None) == (inputs is None):
      raise ValueError("give exactly one of instances or inputs")
    body = {"instances": instances} if instances is not None else {"inputs": inputs}
    if signature_name:
      body["signature_name"] = signature_name
    return self._call(":predict", body)

  def recommend(
    self, histories: Sequence[Sequence[str]], k: int = 10, pad_to: Optional[int] = None
  ) -> List[List[Tuple[str, float]]]:
    """Top-k (item id, score) per history, best first (k truncated to the exported top-k)."""
    if k < 1:
      raise ValueError("k must be >= 1")
    out = self.predict(inputs={"history": pad_histories(histories, pad_to)})["outputs"]
    return [list(zip(ids, scores))[:k] for ids, scores in zip(out["item_ids"], out["scores"])]


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m serving.client",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--url", default="http://localhost:8501")
  parser.add_argument("--model", default="bivrec")
  group = parser.add_mutually_exclusive_group()
  group.add_argument("--version", type=int)
  group.add_argument("--label")
  parser.add_argument(
    "--history",
    nargs="*",
    default=[],
    metavar="ID",
    help="item ids, oldest first (unknown ids are ignored by the model)",
  )
  parser.add_argument("--k", type=int, default=10, help="at most the exported top-k")
  parser.add_argument(
    "--pad-to",
    type=int,
    default=None,
    help="left-pad the history to this length (needed with server batching)",
  )
  parser.add_argument("--json", action="store_true", help="print the raw JSON answer")
  parser.add_argument("--timeout", type=float, default=10.0)
  args = parser.parse_args(argv)
  if args.k < 1:
    parser.error("--k must be >= 1")
  try:
    client = Client(args.url, args.model, args.version, args.label, args.timeout)
    if args.json:
      print(
        json.dumps(
          client.predict(inputs={"history": pad_histories([args.history], args.pad_to)}), indent=2
        )
      )
      return 0
    recs = client.recommend([args.history], args.k, args.pad_to)[0]
  except RestError as err:
    print(f"error: {err}", file=sys.stderr)
    return 1
  except (OSError, http.client.HTTPException, ValueError) as err:
    print(f"error: cannot reach {args.url}: {err}", file=sys.stderr)
    return 1
  if len(recs) < args.k:
    print(
      f"note: the export returns {len(recs)} items per request; showing {len(recs)}",
      file=sys.stderr,
    )
  print(f"{'rank':>4}  {'item_id':<24} score")
  for rank, (item, score) in enumerate(recs, 1):
    print(f"{rank:>4}  {item:<24} {score:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
