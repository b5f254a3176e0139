"""Mixed precision on the device: gradient unscale + non-finite check, loss-scale update.

State (all device memory, so a captured step never reads it on the host):
    scale       1-element float32, the factor the loss diff was seeded with
    good_steps  1-element int32, clean steps since the last change of scale
    found_inf   1-element int32, set by ``unscale_and_check`` when any gradient is NaN/Inf
The host-side state machine they implement is ``netforge.train.mixed_precision.LossScaler``
(its xp-generic form runs these same rules on numpy in the CPU tests).
"""

from __future__ import annotations

from netforge.ops.cuda.compile import elementwise


def unscale_and_check(grad, master_grad, scale, found_inf) -> None:
    """master_grad (fp32) = grad (any float dtype) / scale[0]; found_inf[0] = 1 on NaN/Inf.

    Racing threads only ever write 1, so the flag needs no atomics.
    """
    kernel = elementwise(
        "nf_unscale_check", "G grad, raw float32 scale, raw int32 found_inf", "float32 master",
        r"""const float v = (float)grad / scale[0];
            if (!isfinite(v)) found_inf[0] = 1;
            master = v;""")
    kernel(grad, scale, found_inf, master_grad)


def update_scale(scale, good_steps, found_inf, *, growth_factor: float, backoff_factor: float,
                 growth_interval: int, max_scale: float) -> None:
    """One thread: on overflow scale *= backoff and the count restarts; otherwise after
    ``growth_interval`` clean steps scale *= growth (capped at max_scale)."""
    kernel = elementwise(
        "nf_update_scale", "raw int32 found_inf, float64 growth, float64 backoff, "
        "int32 interval, float64 max_scale", "float32 scale, int32 good",
        r"""if (found_inf[0] != 0) { scale = (float)(scale * backoff); good = 0; }
            else if (good + 1 >= interval) {
                scale = (float)min((double)scale * growth, max_scale); good = 0;
            } else { good = good + 1; }""")
    kernel(found_inf, growth_factor, backoff_factor, int(growth_interval), max_scale, scale,
           good_steps)
