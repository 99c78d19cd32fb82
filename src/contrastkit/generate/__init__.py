"""Generation from a contrastive encoder: RCG at small scale (Li, Katabi, He 2023, arXiv 2312.03701).

- :mod:`~contrastkit.generate.flow`: the flow-matching loss, guidance and the Euler sampler (pure functions);
- :mod:`~contrastkit.generate.mlp`: the representation generator's velocity MLP;
- :mod:`~contrastkit.generate.unet`: the pixel generator's conditional U-Net;
- :mod:`~contrastkit.generate.config`: :class:`GeneratorConfig`, every default;
- :mod:`~contrastkit.generate.training`: both models on the training engine (``contrastkit train-generator``);
- :mod:`~contrastkit.generate.sampling`: unconditional, ``--like`` and ``--cluster`` images (``contrastkit generate``).

The entry points are ``contrastkit.generate.training.train_generator`` and
``contrastkit.generate.sampling.generate_run``; this package imports only the
light parts, so ``contrastkit --help`` stays quick.
"""

from contrastkit.generate.config import GeneratorConfig
from contrastkit.generate.flow import euler_sample, flow_matching_loss, guided_velocity, interpolate

__all__ = ["GeneratorConfig", "euler_sample", "flow_matching_loss", "guided_velocity", "interpolate"]
