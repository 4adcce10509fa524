"""The served catalogue: every item a version knows, its candidate vectors and serving flags.

`ServingModule` (bivrec_tf/export.py) stores each field as a variable of the same name, so a
version's catalogue can be read back from its `variables/` checkpoint (`Catalogue.read`) and
changed by `python -m bivrec_tf.catalogue` without retraining. Rows follow the vocabulary:
row r of every `[N]` / `[N, d]` array is item index r + FIRST_ITEM (rows 0 and 1 of the
vocabulary are padding and out-of-vocabulary and have no row).
"""

import dataclasses
from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from bivrec_tf.model import FIRST_ITEM

# Checkpoint keys of ServingModule's variables (attribute name -> key).
_KEY = "{}/.ATTRIBUTES/VARIABLE_VALUE"


@dataclasses.dataclass
class Catalogue:
  """What one served version ranks.

  Attributes:
    vocab: str `[V]` raw item ids by index (V = N + 2; rows 0, 1 = "[PAD]", "[OOV]").
    tables: view -> float32 `[N, d]` candidate vectors (unit-norm for cosine similarity).
    cold: bool `[N]`, the item has no trained ID embedding: its fused score is s_mm alone.
    servable: bool `[N]`, False = retired: never recommended, still read in histories.
    popularity: float32 `[N]`, share of training targets (the answer to an empty history).
    imputed: bool `[N]`, the ID vector was imputed from the MM vector (added items).
  """

  vocab: np.ndarray
  tables: Dict[str, np.ndarray]
  cold: np.ndarray
  servable: np.ndarray
  popularity: np.ndarray
  imputed: np.ndarray

  def __post_init__(self):
    self.vocab = np.asarray(self.vocab).astype(str)
    n = len(self.vocab) - FIRST_ITEM
    if n < 1:
      raise ValueError("a catalogue needs at least one item")
    self.tables = {v: np.asarray(t, np.float32) for v, t in self.tables.items()}
    for name in ("cold", "servable", "imputed"):
      setattr(self, name, np.asarray(getattr(self, name), bool))
    self.popularity = np.asarray(self.popularity, np.float32)
    shapes = {f"tables[{v}]": t.shape[0] for v, t in self.tables.items()}
    shapes.update({f: getattr(self, f).shape[0] for f in ("cold", "servable", "popularity")})
    shapes["imputed"] = self.imputed.shape[0]
    wrong = {k: s for k, s in shapes.items() if s != n}
    if wrong:
      raise ValueError(f"catalogue rows disagree with its {n} items: {wrong}")
    if not self.servable.any():
      raise ValueError("a catalogue needs at least one servable (not retired) item")

  @property
  def num_items(self) -> int:
    return len(self.vocab) - FIRST_ITEM

  def rows(self, ids: Sequence[str]) -> np.ndarray:
    """int `[n]` row of each raw id (-1 for ids the catalogue does not know)."""
    index = {x: r for r, x in enumerate(self.vocab[FIRST_ITEM:])}
    return np.array([index.get(str(x), -1) for x in ids], np.int64)

  @classmethod
  def from_model(cls, model, vocab: np.ndarray) -> "Catalogue":
    """The catalogue of a freshly exported model: its item tables, its cold flags (items never
    seen in training), its training popularity; nothing retired or imputed."""
    n = len(vocab) - FIRST_ITEM
    return cls(
      vocab=vocab,
      tables={v: model.item_table(v).numpy()[FIRST_ITEM:] for v in model.view_names},
      cold=np.asarray(model.cold)[FIRST_ITEM:],
      servable=np.ones(n, bool),
      popularity=np.asarray(model.popularity, np.float32)[FIRST_ITEM:],
      imputed=np.zeros(n, bool),
    )

  @classmethod
  def read(cls, variables: Path, views: Sequence[str]) -> "Catalogue":
    """The catalogue stored in a version's checkpoint (`<version>/variables/variables`).

    Versions exported before the catalogue had `servable`, `popularity` and `imputed` are read
    as: nothing retired, nothing imputed, popularity known for the exported top-k popular items
    only (0 elsewhere; it only orders the answer to an empty history)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    reader = tf.train.load_checkpoint(str(variables))
    keys = reader.get_variable_to_shape_map()

    def get(name):
      key = _KEY.format(name)
      return reader.get_tensor(key) if key in keys else None

    vocab = np.array([x.decode() for x in get("vocab")])
    n = len(vocab) - FIRST_ITEM
    popularity = get("popularity")
    if popularity is None:
      popularity = np.zeros(n, np.float32)
      popularity[get("popular_ids") - FIRST_ITEM] = get("popular_scores")
    servable, imputed = get("servable"), get("imputed")
    return cls(
      vocab=vocab,
      # stored in half precision when the export asked for it: exact in float32
      tables={v: np.asarray(get(f"tables/{v}"), np.float32) for v in views},
      cold=get("cold"),
      servable=np.ones(n, bool) if servable is None else servable,
      popularity=popularity,
      imputed=np.zeros(n, bool) if imputed is None else imputed,
    )
