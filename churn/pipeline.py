"""The scikit-learn pipeline: preprocessing plus the classifier named in config."""

from __future__ import annotations

from sklearn.base import ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from churn.config import Config, ModelConfig

MISSING_CATEGORY = "missing"


def build_classifier(model: ModelConfig, random_state: int) -> ClassifierMixin:
    """The classifier for `model.type`, with the hyper-parameters that apply to it."""
    if model.type == "random_forest":
        return RandomForestClassifier(
            n_estimators=model.n_estimators,
            max_depth=model.max_depth,
            min_samples_leaf=model.min_samples_leaf,
            class_weight=model.class_weight,
            n_jobs=model.n_jobs,
            random_state=random_state,
        )
    if model.type == "gradient_boosting":
        return GradientBoostingClassifier(
            n_estimators=model.n_estimators,
            max_depth=model.max_depth or 3,
            min_samples_leaf=model.min_samples_leaf,
            learning_rate=model.learning_rate,
            random_state=random_state,
        )
    return LogisticRegression(
        C=model.C, class_weight=model.class_weight, max_iter=2000, random_state=random_state
    )


def build_pipeline(config: Config) -> Pipeline:
    """Impute + scale numerics, impute + one-hot categoricals (unknown categories ignored)."""
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    categorical = Pipeline(
        [
            ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
            ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    preprocess = ColumnTransformer(
        [
            ("numeric", numeric, list(config.features.numeric)),
            ("categorical", categorical, list(config.features.categorical)),
        ],
        remainder="drop",
        verbose_feature_names_out=True,
    )
    classifier = build_classifier(config.model, config.training.random_state)
    return Pipeline([("preprocess", preprocess), ("classifier", classifier)])


def inference_ready(pipeline: Pipeline) -> Pipeline:
    """Single-threaded prediction: a serving worker owns one core, not all of them."""
    classifier = pipeline.named_steps["classifier"]
    if hasattr(classifier, "n_jobs"):
        classifier.set_params(n_jobs=1)
    return pipeline
