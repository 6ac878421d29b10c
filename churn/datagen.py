"""Deterministic synthetic churn data with a known ground truth.

Each customer's true churn probability comes from a logistic model shaped like telecom churn:
month-to-month contracts, short tenure, high charges, electronic cheques and fibre raise it;
long contracts, automatic payments and more products lower it. Because the generator knows
the true probability, it can report the Bayes-optimal AUC: the best any model can do.

Drift scenarios produce batches for monitoring demos and tests; each is named.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

CONTRACTS = ("Month-to-month", "One year", "Two year")
PAYMENT_METHODS = (
    "Electronic check",
    "Mailed check",
    "Bank transfer (automatic)",
    "Credit card (automatic)",
)
INTERNET_SERVICES = ("DSL", "Fiber optic", "No")

_CONTRACT_SHARE = (0.55, 0.21, 0.24)
_PAYMENT_SHARE = (0.34, 0.23, 0.22, 0.21)
_INTERNET_SHARE = (0.34, 0.44, 0.22)
_CONTRACT_LOGIT = {"Month-to-month": 1.0, "One year": -0.6, "Two year": -1.9}
_PAYMENT_LOGIT = {
    "Electronic check": 0.55,
    "Mailed check": 0.05,
    "Bank transfer (automatic)": -0.3,
    "Credit card (automatic)": -0.3,
    "Digital wallet": 0.3,  # only appears in the new_payment_method drift scenario
}
_INTERNET_LOGIT = {"DSL": -0.1, "Fiber optic": 0.45, "No": -0.6}
# A multiplier on the whole logit; tuned so the Bayes-optimal AUC sits near 0.92.
_SIGNAL_SCALE = 1.55
_INTERCEPT = 0.35


def _true_logit(df: pd.DataFrame) -> np.ndarray:
    """Log-odds of churn for complete (pre-missingness) customer records."""
    tenure = df["tenure"].to_numpy(float)
    monthly = df["monthly_charges"].to_numpy(float)
    products = df["num_products"].to_numpy(float)
    logit = (
        _INTERCEPT
        + df["contract_type"].map(_CONTRACT_LOGIT).to_numpy(float)
        + df["payment_method"].map(_PAYMENT_LOGIT).fillna(0.0).to_numpy(float)
        + df["internet_service"].map(_INTERNET_LOGIT).to_numpy(float)
        - 1.3 * np.log1p(tenure / 6.0)
        + 0.022 * (monthly - 65.0)
        - 0.3 * (products - 1.0)
    )
    return _SIGNAL_SCALE * logit


def _sample_features(n_rows: int, rng: np.random.Generator) -> pd.DataFrame:
    contract = rng.choice(CONTRACTS, size=n_rows, p=_CONTRACT_SHARE)
    # Longer contracts go with longer tenure; tenure is whole months, 0 to 72.
    mean_tenure = np.select(
        [contract == "Month-to-month", contract == "One year"], [14.0, 32.0], default=50.0
    )
    tenure = np.clip(np.round(rng.gamma(2.0, mean_tenure / 2.0)), 0, 72)
    internet = rng.choice(INTERNET_SERVICES, size=n_rows, p=_INTERNET_SHARE)
    payment = rng.choice(PAYMENT_METHODS, size=n_rows, p=_PAYMENT_SHARE)
    products = np.clip(rng.poisson(1.2, size=n_rows) + 1, 1, 10)
    base = np.select([internet == "Fiber optic", internet == "DSL"], [78.0, 52.0], default=22.0)
    monthly = np.clip(base + 6.0 * (products - 1) + rng.normal(0, 9.0, n_rows), 18.0, 160.0)
    # Total charges accrue month by month, with price changes along the way.
    total = monthly * tenure * rng.uniform(0.93, 1.07, n_rows)
    return pd.DataFrame(
        {
            "tenure": tenure,
            "monthly_charges": np.round(monthly, 2),
            "total_charges": np.round(total, 2),
            "num_products": products.astype(int),
            "contract_type": contract,
            "payment_method": payment,
            "internet_service": internet,
        }
    )


def _add_missing(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Real exports have gaps: new customers without total charges, unknown payment methods."""
    df = df.copy()
    df["total_charges"] = df["total_charges"].astype(float)
    df.loc[rng.random(len(df)) < 0.008, "total_charges"] = np.nan
    payment = df["payment_method"].astype(object)
    payment[rng.random(len(df)) < 0.005] = None
    df["payment_method"] = payment
    return df


def generate_with_truth(n_rows: int, seed: int = 42) -> tuple[pd.DataFrame, np.ndarray]:
    """Customers (with target `churned`) and each one's true churn probability."""
    if n_rows <= 0:
        raise ValueError(f"n_rows must be positive, got {n_rows}")
    rng = np.random.default_rng(seed)
    df = _sample_features(n_rows, rng)
    return _finish(df, rng)


def _finish(
    df: pd.DataFrame, rng: np.random.Generator, logit_shift: np.ndarray | float = 0.0
) -> tuple[pd.DataFrame, np.ndarray]:
    probability = 1.0 / (1.0 + np.exp(-(_true_logit(df) + logit_shift)))
    df["churned"] = (rng.random(len(df)) < probability).astype(int)
    return _add_missing(df, rng), probability


def generate_customers(n_rows: int, seed: int = 42) -> pd.DataFrame:
    """The training data set: features plus the binary target `churned`."""
    return generate_with_truth(n_rows, seed)[0]


def _price_increase(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    bump = rng.uniform(1.12, 1.25, len(df))
    df["monthly_charges"] = np.round(df["monthly_charges"] * bump, 2)
    df["total_charges"] = np.round(df["total_charges"] * (1 + (bump - 1) * 0.2), 2)
    return df


def _new_payment_method(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    switch = rng.random(len(df)) < 0.25
    df.loc[switch, "payment_method"] = "Digital wallet"
    return df


def _month_to_month_shift(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    move = (df["contract_type"] != "Month-to-month").to_numpy() & (rng.random(len(df)) < 0.5)
    df.loc[move, "contract_type"] = "Month-to-month"
    df.loc[move, "tenure"] = np.clip(np.round(df.loc[move, "tenure"] * 0.4), 0, 72)
    df.loc[move, "total_charges"] = np.round(
        df.loc[move, "monthly_charges"] * df.loc[move, "tenure"], 2
    )
    return df


def _none(df: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    return df


def _fibre_competitor(df: pd.DataFrame) -> np.ndarray:
    """A competitor targets fibre customers: their churn odds rise (x2.7) while nothing in
    their features changes. A concept shift: invisible to input drift and to estimates."""
    return np.where(df["internet_service"].to_numpy() == "Fiber optic", 1.0, 0.0)


# Scenarios that change how churn depends on the features (the features stay as they were).
CONCEPT_SHIFTS: dict[str, Callable[[pd.DataFrame], np.ndarray]] = {
    "fibre_competitor": _fibre_competitor,
}


DRIFT_SCENARIOS: dict[str, Callable[[pd.DataFrame, np.random.Generator], pd.DataFrame]] = {
    "none": _none,
    "price_increase": _price_increase,
    "new_payment_method": _new_payment_method,
    "month_to_month_shift": _month_to_month_shift,
    "fibre_competitor": _none,  # features unchanged; see CONCEPT_SHIFTS
}


def generate_drifted(scenario: str, n_rows: int, seed: int = 7) -> pd.DataFrame:
    """A batch of customers after a named change in the world (labels follow the same truth)."""
    return generate_drifted_with_truth(scenario, n_rows, seed)[0]


def generate_drifted_with_truth(
    scenario: str, n_rows: int, seed: int = 7
) -> tuple[pd.DataFrame, np.ndarray]:
    """Drifted batch plus each customer's true churn probability."""
    if scenario not in DRIFT_SCENARIOS:
        known = ", ".join(sorted(DRIFT_SCENARIOS))
        raise ValueError(f"unknown drift scenario '{scenario}'; known: {known}")
    rng = np.random.default_rng(seed)
    df = DRIFT_SCENARIOS[scenario](_sample_features(n_rows, rng), rng)
    shift = CONCEPT_SHIFTS[scenario](df) if scenario in CONCEPT_SHIFTS else 0.0
    return _finish(df, rng, shift)


def bayes_optimal_auc(probability: np.ndarray, labels: np.ndarray) -> float:
    """AUC of the true probability itself: the ceiling for any model on these labels."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, probability))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the synthetic churn data set.")
    parser.add_argument("--rows", type=int, default=50_000, help="number of customers")
    parser.add_argument("--seed", type=int, default=42, help="random seed (deterministic)")
    parser.add_argument("--out", type=Path, default=Path("data/churn_train.csv"))
    parser.add_argument(
        "--scenario",
        choices=sorted(DRIFT_SCENARIOS),
        help="write a drifted batch instead of the training set",
    )
    args = parser.parse_args(argv)
    if args.rows <= 0:
        parser.error("--rows must be positive")
    if args.scenario:
        df, truth = generate_drifted_with_truth(args.scenario, args.rows, args.seed)
    else:
        df, truth = generate_with_truth(args.rows, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(args.out)  # atomic: a reader never sees half a file
    auc = bayes_optimal_auc(truth, df["churned"].to_numpy())
    print(
        f"wrote {len(df):,} rows to {args.out} (churn rate {df['churned'].mean():.1%}, "
        f"Bayes-optimal AUC {auc:.4f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
