"""Compiled forest inference: the fitted pipeline's trees as flat arrays, walked by a JIT kernel.

ONNX Runtime and scikit-learn both walk each tree node by node with a branch per split; for a
forest of a few hundred shallow trees most of those branches are mispredicted, which is what
a row costs (about 12 µs for 200 trees of depth 8). Here every tree is laid out as a
*complete* binary tree of the forest's depth, so a walk is ``depth`` branch-free steps::

    node = 2 * node + 1 + (x[feature[node]] > threshold[node])

A leaf shallower than the full depth is copied to every leaf below it (the padding splits
never matter), and the kernel interleaves several rows per tree so their loads overlap. The
kernel is compiled with numba at load time and releases the GIL.

The same fitted objects are used, not re-trained or approximated: preprocessing is evaluated
from the fitted ``SimpleImputer`` / ``StandardScaler`` / ``OneHotEncoder`` parameters with the
operations scikit-learn applies, and thresholds are rounded *down* to float32 exactly as
scikit-learn compares a float32 feature with a float64 threshold, so the answers equal the
pipeline's up to floating-point summation order (the serving layer checks this at load).

Only what the project trains is supported (a binary ``RandomForestClassifier`` or
``ExtraTreesClassifier`` of bounded depth behind the imputer/scaler/one-hot
``ColumnTransformer`` of ``churn.pipeline``); anything else raises ``UnsupportedModel`` and
the caller serves ONNX or sklearn instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import chain, repeat
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from churn.data import PreparedColumns
from churn.inference import Predictor, frame_to_columns
from churn.schema import FeatureSchema

# A complete layout has 2**depth leaves per tree: bound the depth and the total size.
MAX_DEPTH = 14
MAX_LEAVES = 1 << 22  # trees × 2**depth: 32 MiB of leaf values
ROWS_PER_STEP = 8  # rows walked together through one tree (their loads overlap)


class UnsupportedModel(ValueError):
    """The pipeline has a step or a forest shape the compiled layout does not cover."""


# ---------------------------------------------------------------------------- the forest


@dataclass(frozen=True)
class PackedForest:
    """Complete-layout trees: node ``i`` has children ``2i+1`` (x <= t) and ``2i+2``."""

    features: np.ndarray  # (trees, 2**depth - 1) uint8 (wider only for > 256 features)
    thresholds: np.ndarray  # (trees, 2**depth - 1) float32, rounded down from float64
    leaves: np.ndarray  # (trees, 2**depth) float64: the tree's P(positive class)
    depth: int
    n_features: int

    @property
    def trees(self) -> int:
        return int(self.features.shape[0])

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Mean positive-class probability over the trees, one per row of ``matrix``."""
        if matrix.ndim != 2 or matrix.shape[1] != self.n_features:
            raise ValueError(
                f"expected a (rows, {self.n_features}) matrix, got shape {matrix.shape}"
            )
        x = np.ascontiguousarray(matrix, dtype=np.float32)
        total = _walk(x, self.features, self.thresholds, self.leaves, self.depth)
        return total / self.trees


def float32_at_most(values: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64: for a float32 x, ``x <= t`` iff ``x <= result``."""
    rounded = np.asarray(values, dtype=np.float64).astype(np.float32)
    over = rounded.astype(np.float64) > values
    rounded[over] = np.nextafter(rounded[over], np.float32(-np.inf))
    return rounded


def pack_forest(forest: Any) -> PackedForest:
    """The fitted binary forest classifier as complete-layout arrays."""
    if not isinstance(forest, RandomForestClassifier | ExtraTreesClassifier):
        raise UnsupportedModel(f"{type(forest).__name__} is not a random forest")
    if getattr(forest, "n_outputs_", 1) != 1 or len(forest.classes_) != 2:
        raise UnsupportedModel("only single-output binary forests are compiled")
    trees = [estimator.tree_ for estimator in forest.estimators_]
    depth = max(max(int(tree.max_depth) for tree in trees), 1)
    if depth > MAX_DEPTH or len(trees) << depth > MAX_LEAVES:
        raise UnsupportedModel(
            f"{len(trees)} trees of depth {depth} are too large for the complete layout "
            f"(depth at most {MAX_DEPTH}, trees × 2**depth at most {MAX_LEAVES:,})"
        )
    inner, outer = (1 << depth) - 1, 1 << depth
    # The narrowest index type: a tree's nodes then take a third less cache.
    n_features = int(forest.n_features_in_)
    index = np.uint8 if n_features <= 1 << 8 else np.uint16 if n_features <= 1 << 16 else np.int32
    features = np.zeros((len(trees), inner), dtype=index)
    thresholds = np.full((len(trees), inner), np.inf, dtype=np.float32)
    leaves = np.zeros((len(trees), outer), dtype=np.float64)
    for t, tree in enumerate(trees):
        _place(tree, depth, features[t], thresholds[t], leaves[t])
    return PackedForest(features, thresholds, leaves, depth, n_features)


def _place(
    tree: Any, depth: int, features: np.ndarray, thresholds: np.ndarray, leaves: np.ndarray
) -> None:
    """Lay one sklearn tree out level by level in the complete layout."""
    value = tree.value[:, 0, :]
    positive = value[:, 1] / value.sum(axis=1)  # what DecisionTreeClassifier.predict_proba gives
    rounded = float32_at_most(tree.threshold)  # every node at once (leaves' are unused)
    left, right = tree.children_left, tree.children_right
    inner = len(features)
    # (sklearn node, complete-layout position, level), breadth first
    frontier = [(0, 0, 0)]
    while frontier:
        following = []
        for node, position, level in frontier:
            if left[node] == -1:  # a leaf: every complete-layout leaf below it gets its value
                first = ((position + 1) << (depth - level)) - 1 - inner
                leaves[first : first + (1 << (depth - level))] = positive[node]
                continue
            features[position] = tree.feature[node]
            thresholds[position] = rounded[node]
            following.append((left[node], 2 * position + 1, level + 1))
            following.append((right[node], 2 * position + 2, level + 1))
        frontier = following


def _kernel(depth: int) -> Any:
    """The numba kernel for one depth, compiled on first use (numba costs ~0.5 s to import
    and ~1 s to compile). Depth and group width are compile-time constants, so the inner
    loops unroll and the group's node indices stay in registers."""
    import numba

    width = ROWS_PER_STEP
    # Unsigned node indices: numba then skips the negative-index wrap-around test on every
    # array access (a third of the walk's time).
    one, two = np.uint64(1), np.uint64(2)

    @numba.njit(nogil=True, cache=False)
    def walk(
        x: np.ndarray, features: np.ndarray, thresholds: np.ndarray, leaves: np.ndarray
    ) -> np.ndarray:
        n = x.shape[0]
        inner = np.uint64(features.shape[1])
        total = np.zeros(n)
        node = np.zeros(width, np.uint64)
        whole = n - n % width
        for t in range(features.shape[0]):
            feature = features[t]
            threshold = thresholds[t]
            leaf = leaves[t]
            for start in range(0, whole, width):
                for k in range(width):
                    node[k] = 0
                for _ in range(depth):
                    for k in range(width):
                        i = node[k]
                        right = x[np.uint64(start + k), feature[i]] > threshold[i]
                        node[k] = two * i + one + np.uint64(right)
                for k in range(width):
                    total[start + k] += leaf[node[k] - inner]
            for row in range(whole, n):  # the last rows, fewer than a group
                i = np.uint64(0)
                for _ in range(depth):
                    right = x[np.uint64(row), feature[i]] > threshold[i]
                    i = two * i + one + np.uint64(right)
                total[row] += leaf[i - inner]
        return total

    return walk


_kernels: dict[int, Any] = {}


def _walk(
    x: np.ndarray, features: np.ndarray, thresholds: np.ndarray, leaves: np.ndarray, depth: int
) -> np.ndarray:
    kernel = _kernels.get(depth)
    if kernel is None:
        kernel = _kernels[depth] = _kernel(depth)
    return np.asarray(kernel(x, features, thresholds, leaves))


# ---------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class NumericBlock:
    """Imputer (+ scaler) of some numeric columns, as scikit-learn computes them."""

    names: tuple[str, ...]
    fill: np.ndarray  # per column, from SimpleImputer.statistics_
    mean: np.ndarray | None
    scale: np.ndarray | None

    @property
    def width(self) -> int:
        return len(self.names)

    def write(self, columns: PreparedColumns, out: np.ndarray, offset: int) -> None:
        """The block's columns into ``out[:, offset:offset + width]`` (float64 rows): all
        columns at once, so a call costs a few numpy operations however many columns."""
        block = out[:, offset : offset + self.width]
        for j, name in enumerate(self.names):
            block[:, j] = columns[name]
        np.copyto(block, self.fill, where=np.isnan(block))
        if self.mean is not None:
            block -= self.mean
        if self.scale is not None:
            block /= self.scale


# Up to this many rows a categorical value is placed by a Python loop: cheaper than the
# numpy calls that place a large batch's values.
_FEW_ROWS = 16


@dataclass(frozen=True)
class OneHotBlock:
    """Constant imputer + one-hot encoder (unknown categories: all zeros)."""

    names: tuple[str, ...]
    fill: str
    codes: tuple[dict[str, int], ...]  # per column: category -> output column
    width: int

    @cached_property
    def _places(self) -> tuple[dict[str | None, int], ...]:
        """Per column: category -> output column, missing (None) as the fill category."""
        return tuple({**code, None: code.get(self.fill, -1)} for code in self.codes)

    def write(self, columns: PreparedColumns, out: np.ndarray, offset: int) -> None:
        n = out.shape[0]
        # values cleaned by churn.data.clean_category; None if missing
        if n <= _FEW_ROWS:
            for name, place in zip(self.names, self._places, strict=True):
                for i, value in enumerate(columns[name]):
                    j = place.get(value, -1)
                    if j >= 0:
                        out[i, offset + j] = 1.0
            return
        # every column's output positions in one array: one mask and one assignment for all
        found = np.fromiter(
            chain.from_iterable(
                map(place.get, columns[name], repeat(-1, n))
                for name, place in zip(self.names, self._places, strict=True)
            ),
            dtype=np.intp,
            count=n * len(self.names),
        )
        known = found >= 0
        rows = np.tile(np.arange(n), len(self.names))
        out[rows[known], offset + found[known]] = 1.0


def _steps(transformer: Any) -> list[Any]:
    if isinstance(transformer, Pipeline):
        return [step for _, step in transformer.steps]
    return [transformer]


def _numeric_block(names: list[str], steps: list[Any]) -> NumericBlock:
    imputer = steps[0] if steps and isinstance(steps[0], SimpleImputer) else None
    rest = steps[1:] if imputer is not None else steps
    scaler = rest[0] if rest and isinstance(rest[0], StandardScaler) else None
    if len(rest) != (1 if scaler is not None else 0):
        raise UnsupportedModel(f"numeric steps {[type(s).__name__ for s in steps]}")
    if imputer is None:
        fill = np.full(len(names), np.nan)
    else:
        if imputer.add_indicator or not _is_nan(imputer.missing_values):
            raise UnsupportedModel("numeric imputer with indicator or non-NaN missing marker")
        fill = np.asarray(imputer.statistics_, dtype=np.float64)
        if not np.all(np.isfinite(fill)):
            raise UnsupportedModel("numeric imputer dropped an all-missing column")
    mean = scale = None
    if scaler is not None:
        mean = None if scaler.mean_ is None or not scaler.with_mean else scaler.mean_
        scale = None if scaler.scale_ is None or not scaler.with_std else scaler.scale_
    return NumericBlock(tuple(names), fill, mean, scale)


def _one_hot_block(names: list[str], steps: list[Any]) -> OneHotBlock:
    if len(steps) != 2 or not isinstance(steps[0], SimpleImputer):
        raise UnsupportedModel(f"categorical steps {[type(s).__name__ for s in steps]}")
    imputer, encoder = steps
    if not isinstance(encoder, OneHotEncoder):
        raise UnsupportedModel(f"categorical encoder {type(encoder).__name__}")
    if imputer.strategy != "constant" or imputer.add_indicator:
        raise UnsupportedModel("categorical imputer other than a constant fill")
    if encoder.drop_idx_ is not None or getattr(encoder, "_infrequent_enabled", False):
        raise UnsupportedModel("one-hot encoder with dropped or infrequent categories")
    if encoder.handle_unknown not in ("ignore", "infrequent_if_exist"):
        raise UnsupportedModel("one-hot encoder that rejects unknown categories")
    codes: list[dict[str, int]] = []
    width = 0
    for categories in encoder.categories_:
        codes.append({str(c): width + i for i, c in enumerate(categories)})
        width += len(categories)
    return OneHotBlock(tuple(names), str(imputer.fill_value), tuple(codes), width)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and np.isnan(value)


@dataclass(frozen=True)
class Preprocessor:
    """The fitted ColumnTransformer as blocks writing into one float32 matrix."""

    blocks: tuple[NumericBlock | OneHotBlock, ...]
    width: int

    def matrix(
        self, columns: PreparedColumns, rows: int, dtype: type[np.floating[Any]] = np.float32
    ) -> np.ndarray:
        """The transformed rows: float32 as the trees compare them, or float64 (the
        explanations of a linear model, which scikit-learn computes in float64)."""
        out = np.zeros((rows, self.width), dtype=dtype)
        offset = 0
        for block in self.blocks:
            if isinstance(block, NumericBlock) and dtype is not np.float64:
                # float64 arithmetic like sklearn, then the forest's cast to float32
                scratch = np.empty((rows, block.width), dtype=np.float64)
                block.write(columns, scratch, 0)
                out[:, offset : offset + block.width] = scratch
            else:
                block.write(columns, out, offset)
            offset += block.width
        return out


def compile_preprocessor(preprocess: Any, schema: FeatureSchema) -> Preprocessor:
    if not isinstance(preprocess, ColumnTransformer):
        raise UnsupportedModel(f"preprocessing step {type(preprocess).__name__}")
    numeric, categorical = set(schema.numeric), set(schema.categorical)
    blocks: list[NumericBlock | OneHotBlock] = []
    for _, transformer, names in preprocess.transformers_:
        if transformer == "drop":
            continue
        names = list(names)
        if not names or not all(isinstance(n, str) for n in names):
            raise UnsupportedModel("ColumnTransformer columns must be named")
        if set(names) <= numeric:
            blocks.append(_numeric_block(names, _steps(transformer)))
        elif set(names) <= categorical:
            blocks.append(_one_hot_block(names, _steps(transformer)))
        else:
            raise UnsupportedModel(f"transformer over mixed or unknown columns {names}")
    return Preprocessor(tuple(blocks), sum(b.width for b in blocks))


# ---------------------------------------------------------------------------- the predictor


class ForestPredictor(Predictor):
    """Churn probabilities from the compiled preprocessing and forest."""

    backend = "forest"

    def __init__(self, schema: FeatureSchema, pipeline: Any) -> None:
        super().__init__(schema)
        steps = getattr(pipeline, "named_steps", {})
        if "preprocess" not in steps or "classifier" not in steps:
            raise UnsupportedModel("expected a Pipeline with 'preprocess' and 'classifier'")
        self.forest = pack_forest(steps["classifier"])
        self.preprocessor = compile_preprocessor(steps["preprocess"], schema)
        if self.preprocessor.width != self.forest.n_features:
            raise UnsupportedModel(
                f"preprocessing gives {self.preprocessor.width} columns, "
                f"the forest expects {self.forest.n_features}"
            )

    def predict_prepared(self, columns: PreparedColumns) -> np.ndarray:
        rows = len(columns[self.schema.names[0]])
        return self.forest.predict(self.preprocessor.matrix(columns, rows))


def check_compiled_forest(
    pipeline: Any, schema: FeatureSchema, validation: pd.DataFrame, expected: np.ndarray
) -> dict[str, Any]:
    """Whether serving can use the compiled forest for `pipeline`, and how closely it agrees
    with the pipeline's probabilities `expected` on the validation rows (for the bundle's
    metadata and the model card; serving checks again at every load)."""
    try:
        predictor = ForestPredictor(schema, pipeline)
    except UnsupportedModel as exc:
        return {"supported": False, "max_abs_diff": None, "rows": 0, "reason": str(exc)}
    got = predictor.predict_proba(frame_to_columns(validation, schema))
    diff = float(np.max(np.abs(got - np.asarray(expected, dtype=float))))
    return {
        "supported": True,
        "max_abs_diff": diff,
        "rows": len(validation),
        "reason": f"{predictor.forest.trees} trees of depth {predictor.forest.depth} compiled",
    }
