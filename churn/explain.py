"""Per-prediction explanations: how much each ORIGINAL feature moved one customer's churn
probability away from a base value, exactly (``base_value + sum(contributions) ==
probability`` to rounding, about 1e-15).

The players of the Shapley game are the original features, not the pipeline's columns: a
tree split on any one-hot column of ``contract_type`` is a split on ``contract_type``, and a
linear model's one-hot weights are summed per feature. Preprocessing (imputer, scaler,
one-hot) is evaluated from the fitted pipeline with churn.forest's compiled preprocessor, the
arithmetic the served probability comes from.

By model type (the ones ``model.type`` offers):

- random forest: path-dependent TreeSHAP (Lundberg et al. 2018, Algorithm 2) on each tree's
  positive-class probability, averaged over the trees: exact Shapley values of the forest's
  probability for the game "expected output when only the features in S are known, the rest
  following the training data down the tree (node sample weights)". ``base_value`` is that
  expectation with no feature known.
- gradient boosting: the same TreeSHAP on the margin (log-odds: init + learning rate × trees),
  then mapped to the probability by the secant of the sigmoid: every margin contribution is
  multiplied by ``(sigmoid(m0 + S) - sigmoid(m0)) / S`` (S the sum of margin contributions,
  m0 the base margin). Additive by construction, signs and ranking kept; not the Shapley
  value of the probability game itself (that has no closed form for trees).
- logistic regression: exact Shapley values of the linear margin with the training mean as
  the reference point (``w · (z - E[z])`` per column, summed per feature; E[z] from the
  bundle's reference profile), mapped to the probability by the same secant.

Anything else raises ``NotExplainable``; the API turns that into a 4xx, never a guess.
The tree kernel is compiled with numba (as churn.forest) and releases the GIL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression

from churn.bundle import ModelBundle
from churn.data import PreparedColumns
from churn.forest import (
    NumericBlock,
    OneHotBlock,
    Preprocessor,
    UnsupportedModel,
    compile_preprocessor,
    float32_at_most,
)
from churn.schema import FeatureSchema

TOP_REASONS = 3
# A margin this close to the base: the secant is the sigmoid's slope (no 0/0).
_FLAT = 1e-12


class NotExplainable(ValueError):
    """The model cannot be explained exactly (the message says why, for a client)."""


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Explanations:
    """Contributions of each original feature to the churn probability, for some rows.

    ``probabilities`` are what was explained: ``base_value + contributions.sum(axis=1)``.
    Slicing by rows gives the explanations of those rows (the micro-batcher slices answers
    per request)."""

    features: tuple[str, ...]
    # One base for every row, or one per row when a canary batch was answered by two models
    # (`interleave`), each row keeping its own model's base and method.
    base_value: float | np.ndarray
    contributions: np.ndarray  # (rows, features), float64
    probabilities: np.ndarray  # (rows,)
    method: str | tuple[str, ...]

    def __len__(self) -> int:
        return int(self.contributions.shape[0])

    def __getitem__(self, part: slice) -> Explanations:
        return Explanations(
            self.features,
            self.base_value if np.ndim(self.base_value) == 0 else np.asarray(self.base_value)[part],
            self.contributions[part],
            self.probabilities[part],
            self.method if isinstance(self.method, str) else self.method[part],
        )

    def base_of(self, row: int) -> float:
        base = self.base_value
        return float(base) if np.ndim(base) == 0 else float(np.asarray(base)[row])

    def method_of(self, row: int) -> str:
        return self.method if isinstance(self.method, str) else self.method[row]

    @classmethod
    def interleave(
        cls, picked: Sequence[bool], mine: Explanations, theirs: Explanations
    ) -> Explanations:
        """Rows in request order from two models' explanations: row k is `mine`'s next row where
        `picked[k]`, else `theirs`'s (a canary batch split between challenger and champion)."""
        if mine.features != theirs.features:
            raise ValueError("explanations over different features cannot be interleaved")
        order = np.asarray(picked, dtype=bool)
        n = len(order)
        contributions = np.empty((n, len(mine.features)), dtype=np.float64)
        contributions[order], contributions[~order] = mine.contributions, theirs.contributions
        probabilities = np.empty(n, dtype=np.float64)
        probabilities[order], probabilities[~order] = mine.probabilities, theirs.probabilities
        base = np.empty(n, dtype=np.float64)
        base[order] = np.broadcast_to(mine.base_value, (len(mine),))
        base[~order] = np.broadcast_to(theirs.base_value, (len(theirs),))
        mine_methods = iter(mine.method_of(k) for k in range(len(mine)))
        their_methods = iter(theirs.method_of(k) for k in range(len(theirs)))
        methods = tuple(next(mine_methods) if p else next(their_methods) for p in picked)
        return cls(mine.features, base, contributions, probabilities, methods)

    def top(self, row: int, n: int = TOP_REASONS) -> list[tuple[str, float]]:
        """The `n` features of `row` with the largest |contribution| (ties: feature order)."""
        values = self.contributions[row]
        order = sorted(range(len(values)), key=lambda j: -abs(float(values[j])))[:n]
        return [(self.features[j], float(values[j])) for j in order]

    def reasons(self, row: int, values: Mapping[str, Any], n: int = TOP_REASONS) -> list[str]:
        """The top `n` contributions in plain words, e.g. "Contract type: Month-to-month
        +0.21"; `values` are the row's inputs by feature (as the model saw them)."""
        return [reason(name, values.get(name), c) for name, c in self.top(row, n)]

    def rows(
        self, columns: Mapping[str, Sequence[Any]], n: int = TOP_REASONS
    ) -> list[dict[str, Any]]:
        """One JSON-ready explanation per row (what the API answers under ``explanation``);
        `columns` are the rows' inputs by feature, as the model saw them."""
        out = []
        for k in range(len(self)):
            contributions = self.contributions[k].tolist()
            values = {name: columns[name][k] for name in self.features}
            out.append(
                {
                    "base_value": self.base_of(k),
                    "probability": float(self.probabilities[k]),
                    "contributions": dict(zip(self.features, contributions, strict=True)),
                    "reasons": self.reasons(k, values, n),
                    "method": self.method_of(k),
                }
            )
        return out


def feature_label(name: str) -> str:
    """A feature name in plain words: contract_type -> Contract type."""
    words = name.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def reason(name: str, value: Any, contribution: float) -> str:
    """One plain-word reason: "Contract type: Month-to-month +0.21", "Tenure: 3 -0.12",
    "Payment method: missing +0.01"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        shown = "missing"
    elif isinstance(value, float):
        # as a person writes it: 3, 70.5, 1234567.25 (no exponent below a billion)
        shown = f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1e9 else f"{value:g}"
    else:
        shown = str(value)
    return f"{feature_label(name)}: {shown} {contribution:+.2f}"


# ---------------------------------------------------------------------------- TreeSHAP
#
# Path-dependent TreeSHAP, leaf by leaf. A leaf's share of feature i's value depends on the
# features tested on its path (d of them, each ORIGINAL feature once), on how much training
# weight follows the path at that feature's splits (z_f, the product of cover ratios) and on
# whether x follows every split of that feature (o_f, 0 or 1):
#
#   phi_i += v * (o_i - z_i) * sum_k q_k * k! (d-1-k)! / d!,   Q(t) = prod_{j != i} (z_j + o_j t)
#
# the sum over coalitions of Algorithm 2 (Lundberg et al. 2018), written as a polynomial. z_f,
# the features and the split tests of every path are fixed by the tree, so they are laid out
# once per leaf at load; a row then costs a few comparisons and O(d^2) arithmetic per leaf,
# with no walk of the inner nodes and no path copies.


@dataclass(frozen=True)
class PackedTrees:
    """Every leaf of an ensemble with its path: split tests, and per original feature on the
    path its zero fraction (z_f); leaf values already scaled (1/trees or learning rate)."""

    value: np.ndarray  # (leaves,) float64
    width: np.ndarray  # (leaves,) uint8: d, original features on the path
    feature: np.ndarray  # (leaves, max d) unsigned: those features
    zero: np.ndarray  # (leaves, max d) float64: their zero fractions
    tests: np.ndarray  # (leaves + 1,) int64: offsets into the split tests
    column: np.ndarray  # (tests,) unsigned: column of the transformed matrix tested
    threshold: np.ndarray  # (tests,) float32, rounded down (x <= t as scikit-learn compares)
    left: np.ndarray  # (tests,) bool: the path goes left (x <= t) at this split
    slot: np.ndarray  # (tests,) uint8: index of the split's feature in the leaf's features
    expected: float  # the ensemble's output averaged over the training data (cover weights)

    def shap(self, matrix: np.ndarray, groups: int) -> np.ndarray:
        """(rows, groups) contributions of each original feature to the summed output."""
        x = np.ascontiguousarray(matrix, dtype=np.float32)
        return np.asarray(
            _shap_kernel()(
                x,
                self.value,
                self.width,
                self.feature,
                self.zero,
                self.tests,
                self.column,
                self.threshold,
                self.left,
                self.slot,
                groups,
            )
        )


def pack_trees(trees: Sequence[Any], scales: Sequence[float], groups: np.ndarray) -> PackedTrees:
    """sklearn ``Tree`` objects with each leaf value ``values[leaf] * scale``; `groups` maps
    each column of the transformed matrix to its original feature. For a classifier's tree
    the value is the positive-class fraction, for a regressor's the value itself."""
    values: list[float] = []
    paths: list[list[tuple[int, float, bool]]] = []  # (column, threshold, left) per split
    zeros: list[dict[int, float]] = []  # feature -> zero fraction, in first-seen order
    for tree, scale in zip(trees, scales, strict=True):
        value = tree.value[:, 0, :]
        leaf_value = (value[:, 1] / value.sum(axis=1)) if value.shape[1] == 2 else value[:, 0]
        leaf_value = np.asarray(leaf_value, dtype=np.float64) * scale
        cover = np.asarray(tree.weighted_n_node_samples, dtype=np.float64)
        threshold = float32_at_most(np.where(tree.children_left >= 0, tree.threshold, 0.0))
        stack: list[tuple[int, list[tuple[int, float, bool]], dict[int, float]]] = [(0, [], {})]
        while stack:
            node, path, zero = stack.pop()
            left, right = int(tree.children_left[node]), int(tree.children_right[node])
            if left < 0:
                values.append(float(leaf_value[node]))
                paths.append(path)
                zeros.append(zero)
                continue
            column = int(tree.feature[node])
            feature = int(groups[column])
            for child, goes_left in ((left, True), (right, False)):
                ratio = cover[child] / cover[node]
                stack.append(
                    (
                        child,
                        [*path, (column, float(threshold[node]), goes_left)],
                        {**zero, feature: zero.get(feature, 1.0) * ratio},
                    )
                )
    widest = max((len(z) for z in zeros), default=1) or 1
    leaves = len(values)
    width = np.zeros(leaves, dtype=np.uint8)
    feature_of = np.zeros((leaves, widest), dtype=_index_type(int(groups.max(initial=0))))
    zero_of = np.ones((leaves, widest), dtype=np.float64)
    tests = np.zeros(leaves + 1, dtype=np.int64)
    columns, thresholds, lefts, slots = [], [], [], []
    expected = 0.0
    for k, (path, zero) in enumerate(zip(paths, zeros, strict=True)):
        order = {f: i for i, f in enumerate(zero)}
        width[k] = len(zero)
        feature_of[k, : len(zero)] = list(zero)
        zero_of[k, : len(zero)] = list(zero.values())
        for column, limit, goes_left in path:
            columns.append(column)
            thresholds.append(limit)
            lefts.append(goes_left)
            slots.append(order[int(groups[column])])
        tests[k + 1] = len(columns)
        expected += values[k] * float(np.prod(zero_of[k, : len(zero)]))
    return PackedTrees(
        value=np.asarray(values, dtype=np.float64),
        width=width,
        feature=feature_of,
        zero=zero_of,
        tests=tests,
        column=np.asarray(columns, dtype=_index_type(max(columns, default=0))),
        threshold=np.asarray(thresholds, dtype=np.float32),
        left=np.asarray(lefts, dtype=np.bool_),
        slot=np.asarray(slots, dtype=np.uint8),
        expected=expected,
    )


def _index_type(largest: int) -> type[np.unsignedinteger[Any]]:
    """The narrowest unsigned index type for values up to `largest` (less memory per leaf
    and per split test: a 200-tree forest's table then stays in cache)."""
    if largest < 1 << 8:
        return np.uint8
    return np.uint16 if largest < 1 << 16 else np.uint32


_compiled: list[Any] = []


def _shap_kernel() -> Any:
    """The numba kernel, compiled on first use (about a second, once per process)."""
    if _compiled:
        return _compiled[0]
    import numba

    @numba.njit(nogil=True, cache=False)
    def shap(x, value, width, feature, zero, tests, column, threshold, left, slot, groups):
        rows = x.shape[0]
        widest = feature.shape[1]
        phi = np.zeros((rows, groups))
        # weights[d, k] = k! (d-1-k)! / d!: a coalition of k of the other d-1 features
        weights = np.zeros((widest + 1, widest + 1))
        for d in range(1, widest + 1):
            for k in range(d):
                weights[d, k] = math.gamma(k + 1) * math.gamma(d - k) / math.gamma(d + 1)
        hot = np.zeros(widest, np.bool_)
        poly = np.zeros(widest + 1)
        for r in range(rows):
            xr = x[r]
            out = phi[r]
            for leaf in range(value.shape[0]):
                d = width[leaf]
                for j in range(d):
                    hot[j] = True
                for c in range(tests[leaf], tests[leaf + 1]):  # branch-free: unpredictable
                    hot[slot[c]] &= (xr[column[c]] <= threshold[c]) == left[c]
                # P(t) = prod_j (z_j + o_j t) = scale * prod_hot (z_j + t): the features x
                # does not follow only scale it, so its degree is the number it follows
                scale = 1.0
                h = 0
                poly[0] = 1.0
                for j in range(d):
                    z = zero[leaf, j]
                    if hot[j]:
                        h += 1
                        poly[h] = 0.0
                        for k in range(h, 0, -1):
                            poly[k] = poly[k] * z + poly[k - 1]
                        poly[0] *= z
                    else:
                        scale *= z
                v = value[leaf] * scale
                w = weights[d]
                # a feature x does not follow: Q = P / z and (o - z) / z = -1, the same
                # sum for every such feature of the leaf
                cold = 0.0
                for k in range(h + 1):
                    cold += poly[k] * w[k]
                cold *= v
                for i in range(d):
                    if hot[i]:
                        # Q = P / (t + z), from the top (stable: z <= 1)
                        z = zero[leaf, i]
                        q = poly[h]
                        total = q * w[h - 1]
                        for k in range(h - 1, 0, -1):
                            q = poly[k] - z * q
                            total += q * w[k - 1]
                        out[feature[leaf, i]] += total * (1.0 - z) * v
                    else:
                        out[feature[leaf, i]] -= cold
        return phi

    _compiled.append(shap)
    return shap


# ---------------------------------------------------------------------------- explainers


def _sigmoid(z: np.ndarray | float) -> Any:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def margin_to_probability(
    base_margin: float, phi: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Margin contributions mapped to the probability by the sigmoid's secant between the
    base margin and each row's margin: (base probability, contributions, probabilities)."""
    total = phi.sum(axis=1)
    base = float(_sigmoid(base_margin))
    probability = _sigmoid(base_margin + total)
    flat = np.abs(total) < _FLAT
    middle = _sigmoid(base_margin + total / 2)
    slope = np.where(flat, middle * (1 - middle), (probability - base) / np.where(flat, 1.0, total))
    return base, phi * slope[:, None], probability


class Explainer:
    """Exact per-feature contributions for one fitted pipeline (see the module docstring)."""

    method = "base"

    def __init__(self, schema: FeatureSchema, preprocessor: Preprocessor) -> None:
        self.schema = schema
        self.features = tuple(schema.names)
        self.preprocessor = preprocessor
        self.groups = column_groups(preprocessor, schema)

    def explain(self, columns: PreparedColumns) -> Explanations:
        """Explanations for prepared columns (churn.data.prepare_columns)."""
        rows = len(columns[self.features[0]])
        base, contributions, probabilities = self._explain(columns, rows)
        return Explanations(self.features, base, contributions, probabilities, self.method)

    def _explain(self, columns: PreparedColumns, rows: int) -> tuple[float, np.ndarray, np.ndarray]:
        raise NotImplementedError


class ForestExplainer(Explainer):
    method = "tree_shap_probability"

    def __init__(self, schema: FeatureSchema, preprocessor: Preprocessor, forest: Any) -> None:
        super().__init__(schema, preprocessor)
        if getattr(forest, "n_outputs_", 1) != 1 or len(forest.classes_) != 2:
            raise NotExplainable("only single-output binary forests are explained")
        trees = [estimator.tree_ for estimator in forest.estimators_]
        self.trees = pack_trees(trees, [1.0 / len(trees)] * len(trees), self.groups)

    def _explain(self, columns: PreparedColumns, rows: int) -> tuple[float, np.ndarray, np.ndarray]:
        phi = self.trees.shap(self.preprocessor.matrix(columns, rows), len(self.features))
        base = float(self.trees.expected)
        return base, phi, base + phi.sum(axis=1)


class BoostingExplainer(Explainer):
    method = "tree_shap_margin_secant"

    def __init__(self, schema: FeatureSchema, preprocessor: Preprocessor, boosting: Any) -> None:
        super().__init__(schema, preprocessor)
        if len(boosting.classes_) != 2 or boosting.estimators_.shape[1] != 1:
            raise NotExplainable("only binary gradient boosting is explained")
        if getattr(boosting, "loss", "log_loss") != "log_loss":
            raise NotExplainable(f"gradient boosting with loss {boosting.loss!r}")
        self.init_margin = _init_margin(boosting)
        trees = [row[0].tree_ for row in boosting.estimators_]
        self.trees = pack_trees(trees, [boosting.learning_rate] * len(trees), self.groups)

    def _explain(self, columns: PreparedColumns, rows: int) -> tuple[float, np.ndarray, np.ndarray]:
        phi = self.trees.shap(self.preprocessor.matrix(columns, rows), len(self.features))
        return margin_to_probability(self.init_margin + self.trees.expected, phi)


def _init_margin(boosting: Any) -> float:
    init = boosting.init_
    if isinstance(init, str) and init == "zero":
        return 0.0
    if isinstance(init, DummyClassifier) and init.strategy == "prior":
        prior = float(np.asarray(init.class_prior_)[1])
        return float(np.log(prior / (1 - prior)))
    raise NotExplainable(f"gradient boosting initialised with {type(init).__name__}")


class LinearExplainer(Explainer):
    method = "linear_margin_secant"

    def __init__(
        self,
        schema: FeatureSchema,
        preprocessor: Preprocessor,
        model: Any,
        reference: np.ndarray,
    ) -> None:
        super().__init__(schema, preprocessor)
        coef = np.asarray(model.coef_, dtype=np.float64)
        if coef.shape != (1, preprocessor.width) or len(model.classes_) != 2:
            raise NotExplainable("only a binary logistic regression is explained")
        self.weights = coef[0]
        self.reference = reference
        self.base_margin = float(np.asarray(model.intercept_)[0]) + float(self.weights @ reference)
        # (columns, features) 0/1: sums each column's term into its original feature
        self.sum_by_feature = np.zeros((preprocessor.width, len(self.features)))
        self.sum_by_feature[np.arange(preprocessor.width), self.groups] = 1.0

    def _explain(self, columns: PreparedColumns, rows: int) -> tuple[float, np.ndarray, np.ndarray]:
        z = self.preprocessor.matrix(columns, rows, dtype=np.float64)
        phi = ((z - self.reference) * self.weights) @ self.sum_by_feature
        return margin_to_probability(self.base_margin, phi)


def column_groups(preprocessor: Preprocessor, schema: FeatureSchema) -> np.ndarray:
    """For each column of the transformed matrix, the index of its original feature."""
    index = {name: i for i, name in enumerate(schema.names)}
    groups = np.empty(preprocessor.width, dtype=np.int32)
    offset = 0
    for block in preprocessor.blocks:
        if isinstance(block, NumericBlock):
            for j, name in enumerate(block.names):
                groups[offset + j] = index[name]
        else:
            for name, codes in zip(block.names, block.codes, strict=True):
                for column in codes.values():
                    groups[offset + column] = index[name]
        offset += block.width
    return groups


def training_mean(preprocessor: Preprocessor, profile: Mapping[str, Any] | None) -> np.ndarray:
    """E[z] of the transformed training data, from the bundle's reference profile: 0 for a
    centred numeric column (the scaler's mean is the imputed training mean), the training
    share of each category for a one-hot column (a missing value counts as the fill)."""
    mean = np.zeros(preprocessor.width)
    categorical = (profile or {}).get("categorical") or {}
    offset = 0
    for block in preprocessor.blocks:
        if isinstance(block, NumericBlock):
            if block.mean is None:
                raise NotExplainable("numeric columns that are not centred by the scaler")
        elif isinstance(block, OneHotBlock):
            for name, codes in zip(block.names, block.codes, strict=True):
                summary = categorical.get(name)
                if not summary or "counts" not in summary:
                    raise NotExplainable(
                        f"the bundle's reference profile has no category counts for '{name}'"
                    )
                counts = {str(k): int(v) for k, v in summary["counts"].items()}
                missing = int(summary.get("n_missing") or 0)
                total = sum(counts.values()) + missing
                for category, column in codes.items():
                    share = counts.get(category, 0) + (missing if category == block.fill else 0)
                    mean[offset + column] = share / total if total else 0.0
        offset += block.width
    return mean


def make_explainer(
    pipeline: Any, schema: FeatureSchema, profile: Mapping[str, Any] | None = None
) -> Explainer:
    """The exact explainer for a fitted churn pipeline; NotExplainable if there is none.
    `profile` is the bundle's reference profile (only a linear model needs it)."""
    steps = getattr(pipeline, "named_steps", {})
    if "preprocess" not in steps or "classifier" not in steps:
        raise NotExplainable("the model is not a pipeline with 'preprocess' and 'classifier'")
    try:
        preprocessor = compile_preprocessor(steps["preprocess"], schema)
    except UnsupportedModel as exc:
        raise NotExplainable(f"unsupported preprocessing ({exc})") from None
    classifier = steps["classifier"]
    if isinstance(classifier, RandomForestClassifier | ExtraTreesClassifier):
        return ForestExplainer(schema, preprocessor, classifier)
    if isinstance(classifier, GradientBoostingClassifier):
        return BoostingExplainer(schema, preprocessor, classifier)
    if isinstance(classifier, LogisticRegression):
        return LinearExplainer(
            schema, preprocessor, classifier, training_mean(preprocessor, profile)
        )
    raise NotExplainable(f"{type(classifier).__name__} has no exact explainer")


# Sample rows the explainer must reproduce the pipeline on before it is used, and how closely.
CHECK_ROWS = 32
CHECK_TOLERANCE = 1e-6


def checked_explainer(bundle: ModelBundle) -> Explainer:
    """`make_explainer` for a verified bundle, used only if on sample rows (churn.inference
    .sample_rows: padded categories, missing values) base + contributions equals the sklearn
    pipeline's probability within CHECK_TOLERANCE; NotExplainable otherwise (fail closed)."""
    from churn.inference import SklearnPredictor, sample_rows

    explainer = make_explainer(
        bundle.pipeline, bundle.schema, bundle.metadata.get("reference_profile")
    )
    sklearn = SklearnPredictor(bundle.schema, bundle.pipeline)
    rows = sklearn.prepare(sample_rows(bundle, n=CHECK_ROWS, seed=1))
    expected = sklearn.predict_prepared(rows)
    try:
        got = explainer.explain(rows)
    except Exception as exc:  # a kernel failure must not stop serving predictions
        raise NotExplainable(f"the explainer fails on sample rows ({type(exc).__name__})") from None
    total = got.base_value + got.contributions.sum(axis=1)
    worst = float(np.max(np.abs(np.concatenate([total, got.probabilities]) - np.tile(expected, 2))))
    if not np.isfinite(worst) or worst > CHECK_TOLERANCE:
        raise NotExplainable(
            f"its explanations do not reproduce the pipeline's probabilities on sample rows "
            f"(max difference {worst:.2g} > {CHECK_TOLERANCE:g})"
        )
    return explainer


# ---------------------------------------------------------------------------- global view

# Validation rows explained at training for the summary plot and the importance table:
# enough for a stable mean |contribution|, few enough for seconds on a 200-tree forest.
GLOBAL_ROWS = 1000


@dataclass(frozen=True)
class GlobalImportance:
    """Mean |contribution| per feature over explained rows (the SHAP global importance)."""

    explanations: Explanations
    values: dict[str, list[Any]]  # the explained rows' inputs, by feature

    def table(self) -> list[dict[str, Any]]:
        """One row per feature, most important first."""
        contributions = self.explanations.contributions
        mean_abs = np.abs(contributions).mean(axis=0)
        mean = contributions.mean(axis=0)
        order = np.argsort(-mean_abs, kind="stable")
        return [
            {
                "feature": self.explanations.features[j],
                "mean_abs_contribution": float(mean_abs[j]),
                "mean_contribution": float(mean[j]),
            }
            for j in order
        ]

    def as_metadata(self) -> dict[str, Any]:
        """What the bundle keeps (GET /model shows it)."""
        return {
            "available": True,
            "method": self.explanations.method,
            "base_value": self.explanations.base_value,
            "rows": len(self.explanations),
            "importance": self.table(),
        }


def categorical_profile(frame: Any, schema: FeatureSchema) -> dict[str, Any]:
    """The category counts a linear explainer needs, as the bundle's reference profile keeps
    them (churn.profile), for explaining before the bundle exists."""
    from churn.profile import CategoricalSummary

    return {
        "categorical": {
            name: CategoricalSummary.from_values(frame[name]).to_dict()
            for name in schema.categorical
        }
    }


def global_importance(
    explainer: Explainer, frame: Any, rows: int = GLOBAL_ROWS, seed: int = 0
) -> GlobalImportance:
    """Explanations of a uniform sample of at most `rows` rows of `frame` (validation data)."""
    from churn.inference import frame_to_columns

    sample = frame if len(frame) <= rows else frame.sample(rows, random_state=seed)
    columns = frame_to_columns(sample, explainer.schema)
    from churn.data import prepare_columns

    prepared = prepare_columns(columns, explainer.schema.numeric, explainer.schema.categorical)
    values = {
        name: (v.tolist() if isinstance(v, np.ndarray) else list(v)) for name, v in prepared.items()
    }
    return GlobalImportance(explainer.explain(prepared), values)
