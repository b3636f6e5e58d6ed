"""The forecaster: shapes, padding independence, ONNX parity, the committed model, training."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from store_format import Gate, load_verified
from training import cli
from training.backtest_folds import BOUNDS, FOLDS, backtest
from training.export import PARITY_ATOL, TrainedModel, check_parity, export_onnx
from training.forecast_baselines import (
    RIDGE_WINDOW,
    RidgeBaseline,
    bands,
    comparison_metrics,
    fit_ridge,
    ridge_design,
    ridge_solve,
    seasonal_naive_step_drift,
    targets,
)
from training.forecaster_backtest import gru_trainer
from training.forecaster_report import report
from training.linear_forecast import linear_forecasts, prior_matrix
from training.models.forecaster import Forecaster, ForecasterConfig
from training.models.linear_forecaster import LinearForecaster, LinearForecasterConfig
from training.models.residual_forecaster import ResidualForecaster, ResidualForecasterConfig
from training.options import TrainOptions
from training.residual_fit import ResidualFitConfig, fit_residual, out_of_fold_ridge
from training.train_forecaster import (
    DRY_RUN_OVERRIDES,
    QUALITY_BAR,
    ForecasterTrainConfig,
    dynamic_shapes,
    evaluate,
    linear_example_inputs,
    linear_recipe,
    load_series,
    make_example_inputs,
    origins,
    pad_rows,
    probe_loss,
    residual_example_inputs,
    sample_batch,
    seasonal_naive_drift,
    split_points,
    train,
    train_step,
)

STORE = Path(__file__).resolve().parents[1] / "model_store"
MIXED = [104, 333, 517, 1200, 150, 104]  # one batch: lengths from the minimum to heavy padding


@pytest.fixture(scope="module")
def series() -> np.ndarray:
    return load_series()[1]


@pytest.fixture(scope="module")
def model() -> Forecaster:
    torch.manual_seed(0)
    return Forecaster(ForecasterConfig()).eval()


@pytest.fixture(scope="module")
def committed():
    manifest, path = load_verified(STORE, "forecaster")
    return manifest, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def windows(y: np.ndarray, lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    """Real stretches of the series with the given lengths, ending at random weeks."""
    rng = np.random.default_rng(seed)
    return [y[e - L : e] for L, e in ((L, int(rng.integers(L, len(y) + 1))) for L in lengths)]


def with_test_weeks_changed(series: np.ndarray) -> np.ndarray:
    """A copy of the series with noise added to its test weeks only."""
    _, test_start = split_points(len(series), ForecasterTrainConfig())
    changed = series.copy()
    changed[test_start:] += np.random.default_rng(0).normal(0, 5, len(series) - test_start)
    return changed


def padded(rows: list[np.ndarray], width: int, fill: float = 0.0):
    """rows right-padded to ``width`` columns with ``fill``: (history, lengths) tensors."""
    history, lengths = pad_rows(rows)
    extra = torch.full((len(rows), width - history.shape[1]), fill)
    history = torch.cat([history, extra], dim=1)
    for i, L in enumerate(lengths.tolist()):
        history[i, L:] = fill
    return history, lengths


def run_onnx(session: ort.InferenceSession, history: torch.Tensor, lengths: torch.Tensor):
    feeds = {"history": history.numpy(), "lengths": lengths.numpy()}
    return session.run(["forecast"], feeds)[0]


# --- the PyTorch module ---------------------------------------------------------------------


def test_forward_shapes_and_dtypes(model, series):
    history, lengths = pad_rows(windows(series, [104, 260, 180]))
    with torch.no_grad():
        out = model(history, lengths)
    assert out.shape == (3, model.config.horizon)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_rejects_wrong_rank(model):
    with pytest.raises(AssertionError, match="batch, time"):
        model(torch.zeros(2, 3, 4), torch.tensor([3, 3]))


def test_padding_independence_pytorch(model, series):
    rows = windows(series, MIXED)
    history, lengths = padded(rows, 1500)
    noisy_history, _ = padded(rows, 1600, fill=1e4)  # whatever the padding holds
    with torch.no_grad():
        batch = model(history, lengths)
        noisy = model(noisy_history, lengths)
        alone = torch.cat([model(*pad_rows([row])) for row in rows])
    assert (batch - alone).abs().max().item() <= 1e-4
    assert (noisy - alone).abs().max().item() <= 1e-4


def test_scaling_follows_the_level(model, series):
    """Scaling lives in the graph: shifting a history by c ppm shifts its forecast by c."""
    history, lengths = pad_rows(windows(series, [300, 200]))
    with torch.no_grad():
        base, shifted = model(history, lengths), model(history + 50.0, lengths)
    assert torch.allclose(shifted - base, torch.full_like(base, 50.0), atol=1e-3)


def test_baseline_is_last_year_plus_last_years_change():
    y = np.arange(200, dtype=np.float64) ** 1.5
    end, h = 150, np.arange(1, 27)
    want = y[end - 1 + h - 52] + (y[end - 1] - y[end - 1 - 52])
    assert np.allclose(seasonal_naive_drift(y, end, 26), want)
    assert origins(100, 204, 52) == list(range(100, 153))  # 53 origins in a 104-week window


def trend_and_season(n: int = 1200) -> np.ndarray:
    """A series whose future is known: a linear trend plus an exact 52-week season."""
    t = np.arange(n, dtype=np.float64)
    return 300.0 + 0.04 * t + 3.0 * np.sin(2 * np.pi * t / 52) + 0.5 * np.cos(4 * np.pi * t / 52 + 1)


def test_both_seasonal_naive_forms_are_exact_on_trend_plus_season():
    y = trend_and_season()
    for end in (200, 700, 1100):
        for baseline in (seasonal_naive_drift, seasonal_naive_step_drift):
            np.testing.assert_allclose(baseline(y, end, 52), y[end : end + 52], atol=1e-9)


def test_step_drift_is_last_value_plus_drift_per_step_plus_detrended_season():
    y = np.arange(400, dtype=np.float64) ** 1.3  # a trend that bends: the two forms differ
    end, h = 300, np.arange(1, 53)
    t = end - 1
    drift, slope = (y[t] - y[t - 156]) / 156, (y[t] - y[t - 52]) / 52
    want = y[t] + h * drift + (y[t + h - 52] - y[t - 52] - h * slope)
    np.testing.assert_allclose(seasonal_naive_step_drift(y, end, 52), want)
    assert not np.allclose(want, seasonal_naive_drift(y, end, 52))


def test_ridge_learns_trend_plus_season():
    y = trend_and_season()
    ridge = fit_ridge(y, val_start=900, test_start=1000, horizon=52)
    ends = origins(1000, len(y), 52)
    assert np.abs(ridge.predict(y, ends) - targets(y, ends, 52)).max() < 0.01
    assert ridge.n_train_origins == 900 - 52 + 1 - RIDGE_WINDOW


def test_ridge_is_fitted_on_training_weeks_only(series):
    val_start, test_start = split_points(len(series), ForecasterTrainConfig())
    ridge = fit_ridge(series, val_start, test_start, 52)
    same = fit_ridge(with_test_weeks_changed(series), val_start, test_start, 52)
    assert same.alpha == ridge.alpha
    np.testing.assert_array_equal(same.weights, ridge.weights)
    np.testing.assert_array_equal(same.intercept, ridge.intercept)
    # ...while the training weeks do shape it (so the check above could fail)
    changed_train = series.copy()
    changed_train[1000:1100] += 1.0
    assert not np.allclose(fit_ridge(changed_train, val_start, test_start, 52).weights, ridge.weights)


def test_comparison_metrics_per_band_with_known_errors():
    truth = np.zeros((3, 52))
    model = truth - 1.0  # one ppm too low everywhere
    model[:, :13] = truth[:, :13] - 3.0  # three in the first band
    baseline = truth + 2.0
    metrics = comparison_metrics(model, {"ridge": baseline}, truth)
    assert [name for name, _ in bands(52)] == ["weeks_1_13", "weeks_14_26", "weeks_27_39", "weeks_40_52"]
    assert metrics["test_mae"] == 1.5 and metrics["test_bias"] == -1.5
    assert metrics["test_mae_weeks_1_13"] == 3.0 and metrics["test_bias_weeks_1_13"] == -3.0
    assert metrics["test_mae_weeks_40_52"] == 1.0
    assert metrics["baseline_mae_ridge"] == 2.0 and metrics["mae_ratio_to_ridge"] == 0.75
    assert metrics["mae_ratio_to_ridge_weeks_1_13"] == 1.5
    assert metrics["mae_ratio_to_ridge_weeks_14_26"] == 0.5
    assert metrics["test_steps_biased_low"] == 52


# --- ONNX export of a fresh model -------------------------------------------------------------


def assert_exports_with_parity(module, example_inputs, series, tmp_path) -> None:
    """``module`` exports to ONNX and answers as PyTorch does, padded or alone, at any batch."""
    trained = TrainedModel(
        name="forecaster",
        task="time-series-forecasting",
        module=module,
        input_names=["history", "lengths"],
        output_names=["forecast"],
        example_inputs=example_inputs,
        dynamic_shapes=dynamic_shapes(),
        metrics={},
        training={"seed": 0},
        dataset={},
    )
    path = tmp_path / "model.onnx"
    export_onnx(trained, path)
    assert check_parity(trained, path) <= PARITY_ATOL  # batches 1, 7 and 64
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = windows(series, MIXED, seed=1)
    history, lengths = padded(rows, 1500)
    got = run_onnx(session, history, lengths)
    with torch.no_grad():
        want = module(history, lengths).numpy()
    assert np.abs(got - want).max() <= PARITY_ATOL
    alone = np.concatenate([run_onnx(session, *pad_rows([row])) for row in rows])
    assert np.abs(got - alone).max() <= 1e-4


def test_onnx_export_parity_and_padding(model, series, tmp_path):
    assert_exports_with_parity(model, make_example_inputs(series, model.config, seed=0), series, tmp_path)


# --- the linear forecaster --------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear(series) -> LinearForecaster:
    """A linear forecaster with the trainer's recipe, fitted on the training weeks."""
    cfg = ForecasterTrainConfig()
    recipe = linear_recipe(cfg)
    val_start, _ = split_points(len(series), cfg)
    weight, bias = recipe.fit(series, list(range(recipe.window, val_start - 52 + 1)), 52)
    model = LinearForecaster(LinearForecasterConfig(window=recipe.window, min_length=cfg.min_window))
    model.set_map(torch.from_numpy(weight), torch.from_numpy(bias))
    return model.eval()


def test_the_prior_is_exact_on_trend_plus_season():
    y = trend_and_season()
    for years in (1, 2, 3, 5):
        window = 52 * (years + 1)
        prior = prior_matrix(years, window, 52)
        np.testing.assert_allclose(prior.sum(0), 1.0)  # a map of values measured from the last one
        ends = [window + 10, 700, 1100]
        forecasts = linear_forecasts(prior, np.zeros(52), y, ends)
        np.testing.assert_allclose(forecasts, targets(y, ends, 52), atol=1e-9)


def test_a_short_history_is_extended_back_by_whole_seasons(linear):
    """Rows shorter than the window read, for each missing week, the same week a season or more
    later less that much growth: exact on a trend plus an exact season."""
    y = trend_and_season()
    W = linear.config.window
    rows = [y[e - L : e] for L, e in ((104, 500), (W - 1, 700), (W + 60, 900), (150, 1100))]
    last, recent = linear.recent(*pad_rows(rows))
    for i, (row, e) in enumerate(zip(rows, (500, 700, 900, 1100), strict=True)):
        np.testing.assert_allclose(recent[i].numpy(), y[e - W : e] - y[e - 1], atol=5e-4)
        assert last[i, 0].item() == pytest.approx(row[-1])


def test_linear_model_matches_its_map_and_ignores_padding(linear, series):
    ends = [1500, 1900, 2200]
    rows = [series[e - 600 : e] for e in ends]
    with torch.no_grad():
        got = linear(*pad_rows(rows)).numpy()
    weight, bias = linear.weight.double().numpy(), linear.bias.double().numpy()
    np.testing.assert_allclose(got, linear_forecasts(weight, bias, series, ends), atol=1e-3)
    rows = windows(series, MIXED)
    history, lengths = padded(rows, 1500)
    noisy_history, _ = padded(rows, 1600, fill=1e4)
    with torch.no_grad():
        batch, noisy = linear(history, lengths), linear(noisy_history, lengths)
        alone = torch.cat([linear(*pad_rows([row])) for row in rows])
        shifted = linear(history + 50.0, lengths)
    assert (batch - alone).abs().max().item() <= 1e-4
    assert (noisy - alone).abs().max().item() <= 1e-4
    assert torch.allclose(shifted - batch, torch.full_like(batch, 50.0), atol=1e-3)


def test_forecaster_2_is_forecaster_1_reading_the_window_chosen_on_validation():
    """The retrain reproduces forecaster/1's graph byte for byte; only the window it reads differs,
    and that window is the one with the lowest validation MAE. Its figures are docs/training.md's."""
    v1, v1_path = load_verified(STORE, "forecaster", 1)
    v2, v2_path = load_verified(STORE, "forecaster", 2)
    assert v2.sha256 == v1.sha256 and v2_path.read_bytes() == v1_path.read_bytes()
    tried = val_mae_by_window(v2.metrics)
    assert v2.serving["window"] == min(tried, key=tried.__getitem__) == 156
    assert "window" not in v1.serving and v1.serving["max_length"] == 1040 in tried
    _, metrics = report(STORE, 2)
    assert Gate.evaluate(QUALITY_BAR, metrics).verdict == "passed"
    assert metrics["mae_ratio_to_ridge"] == pytest.approx(0.866, abs=0.001)
    assert all(metrics[f"mae_ratio_to_ridge_{band}"] < 1.0 for band, _ in bands(52))


def val_mae_by_window(metrics: dict) -> dict[int, float]:
    """The validation MAE of every history window the trainer tried (``val_mae_window_<n>``)."""
    return {int(k.rsplit("_", 1)[1]): v for k, v in metrics.items() if k.startswith("val_mae_window_")}


def test_the_backtest_never_reads_the_test_weeks(series):
    recipe = linear_recipe(ForecasterTrainConfig())
    changed = with_test_weeks_changed(series)
    first, second = backtest(series, [recipe], folds=(2, 7)), backtest(changed, [recipe], folds=(2, 7))
    assert [vars(f) for f in first[recipe.name]] == [vars(f) for f in second[recipe.name]]
    assert min(FOLDS) == 2  # fold 1 would evaluate 1999-2000, half of it test weeks


def test_a_trained_candidate_in_the_backtest_never_reads_the_test_weeks(series):
    """The GRU candidate, trained per fold (tiny here), and its mean with the ridge: same scores
    whatever the test weeks hold; the bounds, which read the evaluated weeks, are kept apart."""
    cfg = ForecasterTrainConfig(**{**DRY_RUN_OVERRIDES, "epochs": 1})
    trainers = {"gru": gru_trainer(cfg)}
    runs = [backtest(y, [], folds=(2,), trainers=trainers) for y in (series, with_test_weeks_changed(series))]
    assert {"gru", "mean of gru and the ridge", *BOUNDS} <= set(runs[0])
    assert [vars(f) for f in runs[0]["gru"]] == [vars(f) for f in runs[1]["gru"]]
    gru, mean = runs[0]["gru"][0], runs[0]["mean of gru and the ridge"][0]
    assert gru.mae != mean.mae and mean.ridge_mae == gru.ridge_mae


def test_linear_onnx_export_parity_and_padding(linear, series, tmp_path):
    example_inputs = linear_example_inputs(series, linear.config, seed=0)
    assert_exports_with_parity(linear, example_inputs, series, tmp_path)


# --- the residual forecaster: the ridge plus GRUs on what it leaves ---------------------------------


def fitted_ridge(series: np.ndarray) -> RidgeBaseline:
    val_start, test_start = split_points(len(series), ForecasterTrainConfig())
    return fit_ridge(series, val_start, test_start, 52)


@pytest.fixture(scope="module")
def residual(series) -> ResidualForecaster:
    """The baseline ridge in the graph and untrained GRUs whose last layers are not zero (a fresh
    model's correction is exactly zero), at shrink 1."""
    torch.manual_seed(0)
    model = ResidualForecaster(ResidualForecasterConfig())
    ridge = fitted_ridge(series)
    model.ridge.set_map(torch.from_numpy(ridge.weights), torch.from_numpy(ridge.intercept))
    for net in model.nets:
        torch.nn.init.normal_(net.head[-1].weight, std=0.1)
    return model.eval()


def test_residual_forecaster_at_shrink_zero_is_the_ridge_baseline(residual, series):
    ends = [1500, 1900, 2150]
    rows = [series[e - 400 : e] for e in ends]
    model = copy.deepcopy(residual)
    with torch.no_grad():
        corrected = model(*pad_rows(rows)).numpy()
        model.shrink.fill_(0.0)
        ridge_only = model(*pad_rows(rows)).numpy()
    np.testing.assert_allclose(ridge_only, fitted_ridge(series).predict(series, ends), atol=1e-3)
    assert np.abs(corrected - ridge_only).max() > 1e-2  # the correction is there at shrink 1


def test_residual_forecaster_ignores_padding_and_follows_the_level(residual, series):
    rows = windows(series, MIXED)
    history, lengths = padded(rows, 1500)
    noisy_history, _ = padded(rows, 1600, fill=1e4)
    with torch.no_grad():
        batch, noisy = residual(history, lengths), residual(noisy_history, lengths)
        alone = torch.cat([residual(*pad_rows([row])) for row in rows])
        shifted = residual(history + 50.0, lengths)
    assert (batch - alone).abs().max().item() <= 1e-4
    assert (noisy - alone).abs().max().item() <= 1e-4
    assert torch.allclose(shifted - batch, torch.full_like(batch, 50.0), atol=1e-3)


def test_residual_onnx_export_parity_and_padding(residual, series, tmp_path):
    example_inputs = residual_example_inputs(series, residual.config, seed=0)
    assert_exports_with_parity(residual, example_inputs, series, tmp_path)


def test_out_of_fold_ridge_errors_come_from_ridges_without_those_origins(series):
    ends = list(range(156, 1200))
    oof = out_of_fold_ridge(series, ends, 52, 156, 100.0, 5)
    x = ridge_design(series, ends, 156)
    z = targets(series, ends, 52) - series[np.array(ends) - 1][:, None]
    first = np.array_split(np.arange(len(ends)), 5)[0]
    weights, intercept = ridge_solve(x[first[-1] + 1 :], z[first[-1] + 1 :], 100.0)
    np.testing.assert_allclose(oof[first], intercept + x[first] @ weights)
    # the errors it leaves are larger than those of a ridge scored on its own training origins
    in_sample_weights, in_sample_intercept = ridge_solve(x, z, 100.0)
    assert np.abs(oof - z).mean() > np.abs(in_sample_intercept + x @ in_sample_weights - z).mean()


@pytest.mark.slow
def test_residual_fit_never_reads_the_test_weeks_and_keeps_what_it_says(series):
    val_start, test_start = split_points(len(series), ForecasterTrainConfig())
    ridge = fitted_ridge(series)
    for cfg in (
        ResidualFitConfig(steps=20, eval_every=10),
        ResidualFitConfig(steps=20, eval_every=10, shrink=None),
    ):
        fits = [
            fit_residual(y, val_start, test_start, cfg, seed=0)
            for y in (series, with_test_weeks_changed(series))
        ]
        (model, record), (other, other_record) = fits
        assert record == other_record
        for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
            assert torch.equal(a, b)
        assert record["ridge_alpha"] == ridge.alpha and model.shrink.item() == record["shrink"]
        if cfg.shrink is None:  # chosen on validation, the ridge alone (shrink 0) a candidate
            assert record["val_mae_kept"] <= record["val_mae_ridge"] and record["shrink"] in cfg.shrinks
        else:  # the last step at the fixed shrink
            assert record["shrink"] == cfg.shrink and record["kept_step"] == cfg.steps


# --- the committed model ------------------------------------------------------------------------


def test_committed_manifest(committed):
    manifest, _ = committed
    H = manifest.serving["horizon"]
    assert manifest.task == "time-series-forecasting"
    assert manifest.labels is None
    assert [(t.name, t.datatype, t.shape) for t in manifest.inputs] == [
        ("history", "FP32", (-1, -1)),
        ("lengths", "INT64", (-1,)),
    ]
    assert [(t.name, t.datatype, t.shape) for t in manifest.outputs] == [("forecast", "FP32", (-1, H))]
    serving = manifest.serving
    assert serving["units"] == "ppm" and serving["padding"] == "right"
    assert serving["frequency"] == "weekly"
    assert 52 <= serving["min_length"] < serving["max_length"]
    assert "seed" in manifest.training
    assert manifest.metrics["test_mae"] <= 0.9 * manifest.metrics["baseline_mae"]


def test_committed_onnx_shapes_and_padding_independence(committed, series):
    manifest, session = committed
    rows = windows(series, [*MIXED, manifest.serving["max_length"]], seed=2)
    history, lengths = padded(rows, 1500)
    out = run_onnx(session, history, lengths)
    assert out.shape == (len(rows), manifest.serving["horizon"]) and out.dtype == np.float32
    alone = np.concatenate([run_onnx(session, *pad_rows([row])) for row in rows])
    assert np.abs(out - alone).max() <= 1e-4
    # forecasts are in ppm, near the level of the history they continue
    last = np.array([row[-1] for row in rows])[:, None]
    assert np.abs(out - last).max() < 10.0


def test_committed_onnx_reproduces_held_out_metrics(committed, series):
    """Re-running the held-out evaluation through ONNX Runtime gives the manifest's numbers."""
    manifest, session = committed
    H, y = manifest.serving["horizon"], series
    test_start = len(y) - manifest.metrics["test_weeks"]
    ends = origins(test_start, len(y), H)
    assert len(ends) == manifest.metrics["test_origins"]
    truth = np.stack([y[e : e + H] for e in ends])
    base = np.stack([seasonal_naive_drift(y, e, H) for e in ends])
    for cap, key in [
        (manifest.serving.get("window", manifest.serving["max_length"]), "test_mae"),
        (300, "test_mae_history_300"),
        (500, "test_mae_history_500"),
    ]:
        pred = run_onnx(session, *pad_rows([y[max(0, e - cap) : e] for e in ends]))
        assert abs(np.abs(pred - truth).mean() - manifest.metrics[key]) < 1e-3, key
        assert np.abs(pred - truth).mean() <= 0.9 * np.abs(base - truth).mean(), key
    assert abs(np.abs(base - truth).mean() - manifest.metrics["baseline_mae"]) < 1e-3


def test_committed_model_against_every_baseline():
    """The figures docs/training.md states, and the committed model meets the forecaster's bar."""
    _, metrics = report(STORE, 1)
    assert Gate.evaluate(QUALITY_BAR, metrics).verdict == "passed"
    assert metrics["mae_ratio_to_ridge"] == pytest.approx(0.953, abs=0.001)
    assert metrics["mae_ratio_to_ridge_weeks_1_13"] == pytest.approx(1.145, abs=0.001)
    assert metrics["test_steps_biased_low"] == 52


# --- training -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_loss_falls_on_a_fixed_batch(series):
    torch.manual_seed(0)
    model = Forecaster(ForecasterConfig())
    cfg = ForecasterTrainConfig(batch_size=16, max_window=156)
    val_start, _ = split_points(len(series), cfg)
    batch = sample_batch(series, val_start, model.config.horizon, cfg, np.random.default_rng(0))
    start = probe_loss(model, batch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        train_step(model, opt, *batch, grad_clip=1.0)
    assert probe_loss(model, batch) < 0.9 * start


@pytest.mark.slow
def test_dry_run_trains_exports_and_publishes_a_rejected_candidate(tmp_path, capsys):
    # two short epochs do not beat the baselines: the version is written but rejected
    assert cli.main(["train", "forecaster", "--dry-run", "--out", str(tmp_path)]) == cli.EXIT_REJECTED
    manifest, path = load_verified(tmp_path, "forecaster", 1)
    assert path.is_file() and manifest.gate is not None and manifest.gate.verdict == "rejected"
    printed = capsys.readouterr().out
    assert "quality gate: forecaster/1\n  mae_ratio_to_ridge = " in printed and "REJECTED" in printed
    metrics = manifest.metrics
    for band, _ in bands(52):
        assert np.isfinite(metrics[f"mae_ratio_to_ridge_{band}"]) and np.isfinite(
            metrics[f"test_bias_{band}"]
        )
    assert metrics["mae_ratio_to_ridge"] > 1.0
    assert metrics["probe_loss_end"] < metrics["probe_loss_start"]  # the loss moved down
    assert metrics["onnx_parity_max_abs_diff"] <= PARITY_ATOL
    assert metrics["test_origins"] > 0 and np.isfinite(metrics["test_mae"])
    assert manifest.training["dry_run"] is True and manifest.training["seed"] == 0
    # the window served is the one with the lowest validation MAE, and the test weeks are read with it
    tried = val_mae_by_window(metrics)
    assert sorted(tried) == sorted(ForecasterTrainConfig().windows)
    window = manifest.serving["window"]
    assert tried[window] == min(tried.values()) and metrics["val_mae"] == tried[window]
    assert metrics["test_history_length"] == window <= manifest.serving["max_length"]
    for plot in ("forecaster_curves.png", "forecaster_forecasts.png"):
        assert (path.parent / plot).stat().st_size > 0


@pytest.mark.slow
def test_residual_recipe_trains_with_the_ridge_inside_and_a_fixed_shrink(tmp_path):
    """The residual recipe (not the default): the baseline ridge in the graph, a quarter of the
    correction after the last step, figures on every split."""
    cfg = ForecasterTrainConfig(model="residual")
    options = TrainOptions(seed=0, epochs=None, dry_run=True, store=tmp_path, workdir=tmp_path)
    trained = train(options, cfg)
    metrics = trained.metrics
    assert trained.serving["window"] == trained.serving["max_length"] == 156
    assert metrics["shrink"] == cfg.residual.shrink and metrics["kept_step"] == 2 * cfg.residual.eval_every
    assert metrics["ridge_alpha"] == fitted_ridge(load_series()[1]).alpha
    assert isinstance(trained.module, ResidualForecaster) and trained.module.shrink.item() == 0.25
    for key in ("test_mae", "val_mae", "mae_ratio_to_ridge", "val_mae_ratio_to_ridge_weeks_1_13"):
        assert np.isfinite(metrics[key]), key
    # at shrink 0 the graph is the baseline ridge, so a quarter of a barely trained correction
    # keeps the model within a few percent of it
    assert abs(metrics["mae_ratio_to_ridge"] - 1.0) < 0.1


@pytest.mark.slow
def test_linear_recipe_trains_with_its_window_and_backtest(tmp_path):
    """The linear recipe (not the default): fitted, evaluated on every split, its backtest recorded."""
    cfg = ForecasterTrainConfig(model="linear")
    options = TrainOptions(seed=0, epochs=None, dry_run=True, store=tmp_path, workdir=tmp_path)
    trained = train(options, cfg)
    recipe = linear_recipe(cfg)
    assert trained.serving["window"] == trained.serving["max_length"] == recipe.window
    assert trained.serving["min_length"] == cfg.min_window
    metrics = trained.metrics
    assert metrics["recipe"] == recipe.name and metrics["train_origins"] == cfg.dry_run_origins
    assert metrics["train_mae"] < metrics["train_mae_last_value"]
    assert metrics["backtest_folds"] == len(FOLDS)
    for key in ("test_mae", "val_mae", "mae_ratio_to_ridge", "val_mae_ratio_to_ridge_weeks_1_13"):
        assert np.isfinite(metrics[key]), key


def test_evaluate_counts_origins(model, series):
    cfg = ForecasterTrainConfig()
    val_start, test_start = split_points(len(series), cfg)
    result = evaluate(model, series, val_start, test_start, 260)
    assert result["origins"] == cfg.val_weeks - model.config.horizon + 1
    assert result["mae_by_step"].shape == (model.config.horizon,)
