import keras
import numpy as np
import pytest
from conftest import numpy

from kerasformer.training.schedule import BudgetLearningRate, TransformerSchedule, budget_rate, paper_optimizer, paper_peak


def paper_lrate(step_num, d_model, warmup_steps):
    """lrate = d_model^-0.5 * min(step_num^-0.5, step_num * warmup_steps^-1.5)   (equation 3)."""
    step_num = np.asarray(step_num, dtype="float64")
    return d_model**-0.5 * np.minimum(step_num**-0.5, step_num * warmup_steps**-1.5)


@pytest.mark.parametrize("iteration", [0, 1, 9, 999, 3998, 3999, 4000, 10_000, 100_000, 1_000_000])
def test_matches_equation_3_with_step_num_one_past_the_iteration(iteration):
    schedule = TransformerSchedule(d_model=512)
    expected = paper_lrate(iteration + 1, d_model=512, warmup_steps=4000)
    np.testing.assert_allclose(float(schedule(iteration)), expected, rtol=1e-6)


def test_first_update_has_a_small_positive_rate():
    # Iteration 0 is step_num 1: d_model^-0.5 * warmup_steps^-1.5, never 0 or inf.
    schedule = TransformerSchedule(d_model=512)
    np.testing.assert_allclose(float(schedule(0)), 512**-0.5 * 4000**-1.5, rtol=1e-6)


def test_linear_warmup_peaks_at_warmup_steps_then_decays():
    schedule = TransformerSchedule(d_model=64, warmup_steps=100)
    iterations = np.arange(400)
    rates = numpy(schedule(iterations))
    np.testing.assert_allclose(rates, paper_lrate(iterations + 1, 64, 100), rtol=1e-6)
    peak = int(np.argmax(rates))
    assert peak + 1 == 100  # step_num == warmup_steps
    np.testing.assert_allclose(rates[peak], 64**-0.5 * 100**-0.5, rtol=1e-6)
    assert np.all(np.diff(rates[: peak + 1]) > 0)
    np.testing.assert_allclose(np.diff(rates[: peak + 1]), 64**-0.5 * 100**-1.5, rtol=1e-3)  # a line
    assert np.all(np.diff(rates[peak:]) < 0)
    np.testing.assert_allclose(rates[399] / rates[99], (400 / 100) ** -0.5, rtol=1e-6)  # 1/sqrt(step)


def test_scale_multiplies_the_whole_schedule():
    plain, doubled = TransformerSchedule(128, warmup_steps=10), TransformerSchedule(128, warmup_steps=10, scale=2.0)
    for iteration in (0, 9, 50):
        np.testing.assert_allclose(float(doubled(iteration)), 2 * float(plain(iteration)), rtol=1e-6)


def test_rejects_warmup_below_one():
    with pytest.raises(ValueError, match="warmup_steps=0"):
        TransformerSchedule(512, warmup_steps=0)


def test_config_round_trip():
    schedule = TransformerSchedule(d_model=256, warmup_steps=800, scale=0.5)
    assert schedule.get_config() == {"d_model": 256, "warmup_steps": 800, "scale": 0.5}
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, TransformerSchedule)
    assert restored.get_config() == schedule.get_config()
    assert float(restored(123)) == float(schedule(123))


def test_paper_optimizer_is_adam_with_the_papers_settings():
    optimizer = paper_optimizer(d_model=512)
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon) == (0.9, 0.98, 1e-9)
    assert isinstance(optimizer._learning_rate, TransformerSchedule)
    assert optimizer._learning_rate.get_config() == {"d_model": 512, "warmup_steps": 4000, "scale": 1.0}


def test_paper_optimizer_passes_adam_arguments_through():
    optimizer = paper_optimizer(d_model=64, warmup_steps=10, clipnorm=1.0, epsilon=1e-6)
    assert optimizer.clipnorm == 1.0 and optimizer.epsilon == 1e-6 and optimizer.beta_2 == 0.98
    assert optimizer._learning_rate.warmup_steps == 10


def test_optimizer_follows_the_schedule_step_by_step():
    optimizer = paper_optimizer(d_model=64, warmup_steps=10)
    variable = keras.Variable(np.zeros(3, "float32"))
    for iteration in range(3):
        np.testing.assert_allclose(float(optimizer.learning_rate), paper_lrate(iteration + 1, 64, 10), rtol=1e-6)
        optimizer.apply_gradients([(keras.ops.ones(3), variable)])
        if iteration == 0:
            # Adam's first update is -lrate * g / |g|: the rate of step_num 1 was used.
            np.testing.assert_allclose(numpy(variable), -paper_lrate(1, 64, 10), rtol=1e-5)
    assert int(numpy(optimizer.iterations)) == 3


def test_optimizer_config_round_trip():
    optimizer = paper_optimizer(d_model=64, warmup_steps=10)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored._learning_rate, TransformerSchedule)
    assert restored._learning_rate.get_config() == optimizer._learning_rate.get_config()
    assert (restored.beta_1, restored.beta_2, restored.epsilon) == (0.9, 0.98, 1e-9)


# The budget schedule (Li et al. 2020; Cramming 2022): warmup, then a linear decay by time.


def budget_reference(step, fraction, peak, warmup_steps):
    """peak * min(1, (step + 1) / warmup) * max(0, 1 - fraction), in NumPy."""
    step, fraction = np.asarray(step, "float64"), np.asarray(fraction, "float64")
    return peak * np.minimum(1.0, (step + 1) / warmup_steps) * np.maximum(0.0, 1.0 - fraction)


@pytest.mark.parametrize("step,fraction", [(0, 0.0), (4, 0.0), (9, 0.1), (50, 0.5), (50, 0.999), (50, 1.0), (80, 1.2)])
def test_budget_rate_is_warmup_times_the_time_left(step, fraction):
    np.testing.assert_allclose(budget_rate(step, fraction, 1e-3, 10), budget_reference(step, fraction, 1e-3, 10))
    if fraction >= 1:
        assert budget_rate(step, fraction, 1e-3, 10) == 0.0


def test_the_paper_peak_is_equation_3_at_warmup_steps():
    np.testing.assert_allclose(paper_peak(512, 4000), paper_lrate(4000, 512, 4000), rtol=1e-12)


def tiny_regression():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(optimizer=paper_optimizer(8, 2, learning_rate=0.0), loss="mse", jit_compile=False)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    return model, x, x.sum(axis=1, keepdims=True)


def test_the_budget_schedule_sets_the_rate_each_compiled_step_uses_and_ends_at_zero():
    """A fake clock runs out of budget after step 5 of 16 (batches of 4): from then on the
    rate is 0 and the weights stop moving, on every backend (under JAX the compiled step
    takes the optimizer's variables as state: the rate must reach it, not only the variable)."""
    model, x, y = tiny_regression()
    done = [0]

    class CountSteps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            done[0] += 1

    fractions = [0.0, 0.1, 0.2, 0.4, 0.8] + [1.0] * 11
    schedule = BudgetLearningRate(peak=0.05, warmup_steps=2, step=lambda: done[0],
                                  clock=lambda: fractions[done[0]], resolution=0.0)
    snapshots = []

    class Snapshot(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if keras.backend.backend() == "jax":
                self.model.jax_state_sync()
            snapshots.append([np.array(w) for w in self.model.get_weights()])

    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[schedule, CountSteps(), Snapshot()])
    expected = [[step, budget_reference(step, fractions[step], 0.05, 2)] for step in range(5)] + [[5, 0.0]]
    np.testing.assert_allclose(np.array(schedule.rates, "float64"), np.array(expected), rtol=1e-6)
    assert float(numpy(model.optimizer.learning_rate)) == 0.0
    moved = [any(not np.array_equal(a, b) for a, b in zip(before, after))
             for before, after in zip(snapshots, snapshots[1:])]
    assert moved[:4] == [True] * 4  # steps 1-4 trained (rate > 0)
    assert not any(moved[4:]), "a step with rate 0 changed the weights"


def test_the_budget_schedule_moves_the_rate_in_steps_of_its_resolution():
    model, x, y = tiny_regression()
    done = [0]

    class CountSteps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            done[0] += 1

    schedule = BudgetLearningRate(peak=0.05, warmup_steps=1, step=lambda: done[0],
                                  clock=lambda: min(1.0, done[0] / 15), resolution=0.2)
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[schedule, CountSteps()])
    rates = [rate for _, rate in schedule.rates]
    assert rates[-1] == 0.0 and len(rates) < 16
    assert all(a - b > 0.2 * 0.05 or b == 0.0 for a, b in zip(rates, rates[1:]))
