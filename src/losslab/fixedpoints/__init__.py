"""All fixed points of maps ``f: R^N -> R^N`` (Berlyand & Slavin, P5): batched search,
de-duplication, stability and basins; counts proved by interval branch-and-bound; Jacobian
spectra and their free-probability prediction; heavy-tailed weights; autoencoder training
and image restoration by iterating to attractors."""

from losslab.fixedpoints.certify import CertifiedCount, certify_fixed_points
from losslab.fixedpoints.restore import (
    Restoration,
    gaussian_noise,
    mask_block,
    mean_psnr,
    psnr,
    restoration_accuracy,
    restoration_figure,
    restore,
    salt_and_pepper,
    standard_corruptions,
)
from losslab.fixedpoints.search import (
    FixedPointSet,
    classify,
    find_fixed_points,
    square_net_jacobian,
)
from losslab.fixedpoints.spectra import (
    JacobianSpectrum,
    PowerLawFit,
    SingularDensity,
    ensemble_spectrum,
    free_probability_singular_density,
    gram_eigenvalues,
    input_output_jacobian,
    jacobian_moments,
    jacobian_spectrum,
    mean_field_variances,
    power_law_alpha,
)
from losslab.fixedpoints.training import (
    LayerTail,
    TrainingResult,
    digits_unit,
    faces_unit,
    layer_tails,
    train_autoencoder,
)

__all__ = [
    "CertifiedCount",
    "FixedPointSet",
    "JacobianSpectrum",
    "LayerTail",
    "PowerLawFit",
    "Restoration",
    "SingularDensity",
    "TrainingResult",
    "certify_fixed_points",
    "classify",
    "digits_unit",
    "ensemble_spectrum",
    "faces_unit",
    "find_fixed_points",
    "free_probability_singular_density",
    "gaussian_noise",
    "gram_eigenvalues",
    "input_output_jacobian",
    "jacobian_moments",
    "jacobian_spectrum",
    "layer_tails",
    "mask_block",
    "mean_field_variances",
    "mean_psnr",
    "power_law_alpha",
    "psnr",
    "restoration_accuracy",
    "restoration_figure",
    "restore",
    "salt_and_pepper",
    "square_net_jacobian",
    "standard_corruptions",
    "train_autoencoder",
]
