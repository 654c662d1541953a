"""Learning-rate schedules and the optimizer.

    paper    the paper's (section 5.3): linear warmup, then inverse square root decay by step
             (`TransformerSchedule`); still high when a time budget stops the run
    budget   with a time budget: linear warmup over `warmup_steps` to `peak`, times a linear
             decay that reaches zero exactly when the budget ends, by elapsed training time,
             not by a step estimate (Li et al. 2020, "Budgeted training"; Geiping & Goldstein
             2022, "Cramming", decay by elapsed time). `BudgetLearningRate` sets it each step.
"""

import keras
from keras import ops

SCHEDULES = ("auto", "paper", "budget")


@keras.saving.register_keras_serializable(package="kerasformer")
class TransformerSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """lrate = d_model^-0.5 * min(step_num^-0.5, step_num * warmup_steps^-1.5)   (equation 3).

    Rises linearly for the first `warmup_steps` steps, peaks at
    `step_num = warmup_steps` with `d_model^-0.5 * warmup_steps^-0.5`, then
    decays with the inverse square root of the step number.

    The optimizer calls the schedule with its iteration count, which starts at
    0; the paper's step_num starts at 1. We use `step_num = iteration + 1` so
    the first update already has a non-zero rate and 0^-0.5 is never taken.

    Args:
        d_model: model width; larger models take smaller steps.
        warmup_steps: steps of linear warmup (4000 in the paper).
        scale: multiplies the whole schedule (1.0 in the paper); a knob for
            batch sizes far from the paper's 25000 tokens.

    Call arguments:
        iteration: the optimizer's zero-based iteration count, a scalar (or
            any array, elementwise).

    Returns:
        float32 learning rate, the shape of `iteration`.

    Example:
        >>> schedule = TransformerSchedule(d_model=512)
        >>> round(float(schedule(3999)), 7)  # step_num 4000: the peak
        0.0006988
    """

    def __init__(self, d_model, warmup_steps=4000, scale=1.0):
        super().__init__()
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps={warmup_steps} must be at least 1")
        self.d_model = d_model
        self.warmup_steps = warmup_steps
        self.scale = scale

    def __call__(self, iteration):
        step_num = ops.cast(iteration, "float32") + 1.0
        warmup = step_num * float(self.warmup_steps) ** -1.5
        decay = ops.power(step_num, -0.5)
        return self.scale * float(self.d_model) ** -0.5 * ops.minimum(decay, warmup)

    def get_config(self):
        return {"d_model": self.d_model, "warmup_steps": self.warmup_steps, "scale": self.scale}


def paper_optimizer(d_model, warmup_steps=4000, learning_rate=None, **adam_kwargs):
    """Adam with beta_1 = 0.9, beta_2 = 0.98, epsilon = 10^-9 and `TransformerSchedule`.

    Args:
        d_model: model width, for the schedule.
        warmup_steps: warmup of the schedule (4000 in the paper).
        learning_rate: instead of `TransformerSchedule`, this rate (a float: the budget
            schedule sets it each step) or schedule.
        **adam_kwargs: other `keras.optimizers.Adam` arguments (e.g. `clipnorm`);
            they may also override the paper's beta_1, beta_2 and epsilon.

    Example:
        >>> optimizer = paper_optimizer(d_model=512)
        >>> optimizer.beta_2
        0.98
    """
    paper_settings = {"beta_1": 0.9, "beta_2": 0.98, "epsilon": 1e-9}
    return keras.optimizers.Adam(
        learning_rate=TransformerSchedule(d_model, warmup_steps) if learning_rate is None else learning_rate,
        **{**paper_settings, **adam_kwargs},
    )


def paper_peak(d_model, warmup_steps):
    """The paper's schedule at its peak (step_num = warmup_steps): d_model^-0.5 * warmup^-0.5."""
    return float(d_model) ** -0.5 * float(warmup_steps) ** -0.5


def budget_rate(step, fraction, peak, warmup_steps):
    """The budget schedule: `peak * min(1, (step + 1) / warmup_steps) * max(0, 1 - fraction)`,
    `step` the zero-based optimizer iteration, `fraction` the share of the time budget spent."""
    return peak * min(1.0, (step + 1) / warmup_steps) * max(0.0, 1.0 - fraction)


class BudgetLearningRate(keras.callbacks.Callback):
    """Sets the optimizer's learning rate before each step to `budget_rate` of the step
    (`step()`: steps done so far, over every command that trained the run) and of the time
    budget spent (`clock()`, a fraction in [0, 1], from `TimeBudget.fraction`). The step is
    counted outside the optimizer, whose `iterations` a compiled JAX step only writes back at
    the end of an epoch.

    The rate is a variable of the optimizer (`keras.optimizers.Adam(learning_rate=0.0)`), so
    it is saved and restored with the optimizer's state. Under JAX a compiled step takes the
    optimizer's variables as state: the callback writes that state back first
    (`model.jax_state_sync()`, which makes Keras read it again for the next step), so it only
    sets a new rate when it moved by more than `resolution` of the peak (about 200 times over
    a budget), and always the final 0.

    `rates`: the `[step, rate]` points where the rate was set, for TensorBoard and curves.png
    (the rate holds until the next point).
    """

    def __init__(self, peak, warmup_steps, step, clock, rates=None, resolution=0.005):
        super().__init__()
        self.peak, self.warmup_steps, self.step, self.clock = float(peak), int(warmup_steps), step, clock
        self.rates = rates if rates is not None else []
        self.resolution = resolution
        self.current = None

    def on_train_batch_begin(self, batch, logs=None):
        step = self.step()
        rate = budget_rate(step, self.clock(), self.peak, self.warmup_steps)
        if self.current is not None and abs(rate - self.current) <= self.resolution * self.peak and rate > 0:
            return
        if rate == self.current:
            return
        if keras.backend.backend() == "jax":
            self.model.jax_state_sync()
        self.model.optimizer.learning_rate.assign(rate)
        self.current = rate
        self.rates.append([step, rate])
