"""The paper's optimizer: Adam with warmup, then inverse square root decay (section 5.3)."""

import keras
from keras import ops


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


def paper_optimizer(d_model, warmup_steps=4000, **adam_kwargs):
    """Adam with beta_1 = 0.9, beta_2 = 0.98, epsilon = 10^-9 and `TransformerSchedule`.

    Args:
        d_model: model width, for the schedule.
        warmup_steps: warmup of the schedule (4000 in the paper).
        **adam_kwargs: other `keras.optimizers.Adam` arguments (e.g. `clipnorm`);
            they may also override the paper's beta_1, beta_2 and epsilon.

    Example:
        >>> optimizer = paper_optimizer(d_model=512)
        >>> optimizer.beta_2
        0.98
    """
    paper_settings = {"beta_1": 0.9, "beta_2": 0.98, "epsilon": 1e-9}
    return keras.optimizers.Adam(
        learning_rate=TransformerSchedule(d_model, warmup_steps),
        **{**paper_settings, **adam_kwargs},
    )
