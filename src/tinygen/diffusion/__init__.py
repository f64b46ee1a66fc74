"""The diffusion process, independent of any network: schedules, samplers, guidance.

`schedule` (NoiseSchedule, the forward process and parameterisation conversions),
`sampling` (ddpm_step, ddim_step, inference_timesteps, sample) and `guidance`
(classifier-free and classifier guidance as wrappers around a model function).
"""

from tinygen.diffusion.sampling import ddim_step, ddpm_step, inference_timesteps, sample
from tinygen.diffusion.schedule import NoiseSchedule

__all__ = ["NoiseSchedule", "ddim_step", "ddpm_step", "inference_timesteps", "sample"]
